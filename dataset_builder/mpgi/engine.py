"""Running MpGI on datatrove: passes, stages, executors, resume, results, status and the run manifest.

Run directory layout::

    RUN/manifest.json                     recipe hash, models, package versions, passes, tokens, timings
    RUN/recipe.json                       the recipe as run
    RUN/passes/0000/input/00000.jsonl     the records of this pass (one shard per task), with rule facts
    RUN/passes/0000/stages/<stage>/       output/ (stage results), checkpoints/ (datatrove checkpoints and
                                          request cache), logs/ (datatrove executor logs), progress/
    RUN/passes/0000/pass.json             what the pass holds; DONE.json once its last stage finished

A *pass* is one datatrove pipeline per stage chained with ``depends=``: one generation stage per
backend (an ``InferenceRunner``), then the integration stage (``InferenceRunner``, or the template step
of the ``offline`` recipe). ``run_mpgi`` on an existing run directory first resumes an unfinished pass
(datatrove skips finished tasks, replays checkpointed documents and answers already-sent requests from
its request cache), then starts a new pass with every record that has no ``ok`` result yet — the failed
ones (keeping their successful perspectives) and new ones.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import platform
import re
import shutil
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import orjson
from tqdm.auto import tqdm

from ..parallel import (
    ExecutorConfigError,
    check_executor,
    incomplete_ranks,
    make_executor,
    run_stages,
    stage_task_states,
)
from ..records import ImageRecord, MpGIResult, Perspective, atomic_write_bytes
from ..rules import rule_facts, rule_text
from .datatrove_compat import EndpointUnavailable, MpGIInferenceRunner, check_version
from .recipe import TEMPLATE_INTEGRATOR, Recipe, recipe_from_dict
from .references import ReferenceGuard
from .stage_results import GEN_KEY_PREFIX, INTEGRATION_KEY, StageInput, integration_of, stage_ok
from .steps import (
    GenerationRollout,
    IntegrationRollout,
    TemplateIntegrationStep,
    check_templates,
    collect_perspectives,
    document_dict,
    generation_results,
)

logger = logging.getLogger("hqrs.mpgi")

EXECUTORS = ("local", "slurm", "ray")
OUTPUT_FILENAME = "${rank}_chunk_${chunk_index}.jsonl"
_PACKAGES = ("hqrs", "datatrove", "transformers", "torch", "jinja2", "pyyaml", "pillow")


class MpGIRunError(RuntimeError):
    """A stage stopped (e.g. its server never became ready); finished work is kept, rerun to resume."""


def check_optional_backends(recipe: Recipe, executor: str) -> None:
    """Every optional package the run needs is importable here, else one :class:`MpGIRunError` listing
    them all (before any pass starts). vllm/sglang are checked for the local executor only (Slurm and
    Ray tasks run in their own environments); the executor itself (Ray installed, ``sbatch`` on PATH, a
    partition that exists) is :func:`hqrs.dataset_builder.parallel.check_executor`'s, called first."""
    missing = []
    used = set(recipe.generator_backends()) | {recipe.integrator.backend}
    for name in sorted(used & set(recipe.backends)):
        server = recipe.backends[name].server
        if executor == "local" and server in ("vllm", "sglang") and importlib.util.find_spec(server) is None:
            missing.append(f"{server} (backends.{name}.server; pip install {server})")
    if missing:
        raise MpGIRunError(
            f"recipe {recipe.name!r} needs what is not installed here: {'; '.join(missing)}; install it, or use "
            "another recipe/executor (e.g. an 'endpoint' backend with a running server)"
        )


def check_endpoint(recipe: Recipe, name: str, attempts: int = 3) -> None:
    """``GET <root>/v1/models`` of an ``endpoint`` backend; a server that does not answer (or rejects the
    API key) is one :class:`MpGIRunError` naming the endpoint, the error and the fix, before a stage
    starts. Any other HTTP answer counts as up."""
    spec = recipe.backends[name]
    if spec.server != "endpoint":
        return
    headers = {}
    remote = urlparse(spec.server_root).hostname not in ("localhost", "127.0.0.1", "::1")
    if spec.api_key_env and remote and not os.environ.get(spec.api_key_env):
        raise MpGIRunError(
            f"the endpoint {spec.server_root} (backends.{name}) needs an API key: set the environment variable "
            f"{spec.api_key_env} (named by the recipe's api_key_env) where the tasks run"
        )
    if spec.api_key_env and os.environ.get(spec.api_key_env):
        headers["Authorization"] = f"Bearer {os.environ[spec.api_key_env]}"
    request = urllib.request.Request(f"{spec.server_root}/v1/models", headers=headers)
    error = None
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(request, timeout=min(spec.request_timeout, 10.0)):  # noqa: S310
                return
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                raise MpGIRunError(
                    f"endpoint {spec.server_root} (backends.{name}) rejected the API key (HTTP {e.code}): set the "
                    f"environment variable named by backends.{name}.api_key_env ({spec.api_key_env}) to a valid key"
                ) from None
            return
        except (urllib.error.URLError, OSError) as e:
            error = getattr(e, "reason", e)
            if attempt + 1 < attempts:
                time.sleep(1.0)
    raise MpGIRunError(
        f"endpoint {spec.server_root} (backends.{name}) is not reachable: {error}; is the server running? start "
        f"it or point the recipe at it (--set backends.{name}.endpoint_url=URL), then rerun"
    )


def _operational_error(exc: BaseException) -> BaseException | None:
    """The :class:`EndpointUnavailable` or datatrove ``ServerError`` (a server that never became ready)
    behind ``exc`` (also through a worker pool), if any."""
    from datatrove.pipeline.inference.types import ServerError

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, ServerError):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


@dataclass
class RunReport:
    """What one ``run_mpgi`` call did (counts are over the records it was given, after ``limit``)."""

    run_dir: str
    recipe: str
    recipe_hash: str
    records: int = 0  # distinct records given
    ok: int = 0  # records with an ok result after this call
    failed: int = 0  # records whose latest result is failed (retry with another run_mpgi call)
    skipped: int = 0  # records already ok before this call
    duplicates: int = 0  # records given twice (same image id), ignored
    pending: int = 0  # records not finished (e.g. Slurm/Ray jobs still running)
    processed: int = 0  # records that went through a pass in this call
    resumed_pass: int | None = None
    new_pass: int | None = None
    seconds: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    fact_rejected: int = 0
    fact_dropped: int = 0
    repairs: int = 0
    regenerations: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # error message (first 120 chars) → count


# --------------------------------------------------------------------------- #
# Stages
# --------------------------------------------------------------------------- #


@dataclass
class Stage:
    key: str  # metadata key / folder name: "gen:<backend>" or "integration"
    backend: str | None  # None for the template integrator

    @property
    def folder(self) -> str:
        return self.key.replace(":", "-")


def recipe_stages(recipe: Recipe) -> list[Stage]:
    stages = [Stage(GEN_KEY_PREFIX + b, b) for b in recipe.generator_backends()]
    backend = recipe.integrator.backend
    stages.append(Stage(INTEGRATION_KEY, None if backend == TEMPLATE_INTEGRATOR else backend))
    return stages


def inference_config(recipe: Recipe, backend: str):
    """datatrove ``InferenceConfig`` of one backend of ``recipe``."""
    from datatrove.pipeline.inference.run_inference import InferenceConfig

    spec = recipe.backends[backend]
    return InferenceConfig(
        server_type=spec.server,
        model_name_or_path=spec.model,
        model_max_context=spec.max_context,
        use_chat=True,
        endpoint_url=spec.server_root,
        api_key="EMPTY",  # a placeholder: the real key (api_key_env) is set inside the task
        tp=spec.tp,
        dp=spec.dp,
        pp=spec.pp,
        max_concurrent_generations=spec.max_concurrent,
        max_concurrent_documents=spec.max_concurrent,
        request_timeout=spec.request_timeout,
        model_kwargs=dict(spec.model_kwargs) or None,
        server_ready_max_attempts=spec.server_ready_attempts,
        server_ready_delay_sec=spec.server_ready_delay,
        metric_interval=600,
    )


def stage_pipeline(recipe: Recipe, stage: Stage, input_folder: str, stage_dir: Path) -> list:
    """The datatrove pipeline of one stage: read the previous stage's documents, run, write."""
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    reader = JsonlReader(input_folder, glob_pattern="*.jsonl", compression=None)
    progress = str(stage_dir / "progress")
    if stage.backend is None:
        writer = JsonlWriter(
            str(stage_dir / "output"),
            output_filename="${rank}.jsonl",
            compression=None,
            adapter=document_dict,
        )
        return [reader, TemplateIntegrationStep(recipe, progress_folder=progress), writer]
    writer = JsonlWriter(
        str(stage_dir / "output"), output_filename=OUTPUT_FILENAME, compression=None, adapter=document_dict
    )
    if stage.key == INTEGRATION_KEY:
        rollout = IntegrationRollout(recipe, progress_folder=progress)
    else:
        rollout = GenerationRollout(recipe, stage.backend, progress_folder=progress)
    runner = MpGIInferenceRunner(
        rollout_fn=rollout,
        config=inference_config(recipe, stage.backend),
        output_writer=writer,
        checkpoints_local_dir=str(stage_dir / "checkpoints"),
        records_per_chunk=recipe.execution.records_per_chunk,
        metadata_key=stage.key,
        api_key_env=recipe.backends[stage.backend].api_key_env,
        circuit_breaker=recipe.backends[stage.backend].circuit_breaker,
        backend=stage.backend,
    )
    return [reader, runner]


def build_executor(
    kind: str,
    pipeline: list,
    logging_dir: str,
    tasks: int,
    workers: int,
    depends=None,
    options: dict[str, Any] | None = None,
    job_name: str = "mpgi",
):
    """A datatrove executor for one stage; ``options`` are the recipe's ``execution.slurm``/``ray`` args
    (see :func:`hqrs.dataset_builder.parallel.make_executor`)."""
    return make_executor(kind, pipeline, logging_dir, tasks, workers, depends, options, job_name)


# --------------------------------------------------------------------------- #
# Run directory helpers
# --------------------------------------------------------------------------- #


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _read_json(path: Path, default=None):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default


def _write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=2, default=str).encode())


def _iter_jsonl(folder: Path) -> Iterator[dict]:
    if not folder.is_dir():
        return
    for path in sorted(folder.rglob("*.jsonl")):
        with open(path, "rb") as f:
            for line in f:
                if line.strip():
                    try:
                        yield orjson.loads(line)
                    except orjson.JSONDecodeError:  # a line cut by a kill: its document is re-done
                        continue


def _pass_dirs(run_dir: Path) -> list[Path]:
    root = run_dir / "passes"
    # ".NNNN.partial" folders are passes still being written (or abandoned by an interrupt): not passes
    return (
        sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if root.is_dir()
        else []
    )


def _stage_done(stage_dir: Path, tasks: int) -> bool:
    return not incomplete_ranks(stage_dir / "logs", tasks)


def _package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            pass
    return out


def result_from_document(doc: dict, recipe: Recipe) -> MpGIResult:
    """Assemble an :class:`MpGIResult` from a final-stage document (as stored, a dict)."""
    meta = doc["metadata"]
    item = StageInput.from_metadata(meta)
    generations = generation_results(meta, recipe)
    perspectives, _ = collect_perspectives(item, generations)
    integration = integration_of(meta)
    usage: dict[str, int] = {}
    stats: dict[str, Any] = {}
    for res in [*generations.values(), integration]:
        if res is None:
            continue
        for k, v in res.usage.items():
            usage[k] = usage.get(k, 0) + v
        for k, v in res.counters.items():
            stats[k] = stats.get(k, 0) + v
    if integration is not None and integration.stats:
        stats.update(integration.stats)
    stats["prompt_tokens"] = usage.get("prompt_tokens", 0)
    stats["completion_tokens"] = usage.get("completion_tokens", 0)
    ok = integration is not None and integration.ok
    return MpGIResult(
        record=item.record,
        rule_text=item.rule_text,
        perspectives=perspectives,
        captions=integration.captions if ok else [],
        status="ok" if ok else (integration.status if integration is not None else "failed"),
        error=integration.error if integration is not None and not ok else None,
        stats=stats,
    )


def _load_recipe_of_run(run_dir: Path) -> Recipe:
    data = _read_json(run_dir / "recipe.json")
    if data is None:
        raise ValueError(
            f"{run_dir} is not an MpGI run directory (no recipe.json); run `hqrs mpgi run` first"
        )
    source = data.pop("_source_path", None)
    return recipe_from_dict(data, source_path=source)


def _final_stage_docs(pass_dir: Path, recipe: Recipe) -> Iterator[dict]:
    stage = recipe_stages(recipe)[-1]
    yield from _iter_jsonl(pass_dir / "stages" / stage.folder / "output")


def iter_results(run_dir: str | os.PathLike) -> Iterator[MpGIResult]:
    """Every image of the run once, with its latest outcome (``status`` ``"ok"`` or ``"failed"``).

    Only finished passes' stage outputs are read; records still pending are not yielded.

    Example:
        >>> for result in iter_results("runs/demo"):  # doctest: +SKIP
        ...     print(result.image_id, result.status, [c.text for c in result.captions])
    """
    run_dir = Path(run_dir)
    recipe = _load_recipe_of_run(run_dir)
    seen: set[str] = set()
    for pass_dir in reversed(_pass_dirs(run_dir)):
        for doc in _final_stage_docs(pass_dir, recipe):
            if doc["id"] in seen:
                continue
            seen.add(doc["id"])
            yield result_from_document(doc, recipe)


def _stage_ids(stage_dir: Path) -> tuple[set[str], set[str]]:
    """(ids done, ids failed) of one stage: its outputs plus checkpointed documents."""
    done, failed = set(), set()
    for folder in (stage_dir / "output", stage_dir / "checkpoints"):
        for doc in _iter_jsonl(folder):
            key = (
                stage_dir.name.replace("-", ":", 1) if stage_dir.name.startswith("gen-") else INTEGRATION_KEY
            )
            done.add(doc["id"])
            if not stage_ok(doc.get("metadata") or {}, key):
                failed.add(doc["id"])
    return done, failed


_REASONS = (
    ("refusal", "refusal"),
    ("truncated", "truncated answer"),
    ("too long", "answer too long"),
    ("caption length", "outside the caption word ranges"),
    ("empty answer", "empty answer"),
    ("invalid JSON", "invalid integration answer"),
    ("too few captions", "valid captions (min_captions"),
    ("timeout", "no answer within request_timeout"),
    ("connection reset", "connection reset"),
    ("connection refused", "connection refused"),
    ("rejected request", "the server rejected the request"),
    ("unreadable image", "cannot read image"),
)


def failure_reason(error: str | None) -> str:
    """A short reason of a failed record's error (for counts in ``hqrs mpgi status``)."""
    error = error or ""
    for reason, needle in _REASONS:
        if needle in error:
            return reason
    m = re.search(r"HTTP (\d{3})", error)
    return f"HTTP {m.group(1)}" if m else "other"


def run_status(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Done / failed / pending counts per stage of every pass, and overall, and failures per reason.

    Returns ``{"run_dir", "recipe", "recipe_hash", "records", "ok", "failed", "pending", "failed_by_reason",
    "passes":
    [{"pass", "records", "complete", "stages": {stage: {"done", "failed", "pending"}}}]}``.
    """
    run_dir = Path(run_dir)
    recipe = _load_recipe_of_run(run_dir)
    manifest = _read_json(run_dir / "manifest.json", {})
    passes = []
    all_ids: set[str] = set()
    for pass_dir in _pass_dirs(run_dir):
        info = _read_json(pass_dir / "pass.json", {})
        n = info.get("records", 0)
        stages = {}
        for stage in recipe_stages(recipe):
            done, failed = _stage_ids(pass_dir / "stages" / stage.folder)
            stages[stage.key] = {
                "done": len(done) - len(failed),
                "failed": len(failed),
                "pending": n - len(done),
            }
        passes.append(
            {
                "pass": pass_dir.name,
                "records": n,
                "complete": (pass_dir / "DONE.json").exists(),
                "stages": stages,
                "tasks": {  # per-task state: completed / running / pending / failed (with log paths)
                    stage.key: stage_task_states(
                        pass_dir / "stages" / stage.folder / "logs", info.get("tasks", 1)
                    )
                    for stage in recipe_stages(recipe)
                },
            }
        )
        for doc in _iter_jsonl(pass_dir / "input"):
            all_ids.add(doc["id"])
    ok = failed = 0
    finished = set()
    reasons: dict[str, int] = {}
    for result in iter_results(run_dir):
        finished.add(result.image_id)
        ok += result.status == "ok"
        failed += result.status != "ok"
        if result.status != "ok":
            reason = failure_reason(result.error)
            reasons[reason] = reasons.get(reason, 0) + 1
    return {
        "run_dir": str(run_dir),
        "recipe": recipe.name,
        "recipe_hash": manifest.get("recipe_hash"),
        "records": len(all_ids),
        "ok": ok,
        "failed": failed,
        "pending": len(all_ids - finished),
        "failed_by_reason": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "passes": passes,
        "failed_tasks": [
            {"pass": p["pass"], "stage": key, **task}
            for p in passes
            if not p["complete"]
            for key, states in p["tasks"].items()
            for task in states["failed"]
        ],
    }


# --------------------------------------------------------------------------- #
# Progress
# --------------------------------------------------------------------------- #


class _ProgressBar:
    """tqdm bar fed by tailing the stages' ``progress/*.tsv`` files (works across worker processes)."""

    def __init__(self, folders: list[tuple[str, Path]], total: int, enabled: bool):
        self.folders = folders
        self.total = total
        self.enabled = enabled
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self):
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        offsets: dict[Path, int] = {}
        for key, folder in self.folders:
            seen: set[str] = set()
            tokens = 0
            start = time.monotonic()
            bar = tqdm(total=self.total, desc=f"MpGI {key}", unit="rec", dynamic_ncols=True, file=sys.stderr)
            while True:
                stage_done = (folder.parent / "DONE_STAGE").exists()
                for path in sorted(folder.glob("*.tsv")) if folder.is_dir() else []:
                    with open(path, "rb") as f:
                        f.seek(offsets.get(path, 0))
                        chunk = f.read()
                    cut = chunk.rfind(b"\n") + 1
                    offsets[path] = offsets.get(path, 0) + cut
                    for line in chunk[:cut].decode().splitlines():
                        parts = line.split("\t")
                        if len(parts) == 4 and parts[0] not in seen:
                            seen.add(parts[0])
                            tokens += int(parts[2])
                            bar.update(1)
                elapsed = max(1e-6, time.monotonic() - start)
                bar.set_postfix_str(f"{tokens / elapsed:.1f} tok/s", refresh=False)
                if stage_done or len(seen) >= self.total or self._stop.is_set():
                    break
                self._stop.wait(0.5)
            bar.close()
            if self._stop.is_set():
                return


# --------------------------------------------------------------------------- #
# run_mpgi
# --------------------------------------------------------------------------- #


def _prepare_doc(record: ImageRecord, prior: list[Perspective] | None, references=None) -> dict:
    """The pass-input document of ``record`` (a datatrove ``Document`` as a dict) carrying its
    :class:`StageInput`."""
    # absolute: a run directory made with `--source imgs` must work from any working directory
    if not os.path.isabs(record.image):
        record = replace(record, image=os.path.abspath(record.image))
    facts = rule_facts(record)
    item = StageInput(
        record=record,
        rule_text=rule_text(record, facts),
        facts=facts,
        # the source's human captions (mpgi.references)
        references=references.perspective(record) if references is not None else None,
        prior_perspectives=list(prior or []),
    )
    return {"text": record.image, "id": record.image_id, "metadata": item.to_metadata()}


def _write_pass_input(pass_dir: Path, docs: list[dict], tasks: int) -> int:
    """Write ``docs`` round-robin into ``pass_dir/input/NNNNN.jsonl``; returns the number of shards."""
    folder = pass_dir / "input"
    folder.mkdir(parents=True, exist_ok=True)
    shards = [open(folder / f"{i:05d}.jsonl", "wb") for i in range(max(1, min(tasks, len(docs))))]  # noqa: SIM115
    try:
        for i, doc in enumerate(docs):
            shards[i % len(shards)].write(orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE))
    finally:
        for f in shards:
            f.close()
    return len(shards)


def _run_pass(
    pass_dir: Path, recipe: Recipe, executor: str, tasks: int, records: int, workers: int, progress: bool
) -> bool:
    """Run (or resume) every stage of one pass; True when its last stage is complete."""
    stages = recipe_stages(recipe)
    options = {"slurm": recipe.execution.slurm, "ray": recipe.execution.ray}.get(executor)
    input_folder = str(pass_dir / "input")
    folders, chain = [], []
    for i, stage in enumerate(stages):
        stage_dir = pass_dir / "stages" / stage.folder
        stage_dir.mkdir(parents=True, exist_ok=True)
        folders.append((stage.key, stage_dir / "progress"))
        pipeline = stage_pipeline(recipe, stage, input_folder, stage_dir)
        chain.append((pipeline, str(stage_dir / "logs"), f"mpgi-{pass_dir.name}-{i}-{stage.folder}"))
        input_folder = str(stage_dir / "output")
    for name in dict.fromkeys(s.backend for s in stages if s.backend is not None):
        check_endpoint(recipe, name)
    try:
        with _ProgressBar(folders if executor == "local" else [], records, progress and executor == "local"):
            run_stages(executor, chain, tasks, workers, options)
    except ExecutorConfigError:
        raise
    except Exception as e:
        down = _operational_error(e)
        if down is not None:
            hint = (
                ""
                if isinstance(down, EndpointUnavailable)
                else f" (server logs: {', '.join(str(pass_dir / 'stages' / s.folder / 'logs') for s in stages)}); fix "
                "the server settings of the recipe (model, model_kwargs, tp) and rerun the same command"
            )
            raise MpGIRunError(f"MpGI pass {pass_dir.name} stopped: {down}{hint}") from None
        logs = ", ".join(str(pass_dir / "stages" / s.folder / "logs") for s in stages)
        raise MpGIRunError(
            f"MpGI pass {pass_dir.name} stopped: {type(e).__name__}: {str(e)[:500]}. Finished records are kept; "
            f"fix the cause (is the server running? see the task logs in {logs}) and rerun to resume."
        ) from e
    last = pass_dir / "stages" / stages[-1].folder
    complete = _stage_done(last, tasks)
    if complete:
        for stage in stages:
            (pass_dir / "stages" / stage.folder / "DONE_STAGE").touch()
    return complete


def _summarise_pass(pass_dir: Path, recipe: Recipe) -> dict[str, Any]:
    summary: dict[str, Any] = {"ok": 0, "failed": 0, "prompt_tokens": 0, "completion_tokens": 0}
    for key in ("fact_rejected", "fact_dropped", "repairs", "regenerations", "retries", "reused"):
        summary[key] = 0
    errors: dict[str, int] = {}
    for doc in _final_stage_docs(pass_dir, recipe):
        result = result_from_document(doc, recipe)
        summary[result.status if result.status == "ok" else "failed"] += 1
        for key in list(summary):
            if key not in ("ok", "failed"):
                summary[key] += int(result.stats.get(key, 0) or 0)
        if result.error:
            errors[result.error[:120]] = errors.get(result.error[:120], 0) + 1
    summary["errors"] = errors
    return summary


def run_mpgi(
    records: Iterable[ImageRecord],
    recipe: Recipe,
    run_dir: str | os.PathLike,
    executor: str = "local",
    tasks: int = 1,
    workers: int = 1,
    limit: int | None = None,
    progress: bool = True,
) -> RunReport:
    """Run MpGI on ``records`` into ``run_dir`` (resumable; rerun to finish or to retry failed records).

    Args:
        records: the images (:class:`ImageRecord`); duplicates (same ``image_id``) are ignored.
        recipe: from :func:`load_recipe`. A run directory keeps its recipe: a different one is an error.
        run_dir: the run directory (created if missing).
        executor: ``local`` (default), ``slurm`` or ``ray`` (datatrove executors; Slurm and Ray return
            after submitting: check with :func:`run_status`, then call again to retry failures).
        tasks, workers: datatrove tasks (input shards) and parallel workers.
        limit: only the first ``limit`` records.
        progress: show a tqdm bar per stage (records/s and tokens/s).

    Example:
        >>> from hqrs.dataset_builder.mpgi import load_recipe, run_mpgi, iter_results  # doctest: +SKIP
        >>> report = run_mpgi(records, load_recipe("offline"), "runs/demo")  # doctest: +SKIP
        >>> report.ok, report.failed  # doctest: +SKIP
    """
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}: use one of {', '.join(EXECUTORS)}")
    if tasks < 1 or workers < 1:
        raise ValueError(f"tasks and workers must be >= 1, got tasks={tasks!r} workers={workers!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit!r}")
    # an executor that cannot run here stops before the run directory is claimed
    check_executor(executor, {"slurm": recipe.execution.slurm, "ray": recipe.execution.ray}.get(executor))
    started = time.perf_counter()
    try:
        check_version()
    except RuntimeError as e:
        raise MpGIRunError(str(e)) from None
    check_optional_backends(recipe, executor)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # atomic writes cut by a kill (manifest, pass.json, DONE.json; one writer per run directory)
    for stale in [*run_dir.glob(".*.tmp"), *run_dir.glob("passes/*/.*.tmp")]:
        stale.unlink(missing_ok=True)
    recipe_hash = recipe.hash()
    manifest_path = run_dir / "manifest.json"
    manifest = _read_json(manifest_path)
    if manifest is not None and manifest.get("recipe_hash") == recipe.hash(legacy=True):
        manifest["recipe_hash"] = recipe_hash  # a run directory made before operational keys left the hash
    if manifest is not None and manifest.get("recipe_hash") != recipe_hash:
        raise ValueError(
            f"run directory {str(run_dir)!r} was made with recipe {manifest.get('recipe')!r} "
            f"(hash {manifest.get('recipe_hash', '?')[:12]}), not with this recipe {recipe.name!r} "
            f"(hash {recipe_hash[:12]}): models, prompts, sampling, perspectives or the integrator differ; use "
            "another --out, or the same recipe (endpoint, timeouts, concurrency, retries and executor may change)"
        )
    if manifest is None:
        manifest = {
            "recipe": recipe.name,
            "recipe_hash": recipe_hash,
            "recipe_source": recipe.source_path,
            "models": recipe.models(),
            "integrator": recipe.integrator.backend,
            "created": _now(),
            "passes": [],
        }
        _write_json(run_dir / "recipe.json", {**recipe.to_dict(), "_source_path": recipe.source_path})
    manifest["packages"] = _package_versions()
    _write_json(manifest_path, manifest)
    report = RunReport(run_dir=str(run_dir), recipe=recipe.name, recipe_hash=recipe_hash)

    # 1. resume an unfinished pass
    resumed_ids: set[str] = set()
    passes = _pass_dirs(run_dir)
    if passes and not (passes[-1] / "DONE.json").exists():
        pass_dir = passes[-1]
        report.resumed_pass = int(pass_dir.name)
        logger.info("resuming unfinished pass %s of %s", pass_dir.name, run_dir)
        _execute_pass(pass_dir, recipe, executor, workers, progress, manifest, manifest_path)
        resumed_ids = {d["id"] for d in _iter_jsonl(pass_dir / "input")}

    # 2. what is still to do
    latest: dict[str, MpGIResult] = {r.image_id: r for r in iter_results(run_dir)}
    in_flight = set()
    passes = _pass_dirs(run_dir)
    if passes and not (passes[-1] / "DONE.json").exists():  # slurm/ray still running
        in_flight = {d["id"] for d in _iter_jsonl(passes[-1] / "input")}
    todo: list[dict] = []
    given: set[str] = set()
    references = ReferenceGuard.from_spec(recipe.integrator)
    for record in records:
        if limit is not None and len(given) >= limit:
            break
        if record.image_id in given:
            report.duplicates += 1
            continue
        given.add(record.image_id)
        prev = latest.get(record.image_id)
        if prev is not None and prev.status == "ok":
            if record.image_id not in resumed_ids:
                report.skipped += 1
            continue
        if record.image_id in in_flight or (prev is not None and record.image_id in resumed_ids):
            continue  # just attempted (or still running): retry in a later call
        prior = [p for p in prev.perspectives if p.generator != "rule"] if prev is not None else None
        todo.append(_prepare_doc(record, prior, references))
    report.records = len(given)
    if references is not None and references.withheld:
        logger.info(
            "human references withheld: %s",
            ", ".join(f"{n} ({why})" for why, n in references.withheld.items()),
        )

    # 3. a new pass for them
    if todo and not in_flight:
        index = int(passes[-1].name) + 1 if passes else 0
        pass_dir = run_dir / "passes" / f"{index:04d}"
        # written aside and renamed: an interrupt never leaves a pass without its input or pass.json
        partial = pass_dir.with_name(f".{pass_dir.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        n_shards = _write_pass_input(partial, todo, tasks)
        _write_json(
            partial / "pass.json",
            {
                "records": len(todo),
                "tasks": n_shards,
                "records_per_chunk": recipe.execution.records_per_chunk,
                "created": _now(),
            },
        )
        partial.rename(pass_dir)
        report.new_pass = index
        _execute_pass(pass_dir, recipe, executor, workers, progress, manifest, manifest_path)

    # 4. report
    latest = {r.image_id: r for r in iter_results(run_dir)}
    for image_id in given:
        res = latest.get(image_id)
        if res is None:
            report.pending += 1
        elif res.status == "ok":
            report.ok += 1
        else:
            report.failed += 1
            msg = (res.error or "?")[:120]
            report.errors[msg] = report.errors.get(msg, 0) + 1
    for entry in manifest["passes"]:
        if entry.get("pass") in (report.resumed_pass, report.new_pass) and "summary" in entry:
            s = entry["summary"]
            report.processed += s["ok"] + s["failed"]
            report.prompt_tokens += s["prompt_tokens"]
            report.completion_tokens += s["completion_tokens"]
            for key in ("fact_rejected", "fact_dropped", "repairs", "regenerations"):
                setattr(report, key, getattr(report, key) + s[key])
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _execute_pass(
    pass_dir: Path,
    recipe: Recipe,
    executor: str,
    workers: int,
    progress: bool,
    manifest: dict,
    manifest_path: Path,
) -> None:
    index = int(pass_dir.name)
    info = _read_json(pass_dir / "pass.json")
    first = next(_iter_jsonl(pass_dir / "input"), None)
    if first is not None:
        check_templates(recipe, StageInput.from_metadata(first["metadata"]))
    chunk = info.get("records_per_chunk", recipe.execution.records_per_chunk)
    if (
        chunk != recipe.execution.records_per_chunk
    ):  # datatrove's checkpoints of this pass count in its chunks
        recipe = replace(recipe, execution=replace(recipe.execution, records_per_chunk=chunk))
    entry = next((e for e in manifest["passes"] if e.get("pass") == index), None)
    if entry is None:
        entry = {"pass": index, "records": info["records"], "executor": executor}
        manifest["passes"].append(entry)
    entry.setdefault("attempts", []).append(
        {"started": _now(), "executor": executor, "workers": workers, "settings": recipe.operational()}
    )
    _write_json(manifest_path, manifest)
    t0 = time.perf_counter()
    complete = _run_pass(pass_dir, recipe, executor, info["tasks"], info["records"], workers, progress)
    entry["attempts"][-1]["seconds"] = round(time.perf_counter() - t0, 3)
    if complete:
        summary = _summarise_pass(pass_dir, recipe)
        summary["seconds"] = round(sum(a.get("seconds", 0) for a in entry["attempts"]), 3)
        summary["stage_stats"] = _stage_stats(pass_dir, recipe)
        entry["summary"] = summary
        entry["finished"] = _now()
        _write_json(pass_dir / "DONE.json", summary)
    totals = {"prompt_tokens": 0, "completion_tokens": 0, "seconds": 0.0, "ok": 0, "failed": 0}
    for e in manifest["passes"]:
        for key in totals:
            totals[key] += e.get("summary", {}).get(key, 0)
    manifest["totals"] = totals
    _write_json(manifest_path, manifest)


def _stage_stats(pass_dir: Path, recipe: Recipe) -> dict[str, Any]:
    """Timing and request counts from datatrove's own ``logs/stats.json`` of each stage."""
    out = {}
    for stage in recipe_stages(recipe):
        stats = _read_json(pass_dir / "stages" / stage.folder / "logs" / "stats.json")
        if not stats:
            continue
        flat = {}
        for step in stats:
            for key, val in (step.get("stats") or {}).items():
                if isinstance(val, dict) and "total" in val:
                    flat[f"{step.get('name', '?')}/{key}"] = val["total"]
        out[stage.key] = flat
    return out
