"""The datatrove side of MpGI: rollout functions for ``InferenceRunner`` stages and plain pipeline steps.

Documents flowing between stages carry the image path as ``text``, the image id as ``id`` and in
``metadata``: ``record`` (an :class:`ImageRecord` dict), ``rule_text``, ``facts``, optionally
``prior_perspectives`` (perspectives kept from an earlier failed attempt) and one entry per finished
stage (``gen:<backend>``, ``integration``) holding the rollout's JSON result.

Request failures never escape a rollout: after the backend's bounded retries the rollout returns
``{"status": "failed", "error": ...}`` so that datatrove checkpoints the document as finished (and a
later ``run_mpgi`` retries it). Only an unreachable server aborts a stage (``ServerError``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson
from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.inference.checkpointing import CheckpointManager, RequestCache
from datatrove.pipeline.inference.run_inference import InferenceRunner
from datatrove.pipeline.inference.types import InferenceError, InferenceResult, ServerError
from loguru import logger

from ..records import Caption, Perspective
from ..rules import RuleFacts
from .integrate import (
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
from .recipe import BackendSpec, Recipe

GEN_KEY_PREFIX = "gen:"
INTEGRATION_KEY = "integration"


class WalRequestCache(RequestCache):
    """datatrove's request cache with its sqlite file in WAL mode and ``synchronous=NORMAL``.

    datatrove commits every answer with a full fsync (~7 ms each), which caps a task at ~140 requests/s.
    In WAL mode with ``synchronous=NORMAL`` a commit survives ``kill -9`` (only an OS crash can lose the
    last ones, and those requests are then simply sent again) at a fraction of the cost.
    """

    async def initialize(self, rank: int) -> None:
        await super().initialize(rank)
        if self._conn is not None:
            await self._conn.execute("PRAGMA journal_mode=WAL")
            await self._conn.execute("PRAGMA synchronous=NORMAL")
            await self._conn.commit()

    async def _writer_loop(self) -> None:
        """Write what is queued in batches: one ``executemany`` and one commit for all waiting answers.

        datatrove's loop makes three thread hops per answer (``orjson.dumps`` in a thread, ``execute``,
        ``commit``), which on a busy event loop costs more than the 50 ms requests it caches. An answer
        is committed as soon as the writer is free, as before; a batch only groups those that arrived
        meanwhile.
        """
        queue = self._queue
        while True:
            items = [await queue.get()]
            while not queue.empty():
                items.append(queue.get_nowait())
            rows = []
            for item in items:
                if item is None:
                    continue
                op_type, (chunk_index, doc_id, rollout_idx, payload_hash, value) = item
                if op_type == "result":
                    rows.append((chunk_index, doc_id, rollout_idx, payload_hash, orjson.dumps(value), None))
                else:
                    rows.append((chunk_index, doc_id, rollout_idx, payload_hash, None, value))
            try:
                if rows and self._conn is not None:
                    await self._conn.executemany(
                        "INSERT OR REPLACE INTO request_cache (chunk_index, doc_id, rollout_idx, payload_hash, "
                        "result, error_message) VALUES (?, ?, ?, ?, ?, ?)",
                        rows,
                    )
                    await self._conn.commit()
            except Exception as exc:  # as datatrove: a lost cache entry only means a request sent again
                logger.error(f"Failed to write {len(rows)} request cache entries: {exc}")
            finally:
                for _ in items:
                    queue.task_done()
            if any(item is None for item in items):
                return


class SyncCheckpointManager(CheckpointManager):
    """datatrove's ``CheckpointManager`` writing checkpoint lines through open files, on the event loop.

    datatrove opens, appends to and closes the chunk file with ``aiofiles`` for every document (three
    thread hops) after a ``dataclasses.asdict`` deep copy of it. A small append to a local file is
    cheaper than one thread hop, and a line handed to the OS survives ``kill -9`` just the same
    (neither version fsyncs). Chunk bookkeeping (counts, completed chunks, ``last_chunk``, request
    cache pruning) is datatrove's own.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._files: dict[tuple[int, int], Any] = {}

    def _close(self, rank: int, chunk_index: int | None = None) -> None:
        for key in [k for k in self._files if k[0] == rank and (chunk_index is None or k[1] == chunk_index)]:
            self._files.pop(key).close()

    async def write_document(self, document: Document, rank: int, chunk_index: int, output_writer_context):
        should_update_last_chunk_index = False
        async with self.file_locks[chunk_index]:
            if "__no_rollouts_remove" not in document.metadata:
                output_writer_context.write(document, rank=rank, chunk_index=chunk_index)
            self.per_chunk_counts[chunk_index] += 1
            if self.checkpoints_local_dir is not None:
                f = self._files.get((rank, chunk_index))
                if f is None:
                    path = os.path.join(
                        self.checkpoints_local_dir, f"{rank:05d}/chunk_{chunk_index:05d}.jsonl"
                    )
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    f = self._files[(rank, chunk_index)] = open(path, "ab", buffering=0)  # noqa: SIM115
                line = {"text": document.text, "id": document.id, "media": [], "metadata": document.metadata}
                if document.media:
                    line["media"] = [dataclasses.asdict(m) for m in document.media]
                f.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))
                if self.per_chunk_counts[chunk_index] == self.records_per_chunk:
                    self._close(rank, chunk_index)
                    output_writer_context.close_file(
                        output_writer_context._get_output_filename(document, rank, chunk_index=chunk_index)
                    )
                    self.new_completed_chunks.add(chunk_index)
                    should_update_last_chunk_index = True
        if should_update_last_chunk_index:
            await self.update_last_chunk_index(rank)

    async def cleanup_last_chunk(self, rank: int, chunk_index: int):
        self._close(rank)
        await super().cleanup_last_chunk(rank, chunk_index)


class MpGIInferenceRunner(InferenceRunner):
    """datatrove's ``InferenceRunner`` with the MpGI request cache and endpoint settings.

    - the request cache is a :class:`WalRequestCache`, checkpoints go through :class:`SyncCheckpointManager`,
      and the reader hands over documents in batches (datatrove makes a thread hop per document);
    - for a non-local ``endpoint`` datatrove talks through the OpenAI client, whose base URL must end
      in ``/v1`` while its readiness probe appends ``/v1/models`` to the same URL: the config carries
      the server root and the client gets ``<root>/v1``;
    - the API key is read from the environment variable ``api_key_env`` inside the task, so that it is
      never pickled into the pipeline (Slurm and Ray executors write the pipeline to disk).
    """

    read_batch = 256  # documents fetched from the reader per thread hop

    def __init__(self, *args, api_key_env: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.api_key_env = api_key_env
        old = self.checkpoint_manager
        self.request_cache = WalRequestCache(old.checkpoints_local_dir)
        self.checkpoint_manager = SyncCheckpointManager(
            old.checkpoints_local_dir, old.records_per_chunk, request_cache=self.request_cache
        )

    async def _async_data_gen(self, sync_gen) -> AsyncIterator[Document]:
        """Documents from the (blocking) reader, ``read_batch`` per thread hop instead of one."""
        pool = ThreadPoolExecutor(max_workers=1)
        iterator = iter(sync_gen)
        loop = asyncio.get_running_loop()
        try:
            while True:
                batch = await loop.run_in_executor(
                    pool, lambda: list(itertools.islice(iterator, self.read_batch))
                )
                if not batch:
                    return
                for document in batch:
                    yield document
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _init_server(self, rank: int):
        server = super()._init_server(rank)
        client = getattr(server, "client", None)
        if client is not None:
            client.base_url = server.endpoint_url.rstrip("/") + "/v1"
            if self.api_key_env:
                key = os.environ.get(self.api_key_env)
                if not key:
                    raise ValueError(
                        f"the endpoint {server.endpoint_url} needs an API key: set the environment variable "
                        f"{self.api_key_env} (named by the recipe's api_key_env) where the tasks run"
                    )
                client.api_key = key
        return server


class RequestFailed(Exception):
    """A request failed after all retries (or for good, e.g. HTTP 400)."""


def _usage_add(total: dict[str, int], usage: dict | None) -> None:
    for key in ("prompt_tokens", "completion_tokens"):
        total[key] = total.get(key, 0) + int((usage or {}).get(key) or 0)


async def request_with_retries(
    generate, payload: dict[str, Any], backend: BackendSpec, usage: dict[str, int], counters: dict[str, int]
) -> InferenceResult:
    """Send ``payload`` through datatrove's generate callback with a timeout and bounded retries.

    Retries on timeouts, HTTP 5xx, connection errors, unparsable HTTP bodies and empty answers; each
    retry carries a different ``seed`` (so that it is a new request, also for the request cache).
    HTTP 400 fails at once. A server that never became ready raises ``ServerError`` (stage abort).
    """
    last_error = "no attempt"
    base_seed = int(payload.get("seed", 0) or 0)
    for attempt in range(backend.retries + 1):
        body = dict(payload)
        if attempt:
            body["seed"] = base_seed + attempt
            counters["retries"] = counters.get("retries", 0) + 1
        counters["requests"] = counters.get("requests", 0) + 1
        try:
            result = await asyncio.wait_for(generate(body), timeout=backend.request_timeout)
        except asyncio.TimeoutError:
            last_error = f"no answer within request_timeout={backend.request_timeout:g}s"
        except InferenceError as e:
            last_error = str(e.error)
            if "BadRequestError" in last_error:
                raise RequestFailed(f"the server rejected the request: {last_error[:300]}") from None
        except ServerError as e:
            last_error = str(e)
            if "InternalServerError" not in last_error:  # server down for good: abort the stage
                raise
        else:
            _usage_add(usage, result.usage)
            if result.text.strip():
                return result
            last_error = f"empty answer (finish_reason={result.finish_reason!r})"
        if attempt < backend.retries and backend.retry_backoff:
            await asyncio.sleep(backend.retry_backoff * 2**attempt)
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


# ``dataclasses.asdict`` deep-copies field by field through ``copy.deepcopy``: for these flat records of
# strings a plain dict is the same JSON at a fraction of the cost (they are built per request).
def _perspective_dict(p: Perspective) -> dict[str, Any]:
    return {
        "generator": p.generator,
        "perspective": p.perspective,
        "model": p.model,
        "prompt_id": p.prompt_id,
        "text": p.text,
    }


def _caption_dict(c: Caption) -> dict[str, Any]:
    return {"text": c.text, "length": c.length, "sources": list(c.sources)}


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


@dataclass
class GenerationRollout:
    """Rollout of one generation stage: every generator of ``backend`` for one image.

    Picklable (a dataclass of plain data), so it travels to local workers, Slurm and Ray tasks.
    """

    recipe: Recipe
    backend: str
    progress_folder: str | None = None

    async def __call__(self, document: Document, generate) -> dict[str, Any]:
        if not hasattr(self, "_progress"):
            self._progress = _ProgressLog(self.progress_folder)
        meta = document.metadata
        spec = self.recipe.backends[self.backend]
        prior = {p["generator"]: p for p in meta.get("prior_perspectives", [])}
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
                return {
                    "status": "failed",
                    "error": error,
                    "perspectives": [],
                    "usage": usage,
                    "counters": counters,
                }

        async def one(gen, k):
            name = _gen_name(gen.name, k, gen.n)
            if name in prior:
                counters["reused"] = counters.get("reused", 0) + 1
                return prior[name], None
            text = render(
                gen.prompt,
                self.recipe,
                perspective=gen.perspective,
                relay_rules=gen.relay_rules,
                rule_text=meta["rule_text"],
                record=meta["record"],
                facts=meta["facts"],
            )
            sampling = dict(gen.sampling)
            if gen.n > 1:
                sampling["seed"] = int(sampling.get("seed", 0) or 0) + 1000 * k
            payload = chat_payload(text, image_url if gen.image else None, sampling)
            try:
                result = await request_with_retries(generate, payload, spec, usage, counters)
            except RequestFailed as e:
                return None, f"{name}: {e}"
            persp = Perspective(
                generator=name,
                perspective=gen.perspective,
                model=spec.model,
                prompt_id=prompt_id(gen.prompt, self.recipe),
                text=" ".join(result.text.split()),
            )
            return _perspective_dict(persp), None

        outcomes = await asyncio.gather(*(one(g, k) for g, k in jobs))
        perspectives = [p for p, _ in outcomes if p is not None]
        errors = [e for _, e in outcomes if e is not None]
        out = {
            "status": "failed" if errors else "ok",
            "error": "; ".join(errors) or None,
            "perspectives": perspectives,
            "usage": usage,
            "counters": counters,
            "seconds": round(time.perf_counter() - started, 4),
        }
        self._progress.write(document.id, usage, not errors)
        return out


def collect_perspectives(meta: dict[str, Any], recipe: Recipe) -> tuple[list[dict], list[str]]:
    """The rule perspective plus every generation stage's perspectives, and the stages' errors."""
    perspectives = [_perspective_dict(Perspective("rule", "rule", None, None, meta["rule_text"]))]
    if meta.get("references"):  # the source's human captions, where allowed (mpgi.references)
        perspectives.append(meta["references"])
    errors = []
    for backend in recipe.generator_backends():
        results = meta.get(GEN_KEY_PREFIX + backend) or []
        if not results:
            errors.append(f"{backend}: no generation result")
            continue
        res = results[0]
        perspectives.extend(res.get("perspectives", []))
        if res.get("status") != "ok":
            errors.append(res.get("error") or f"{backend}: failed")
    return perspectives, errors


@dataclass
class IntegrationRollout:
    """Rollout of the integration stage: fuse all perspectives of one image into final captions.

    Invalid JSON → repair requests (``max_repairs``); captions contradicting the rule facts →
    regenerated (``fact_filter: regenerate``, ``max_regenerations`` rounds) or dropped.
    """

    recipe: Recipe
    progress_folder: str | None = None

    async def __call__(self, document: Document, generate) -> dict[str, Any]:
        if not hasattr(self, "_progress"):
            self._progress = _ProgressLog(self.progress_folder)
        meta = document.metadata
        spec = self.recipe.integrator
        backend = self.recipe.backends[spec.backend]
        usage: dict[str, int] = {}
        counters: dict[str, int] = {}
        started = time.perf_counter()
        perspectives, errors = collect_perspectives(meta, self.recipe)
        if errors:
            self._progress.write(document.id, usage, False)
            return {
                "status": "failed",
                "error": "generation failed: " + "; ".join(errors),
                "usage": usage,
                "counters": counters,
            }
        facts = RuleFacts.from_dict(meta["facts"])
        names = [p["generator"] for p in perspectives]
        listing = [
            {"name": p["generator"], "perspective": p["perspective"], "text": p["text"]} for p in perspectives
        ]
        stats = {
            "repairs": 0,
            "regenerations": 0,
            "fact_rejected": 0,
            "fact_dropped": 0,
            "invalid_dropped": 0,
        }

        async def ask(captions_wanted: dict[str, int], feedback: str | None) -> list[Caption]:
            prompt = render(
                spec.prompt,
                self.recipe,
                perspectives=listing,
                rule_text=meta["rule_text"],
                captions=captions_wanted,
                words=spec.words,
                n_captions=sum(captions_wanted.values()),
                feedback=feedback,
            )
            messages = prompt_messages(prompt)  # a template may hold example turns
            for repair in range(spec.max_repairs + 1):
                payload = {"messages": list(messages), **spec.sampling}
                result = await request_with_retries(generate, payload, backend, usage, counters)
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

        try:
            captions = await ask(dict(spec.captions), None)
            kept: list[Caption] = []
            rounds = 0
            while True:
                good, rejected = (
                    filter_captions(captions, facts) if spec.fact_filter != "off" else (captions, [])
                )
                stats["fact_rejected"] += len(rejected)
                kept, missing = select_captions(kept + good, spec)
                if not rejected or spec.fact_filter != "regenerate" or rounds >= spec.max_regenerations:
                    stats["fact_dropped"] += len(rejected)
                    break
                wanted = {k: v for k, v in missing.items() if v > 0}
                if not wanted:
                    break
                rounds += 1
                stats["regenerations"] += 1
                problems = "; ".join(dict.fromkeys(p for _, chk in rejected for p in chk.problems))
                captions = await ask(wanted, problems)
        except RequestFailed as e:
            self._progress.write(document.id, usage, False)
            return {
                "status": "failed",
                "error": f"integration: {e}",
                "usage": usage,
                "counters": counters,
                "stats": stats,
            }
        if len(kept) < spec.min_captions:
            self._progress.write(document.id, usage, False)
            return {
                "status": "failed",
                "error": f"integration: only {len(kept)} valid captions (min_captions={spec.min_captions})",
                "usage": usage,
                "counters": counters,
                "stats": stats,
            }
        self._progress.write(document.id, usage, True)
        return {
            "status": "ok",
            "error": None,
            "captions": [_caption_dict(c) for c in kept],
            "usage": usage,
            "counters": counters,
            "stats": stats,
            "seconds": round(time.perf_counter() - started, 4),
        }


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
                meta = document.metadata
                perspectives, errors = collect_perspectives(meta, self.recipe)
                if errors:
                    result = {"status": "failed", "error": "generation failed: " + "; ".join(errors)}
                else:
                    facts = RuleFacts.from_dict(meta["facts"])
                    caps = template_captions(facts, spec, seed=document.id)
                    sources = [p["generator"] for p in perspectives]
                    for cap in caps:
                        cap.sources = sources
                    result = {
                        "status": "ok",
                        "error": None,
                        "captions": [_caption_dict(c) for c in caps],
                        "usage": {},
                    }
                meta[INTEGRATION_KEY] = [result]
                self.stat_update(result["status"])
                progress.write(document.id, {}, result["status"] == "ok")
            yield document
