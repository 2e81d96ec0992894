"""The datatrove side of MpGI: rollout functions for ``InferenceRunner`` stages and plain pipeline steps.

Documents flowing between stages carry the image path as ``text``, the image id as ``id`` and, in
``metadata``, a :class:`~hqrs.dataset_builder.mpgi.stage_results.StageInput` plus one result per finished
stage (:class:`~hqrs.dataset_builder.mpgi.stage_results.GenerationResult` under ``gen:<backend>``,
:class:`~hqrs.dataset_builder.mpgi.stage_results.IntegrationResult` under ``integration``). The rollouts
work on these types; ``stage_results`` converts them to and from the metadata JSON.

Request failures never escape a rollout: after the backend's bounded retries the rollout returns a
result with ``status="failed"`` and its error, so that datatrove checkpoints the document as finished
(and a later ``run_mpgi`` retries it). Only an unreachable server aborts a stage (``ServerError``).

This module uses datatrove's public API only (``PipelineStep``, ``InferenceRunner``'s rollout functions);
the runner with MpGI's request policy is :class:`~hqrs.dataset_builder.mpgi.datatrove_compat.MpGIInferenceRunner`.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.inference.types import InferenceError, InferenceResult

from ..records import Caption, Perspective
from . import datatrove_compat
from .datatrove_compat import EndpointUnavailable, MpGIInferenceRunner, RequestError
from .integrate import (
    CAPTIONS_SCHEMA,
    IntegrationError,
    example_texts,
    extract_json,
    filter_captions,
    prompt_messages,
    select_captions,
    template_captions,
    validate_captions,
)
from .prompts import chat_payload, image_data_url, prompt_id, render
from .recipe import TEMPLATE_INTEGRATOR, AnswerChecks, BackendSpec, Recipe
from .stage_results import (
    GEN_KEY_PREFIX,
    INTEGRATION_KEY,
    GenerationResult,
    IntegrationResult,
    StageInput,
    generation_of,
    set_integration,
)

datatrove_compat.install_log_filter()
datatrove_compat.install_child_reaper()

__all__ = [  # MpGIInferenceRunner lives in datatrove_compat (it replaces datatrove internals)
    "GEN_KEY_PREFIX",
    "INTEGRATION_KEY",
    "GenerationRollout",
    "IntegrationRollout",
    "MpGIInferenceRunner",
    "TemplateIntegrationStep",
]


class RequestFailed(Exception):
    """A request failed after all retries (or for good, e.g. HTTP 400)."""


def _usage_add(total: dict[str, int], usage: dict | None) -> None:
    for key in ("prompt_tokens", "completion_tokens"):
        total[key] = total.get(key, 0) + int((usage or {}).get(key) or 0)


def answer_problem(result: InferenceResult, payload: dict[str, Any], checks: AnswerChecks) -> str | None:
    """Why an answer must not be stored (``None`` if it may): truncated (unless ``checks.accept_truncated``),
    longer than ``max_tokens`` allows, empty, or a refusal (``checks.refusal_patterns``)."""
    text = result.text.strip()
    if not text:
        return f"empty answer (finish_reason={result.finish_reason!r})"
    max_tokens = payload.get("max_tokens") or payload.get("max_completion_tokens")
    if result.finish_reason == "content_filter":
        return "refusal (finish_reason=content_filter)"
    if result.finish_reason == "length" and not checks.accept_truncated:
        return f"truncated answer (finish_reason=length at max_tokens={max_tokens})"
    limit = int(max_tokens * checks.chars_per_token) if isinstance(max_tokens, int) else checks.max_chars
    if len(text) > limit:
        return f"answer too long: {len(text)} characters for max_tokens={max_tokens} (at most {limit})"
    head = text[:300]
    for pattern in checks.refusal_patterns:
        if re.search(pattern, head, re.IGNORECASE):
            return f"refusal: {head[:80]!r}"
    return None


async def request_with_retries(
    generate,
    payload: dict[str, Any],
    backend: BackendSpec,
    usage: dict[str, int],
    counters: dict[str, int],
    checks: AnswerChecks | None = None,
) -> InferenceResult:
    """Send ``payload`` through datatrove's generate callback with bounded retries.

    Each attempt is bounded by ``request_timeout`` (in :func:`datatrove_compat.send_request`). Retries
    timeouts, refused or reset connections, HTTP 408/429/5xx (waiting ``Retry-After`` when the server sends
    it, at most 10 minutes), unparsable bodies and empty answers; each retry carries a different ``seed``
    (a new request, also for the request cache). Other HTTP errors (400, 401, 404...) fail at once. A
    tripped circuit breaker (:class:`EndpointUnavailable`) or a server that never became ready
    (``ServerError``) aborts the stage. Answers that fail :func:`answer_problem` (``checks``) are retried
    like errors and never returned.
    """
    checks = checks if checks is not None else AnswerChecks()
    last_error = "no attempt"
    base_seed = int(payload.get("seed", 0) or 0)
    for attempt in range(backend.retries + 1):
        body = dict(payload)
        if attempt:
            body["seed"] = base_seed + attempt
            counters["retries"] = counters.get("retries", 0) + 1
        counters["requests"] = counters.get("requests", 0) + 1
        delay = backend.retry_backoff * 2**attempt
        try:
            result = await generate(body)
        except RequestError as e:
            last_error = str(e)
            counters[f"error:{e.kind}"] = counters.get(f"error:{e.kind}", 0) + 1
            if not e.retryable:
                raise RequestFailed(f"the server rejected the request: {last_error[:300]}") from None
            if e.retry_after is not None:
                delay = min(e.retry_after, 600.0)
        except EndpointUnavailable:
            raise
        except InferenceError as e:  # a 400 answered earlier, replayed from datatrove's request cache
            raise RequestFailed(f"the server rejected the request: {str(e.error)[:300]}") from None
        else:
            _usage_add(usage, result.usage)
            problem = answer_problem(result, body, checks)
            if problem is None:
                return result
            last_error = problem
            kind = problem.split(":")[0].split(" (")[0].replace(" ", "-")
            counters[f"rejected:{kind}"] = counters.get(f"rejected:{kind}", 0) + 1
        if attempt < backend.retries and delay:
            await asyncio.sleep(delay)
    raise RequestFailed(f"{last_error[:300]} (after {backend.retries + 1} attempts)")


class _ProgressLog:
    """One line per finished document in ``<stage>/progress/<pid>.tsv``, tailed by the progress bar."""

    def __init__(self, folder: str | None):
        self.folder = folder
        self._file = None

    def write(self, doc_id: str, usage: dict[str, int], ok: bool) -> None:
        if self.folder is None:
            return
        if self._file is None:
            os.makedirs(self.folder, exist_ok=True)
            self._file = open(os.path.join(self.folder, f"{os.getpid()}.tsv"), "a", buffering=1)  # noqa: SIM115
        self._file.write(
            f"{doc_id}\t{usage.get('prompt_tokens', 0)}\t{usage.get('completion_tokens', 0)}\t{int(ok)}\n"
        )


def document_dict(writer, document: Document) -> dict[str, Any]:
    """``JsonlWriter`` adapter writing what datatrove's default adapter writes (non-empty fields).

    The default goes through ``dataclasses.asdict``, which deep-copies the whole metadata of every
    document on the event loop of the inference task; the output is serialised right away, so no copy
    is needed.
    """
    data: dict[str, Any] = {}
    if document.text:
        data["text"] = document.text
    if document.id:
        data["id"] = document.id
    if document.media:
        data["media"] = [dataclasses.asdict(m) for m in document.media]
    if document.metadata:
        data["metadata"] = document.metadata
    return data


def _gen_name(name: str, k: int, n: int) -> str:
    return name if n == 1 else f"{name}#{k + 1}"


def check_templates(recipe: Recipe, item: StageInput) -> None:
    """Render every template of ``recipe`` once with the variables of one document (``item``), as the
    rollouts will: an undefined variable or a sandbox violation is one ``ValueError`` before a stage
    starts, not a crash of every task."""
    variables = item.template_variables()
    for gen in recipe.generators:
        render(gen.prompt, recipe, perspective=gen.perspective, relay_rules=gen.relay_rules, **variables)
    spec = recipe.integrator
    if spec.backend == TEMPLATE_INTEGRATOR:
        return
    listing = [{"name": "rule", "perspective": "rule", "text": item.rule_text}] + [
        {"name": g.name, "perspective": g.perspective, "text": "..."} for g in recipe.generators
    ]
    for feedback in (None, "a caption contradicts the facts"):
        render(
            spec.prompt,
            recipe,
            perspectives=listing,
            rule_text=item.rule_text,
            captions=dict(spec.captions),
            words=spec.words,
            n_captions=spec.n_captions,
            feedback=feedback,
        )
    render(
        spec.repair_prompt,
        recipe,
        previous="{}",
        error="not JSON",
        captions=dict(spec.captions),
        n_captions=spec.n_captions,
    )


@dataclass
class GenerationRollout:
    """Rollout of one generation stage: every generator of ``backend`` for one image.

    Picklable (a dataclass of plain data), so it travels to local workers, Slurm and Ray tasks.
    """

    recipe: Recipe
    backend: str
    progress_folder: str | None = None

    async def __call__(self, document: Document, generate) -> dict[str, Any]:
        """The :class:`GenerationResult` of ``document``, as metadata JSON (datatrove stores it)."""
        if not hasattr(self, "_progress"):
            self._progress = _ProgressLog(self.progress_folder)
        item = StageInput.from_metadata(document.metadata)
        variables = item.template_variables()
        spec = self.recipe.backends[self.backend]
        prior = {p.generator: p for p in item.prior_perspectives}
        usage: dict[str, int] = {}
        counters: dict[str, int] = {}
        jobs = [
            (gen, k) for gen in self.recipe.generators if gen.backend == self.backend for k in range(gen.n)
        ]
        started = time.perf_counter()
        image_url = None
        if any(g.image and _gen_name(g.name, k, g.n) not in prior for g, k in jobs):
            try:
                image_url = await asyncio.to_thread(image_data_url, document.text, spec.max_image_side)
            except (OSError, ValueError) as e:
                error = f"cannot read image {document.text!r}: {e}"
                self._progress.write(document.id, usage, False)
                return GenerationResult("failed", error, usage=usage, counters=counters).to_metadata()

        async def one(gen, k):
            name = _gen_name(gen.name, k, gen.n)
            if name in prior:
                counters["reused"] = counters.get("reused", 0) + 1
                return prior[name], None
            text = render(
                gen.prompt, self.recipe, perspective=gen.perspective, relay_rules=gen.relay_rules, **variables
            )
            sampling = dict(gen.sampling)
            if gen.n > 1:
                sampling["seed"] = int(sampling.get("seed", 0) or 0) + 1000 * k
            payload = chat_payload(text, image_url if gen.image else None, sampling)
            try:
                result = await request_with_retries(
                    generate, payload, spec, usage, counters, self.recipe.checks
                )
            except RequestFailed as e:
                return None, f"{name}: {e}"
            persp = Perspective(
                generator=name,
                perspective=gen.perspective,
                model=spec.model,
                prompt_id=prompt_id(gen.prompt, self.recipe),
                text=" ".join(result.text.split()),
            )
            return persp, None

        outcomes = await asyncio.gather(*(one(g, k) for g, k in jobs))
        errors = [e for _, e in outcomes if e is not None]
        out = GenerationResult(
            status="failed" if errors else "ok",
            error="; ".join(errors) or None,
            perspectives=[p for p, _ in outcomes if p is not None],
            usage=usage,
            counters=counters,
            seconds=round(time.perf_counter() - started, 4),
        )
        self._progress.write(document.id, usage, not errors)
        return out.to_metadata()


def generation_results(meta: dict[str, Any], recipe: Recipe) -> dict[str, GenerationResult | None]:
    """Every generation stage's result in a document's metadata, by backend (``None``: no result)."""
    return {backend: generation_of(meta, backend) for backend in recipe.generator_backends()}


def collect_perspectives(
    item: StageInput, generations: dict[str, GenerationResult | None]
) -> tuple[list[Perspective], list[str]]:
    """The rule perspective, the references perspective (if any) and every generation stage's
    perspectives, and the stages' errors (a stage without result is an error)."""
    perspectives = [Perspective("rule", "rule", None, None, item.rule_text)]
    if item.references is not None:  # the source's human captions, where allowed (mpgi.references)
        perspectives.append(item.references)
    errors = []
    for backend, result in generations.items():
        if result is None:
            errors.append(f"{backend}: no generation result")
            continue
        perspectives.extend(result.perspectives)
        if not result.ok:
            errors.append(result.error or f"{backend}: failed")
    return perspectives, errors


def check_caption_lengths(captions: list[Caption], spec) -> tuple[list[Caption], list[str]]:
    """Captions whose word count fits their length's ``words`` range (within ``length_tolerance``), and
    one problem line per rejected caption."""
    good, problems = [], []
    for cap in captions:
        low, high = spec.words.get(cap.length, (1, 10**9))
        n = len(cap.text.split())
        if low * (1 - spec.length_tolerance) <= n <= high * (1 + spec.length_tolerance):
            good.append(cap)
        else:
            problems.append(f"a {cap.length} caption must have {low} to {high} words, not {n}")
    return good, problems


def captions_response_format(wanted: dict[str, int], names: list[str]) -> dict[str, Any]:
    """``response_format`` of type ``json_schema`` for servers with structured output (vLLM, sglang):
    :data:`CAPTIONS_SCHEMA` narrowed to the lengths asked for and the perspectives' names."""
    schema = copy.deepcopy(CAPTIONS_SCHEMA)
    item = schema["properties"]["captions"]["items"]
    item["properties"]["length"] = {"enum": [k for k, v in wanted.items() if v > 0]}
    item["properties"]["sources"] = {"type": "array", "items": {"enum": list(names)}}
    item["required"] = ["text", "length", "sources"]
    schema["properties"]["captions"]["maxItems"] = max(1, sum(wanted.values()))
    return {"type": "json_schema", "json_schema": {"name": "captions", "schema": schema}}


@dataclass
class IntegrationRollout:
    """Rollout of the integration stage: fuse all perspectives of one image into final captions.

    Invalid JSON → repair requests (``max_repairs``); captions contradicting the rule facts →
    regenerated (``fact_filter: regenerate``, ``max_regenerations`` rounds) or dropped.
    """

    recipe: Recipe
    progress_folder: str | None = None

    async def __call__(self, document: Document, generate) -> dict[str, Any]:
        """The :class:`IntegrationResult` of ``document``, as metadata JSON (datatrove stores it)."""
        if not hasattr(self, "_progress"):
            self._progress = _ProgressLog(self.progress_folder)
        item = StageInput.from_metadata(document.metadata)
        spec = self.recipe.integrator
        backend = self.recipe.backends[spec.backend]
        usage: dict[str, int] = {}
        counters: dict[str, int] = {}
        started = time.perf_counter()
        perspectives, errors = collect_perspectives(item, generation_results(document.metadata, self.recipe))
        if errors:
            self._progress.write(document.id, usage, False)
            error = "generation failed: " + "; ".join(errors)
            return IntegrationResult("failed", error, usage=usage, counters=counters).to_metadata()
        facts = item.facts
        names = [p.generator for p in perspectives]
        listing = [{"name": p.generator, "perspective": p.perspective, "text": p.text} for p in perspectives]
        stats = {
            "repairs": 0,
            "regenerations": 0,
            "fact_rejected": 0,
            "fact_dropped": 0,
            "invalid_dropped": 0,
        }

        # An integration answer is checked as captions JSON: the complete captions of an answer cut off at
        # max_tokens are kept (integrate.extract_json) and fewer than min_captions fail the record; refusals,
        # empty and over-long answers are still rejected here.
        checks = dataclasses.replace(self.recipe.checks, accept_truncated=True)

        async def ask(captions_wanted: dict[str, int], feedback: str | None) -> list[Caption]:
            prompt = render(
                spec.prompt,
                self.recipe,
                perspectives=listing,
                rule_text=item.rule_text,
                captions=captions_wanted,
                words=spec.words,
                n_captions=sum(captions_wanted.values()),
                feedback=feedback,
            )
            messages = prompt_messages(prompt)  # a template may hold example turns
            for repair in range(spec.max_repairs + 1):
                payload = {"messages": list(messages), **spec.sampling}
                if structured:
                    payload["response_format"] = captions_response_format(captions_wanted, names)
                result = await request_with_retries(generate, payload, backend, usage, counters, checks)
                try:
                    return validate_captions(extract_json(result.text), names, example_texts(messages))
                except IntegrationError as e:
                    if repair == spec.max_repairs:
                        raise RequestFailed(
                            f"invalid integration answer after {spec.max_repairs} repairs: {e}"
                        ) from None
                    stats["repairs"] += 1
                    repair_text = render(
                        spec.repair_prompt,
                        self.recipe,
                        previous=result.text[:4000],
                        error=str(e),
                        captions=captions_wanted,
                        n_captions=sum(captions_wanted.values()),
                    )
                    messages = [
                        *prompt_messages(prompt),
                        {"role": "assistant", "content": result.text[:4000]},
                        {"role": "user", "content": repair_text},
                    ]
            raise AssertionError("unreachable")

        structured = spec.structured_output == "json_schema" or (
            spec.structured_output == "auto" and backend.server in ("vllm", "sglang")
        )
        stats["length_rejected"] = 0
        try:
            captions = await ask(dict(spec.captions), None)
            kept: list[Caption] = []
            rounds = 0
            while True:
                captions, bad_length = check_caption_lengths(captions, spec)
                stats["length_rejected"] += len(bad_length)
                good, rejected = (
                    filter_captions(captions, facts) if spec.fact_filter != "off" else (captions, [])
                )
                stats["fact_rejected"] += len(rejected)
                kept, missing = select_captions(kept + good, spec)
                if (
                    not (rejected or bad_length)
                    or spec.fact_filter != "regenerate"
                    or rounds >= spec.max_regenerations
                ):
                    stats["fact_dropped"] += len(rejected)
                    break
                wanted = {k: v for k, v in missing.items() if v > 0}
                if not wanted:
                    break
                rounds += 1
                stats["regenerations"] += 1
                problems = "; ".join(
                    dict.fromkeys([p for _, chk in rejected for p in chk.problems] + bad_length)
                )
                captions = await ask(wanted, problems)
        except RequestFailed as e:
            self._progress.write(document.id, usage, False)
            return IntegrationResult(
                "failed", f"integration: {e}", usage=usage, counters=counters, stats=stats
            ).to_metadata()
        if len(kept) < spec.min_captions:
            self._progress.write(document.id, usage, False)
            why = (
                f" ({stats['length_rejected']} outside the caption word ranges)"
                if stats["length_rejected"]
                else ""
            )
            error = f"integration: only {len(kept)} valid captions (min_captions={spec.min_captions}){why}"
            return IntegrationResult(
                "failed", error, usage=usage, counters=counters, stats=stats
            ).to_metadata()
        self._progress.write(document.id, usage, True)
        return IntegrationResult(
            "ok",
            None,
            captions=kept,
            usage=usage,
            counters=counters,
            stats=stats,
            seconds=round(time.perf_counter() - started, 4),
        ).to_metadata()


class TemplateIntegrationStep(PipelineStep):
    """Integration without a model (the ``offline`` recipe): deterministic captions from the rule facts."""

    name = "MpGI template integration"
    type = "🧩 - MpGI"

    def __init__(self, recipe: Recipe, progress_folder: str | None = None):
        super().__init__()
        self.recipe = recipe
        self.progress_folder = progress_folder

    def run(self, data, rank: int = 0, world_size: int = 1):
        progress = _ProgressLog(self.progress_folder)
        spec = self.recipe.integrator
        for document in data:
            with self.track_time():
                item = StageInput.from_metadata(document.metadata)
                generations = generation_results(document.metadata, self.recipe)
                perspectives, errors = collect_perspectives(item, generations)
                if errors:
                    result = IntegrationResult("failed", "generation failed: " + "; ".join(errors))
                else:
                    caps = template_captions(item.facts, spec, seed=document.id)
                    sources = [p.generator for p in perspectives]
                    for cap in caps:
                        cap.sources = sources
                    result = IntegrationResult("ok", None, captions=caps)
                set_integration(document.metadata, result)
                self.stat_update(result.status)
                progress.write(document.id, {}, result.ok)
            yield document
