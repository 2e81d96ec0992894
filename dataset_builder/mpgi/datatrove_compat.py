"""Every place where hqrs replaces a piece of datatrove's internals, in one module, behind a tested version range.

The rest of MpGI (``steps``, ``engine``, ``hqrs.dataset_builder.parallel``) uses datatrove's public API only:
``PipelineStep``, ``InferenceRunner``'s documented constructor and ``InferenceConfig``, readers, writers,
executors and ``PipelineExecutor.get_incomplete_ranks()``. What cannot be done through that API is here,
one entry of :data:`PATCHES` per replaced internal, each with the upstream reason (datatrove 0.10.1; no
upstream issue was found for any of them in datatrove's tracker, so each entry describes the behaviour):

- :class:`MpGIInferenceRunner` (``InferenceRunner`` subclass) replaces ``_send_request`` (one attempt per
  call, truthful error kinds, ``Retry-After``, a circuit breaker: :func:`send_request`), ``_init_server``
  (per-task API key from the environment, ``/v1`` base URL and no retries of the OpenAI client) and
  ``_async_data_gen`` (documents read in batches, not one thread hop each), and swaps in the request cache
  and checkpoint writer below;
- :class:`WalRequestCache` (``RequestCache._writer_loop``, ``_conn``, ``_queue``) and
  :class:`SyncCheckpointManager` (``CheckpointManager.write_document``, ``file_locks``, ``per_chunk_counts``,
  ``new_completed_chunks``, the writer's ``_get_output_filename``) replace datatrove's request-cache writer
  and checkpoint writer (throughput);
- :func:`install_log_filter` replaces ``datatrove.utils.logging.add_task_logger``/``setup_default_logger``:
  datatrove's task logger always prints INFO lines and tracebacks on stderr; here the stderr level follows
  ``-q``/``-qq``/``--no-progress`` (environment variable :data:`STDERR_LEVEL_ENV`, inherited by worker
  processes) and tracebacks of operational errors stay out of stderr (the task log files keep everything);
- :func:`install_child_reaper` makes datatrove's Manager and pool processes die with their parent.

Tested with datatrove :data:`TESTED_RANGE` (pyproject pins the same range); :func:`check_version` raises on
another version so that a datatrove upgrade is a clear error, not a silent change of behaviour, and
``tests/test_mpgi_compat.py`` checks that every internal named in :data:`PATCHES` still exists with the
signature these replacements were written against.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import itertools
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from importlib import metadata
from typing import Any
from urllib.parse import urlparse

import multiprocess
import multiprocess.util
import orjson
from datatrove.data import Document
from datatrove.pipeline.inference.checkpointing import CheckpointManager, RequestCache
from datatrove.pipeline.inference.run_inference import InferenceRunner
from datatrove.pipeline.inference.types import InferenceError, InferenceResult, ServerError
from loguru import logger

TESTED_RANGE = ((0, 10, 0), (0, 11, 0))  # [min, max)
STDERR_LEVEL_ENV = "HQRS_DATATROVE_STDERR_LEVEL"


@dataclass(frozen=True)
class Patch:
    """One datatrove internal that this module replaces or relies on.

    Attributes:
        target: ``module:qualname`` of the internal in datatrove.
        params: its parameter names (``None`` for an attribute that is not a function).
        reason: why a public hook does not do (datatrove's behaviour that MpGI cannot live with).
        upstream: the upstream issue/PR, or ``None`` where none was found.
    """

    target: str
    params: tuple[str, ...] | None
    reason: str
    upstream: str | None = None


_RUN = "datatrove.pipeline.inference.run_inference"
_CKPT = "datatrove.pipeline.inference.checkpointing"
PATCHES: tuple[Patch, ...] = (
    Patch(
        f"{_RUN}:InferenceRunner._send_request",
        ("self", "server", "payload", "semaphore"),
        "retries a failed connection 6 times with sleeps of 5 to 160 s, with no public setting, and labels every "
        "failure the same: MpGI needs one attempt per call bounded by request_timeout, error kinds, Retry-After "
        "and a circuit breaker (send_request)",
    ),
    Patch(
        f"{_RUN}:InferenceRunner._init_server",
        ("self", "rank"),
        "builds the server (and its OpenAI client) with no hook: the API key must be read inside the task (never "
        "pickled), the client's base URL needs /v1 while the readiness probe appends /v1/models to the same URL, "
        "and the client's own retries must be off (MpGIInferenceRunner)",
    ),
    Patch(
        f"{_RUN}:InferenceRunner._async_data_gen",
        ("self", "sync_gen"),
        "hands documents from the reader to the event loop with one thread hop per document, which on a busy "
        "loop costs more than a 50 ms request: MpGIInferenceRunner reads read_batch documents per hop",
    ),
    Patch(
        f"{_CKPT}:RequestCache._writer_loop",
        ("self",),
        "commits every cached answer alone with a full fsync and three thread hops (~7 ms, capping a task at "
        "~140 requests/s): WalRequestCache batches the queue into one executemany and one commit in WAL mode",
    ),
    Patch(
        f"{_CKPT}:RequestCache.initialize",
        ("self", "rank"),
        "WalRequestCache sets its sqlite pragmas after it",
    ),
    Patch(
        f"{_CKPT}:CheckpointManager.write_document",
        ("self", "document", "rank", "chunk_index", "output_writer_context"),
        "opens, appends to and closes the chunk file with aiofiles per document after a dataclasses.asdict deep "
        "copy: SyncCheckpointManager appends through open files (same kill -9 safety, no fsync in either)",
    ),
    Patch(
        f"{_CKPT}:CheckpointManager.cleanup_last_chunk",
        ("self", "rank", "chunk_index"),
        "SyncCheckpointManager closes its open chunk files first",
    ),
    Patch(
        "datatrove.utils.logging:add_task_logger",
        ("logging_dir", "rank", "local_rank", "node_rank"),
        "always logs INFO and tracebacks on stderr: install_log_filter makes the level follow -q/-qq and keeps "
        "tracebacks of operational errors in the task log files only",
    ),
)


def _version_tuple(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits or 0))
    return tuple(out)


def check_version(version: str | None = None) -> str:
    """The installed datatrove version if it is in :data:`TESTED_RANGE`, else a ``RuntimeError``."""
    version = version or metadata.version("datatrove")
    low, high = TESTED_RANGE
    if not (low <= _version_tuple(version) < high):
        raise RuntimeError(
            f"datatrove {version} is installed but hqrs' MpGI engine replaces datatrove internals tested with "
            f">={'.'.join(map(str, low))},<{'.'.join(map(str, high))} (hqrs.dataset_builder.mpgi.datatrove_compat): "
            "install a tested version (pip install 'datatrove>=0.10,<0.11')"
        )
    return version


# --------------------------------------------------------------------------- #
# Request cache and checkpoints (throughput)
# --------------------------------------------------------------------------- #


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


# --------------------------------------------------------------------------- #
# Requests: one attempt, truthful errors, circuit breaker
# --------------------------------------------------------------------------- #


class RequestError(InferenceError):
    """One request failed. ``kind`` is ``timeout``, ``connection-refused``, ``connection-reset``,
    ``connection-error``, ``http-<status>``, ``bad-body``; ``retry_after`` is the server's
    ``Retry-After`` in seconds (429/503) or ``None``."""

    def __init__(self, kind: str, message: str, retry_after: float | None = None):
        super().__init__(None, message)
        self.kind = kind
        self.retry_after = retry_after

    @property
    def connection_failure(self) -> bool:
        """The server did not answer at all (what the circuit breaker counts)."""
        return self.kind in ("timeout", "connection-refused", "connection-reset", "connection-error")

    @property
    def retryable(self) -> bool:
        if self.kind.startswith("http-"):
            status = int(self.kind[5:])
            return status == 429 or status == 408 or status >= 500
        return True

    def __str__(self) -> str:
        return str(self.error)


class EndpointUnavailable(ServerError):
    """The circuit breaker tripped: the endpoint stopped answering. Aborts the stage (unfinished records
    stay pending); the message names the endpoint, the last error and the fix."""

    def __init__(self, message: str):
        Exception.__init__(self, message)  # without datatrove's "unrecoverable error" prefix
        self.error = message


@dataclass
class CircuitBreaker:
    """Counts consecutive connection failures (refused, reset, timeout) of one task's endpoint; any HTTP
    answer resets the count. At ``threshold`` it trips and every further request fails at once."""

    endpoint: str
    threshold: int
    request_timeout: float
    backend: str = "<name>"
    consecutive: int = 0
    tripped: str | None = None
    last_error: str | None = None
    history: list[str] = field(default_factory=list)

    def success(self) -> None:
        self.consecutive = 0

    def failure(self, error: RequestError) -> None:
        self.last_error = str(error)
        if not error.connection_failure:
            self.consecutive = 0
            return
        self.consecutive += 1
        if self.consecutive >= self.threshold and self.tripped is None:
            self.tripped = self.message()

    def message(self) -> str:
        fix = (
            f"raise backends.{self.backend}.request_timeout (now {self.request_timeout:g}s) if the server is only slow"
            if self.last_error and self.last_error.startswith("no answer within")
            else "is the server running? start it or point endpoint_url at it"
        )
        return (
            f"endpoint {self.endpoint} stopped answering: {self.consecutive} consecutive connection failures, "
            f"last: {self.last_error}; {fix} (--set backends.{self.backend}.endpoint_url=URL), then rerun the same "
            "command: finished records are kept, unfinished ones stay pending"
        )

    def check(self) -> None:
        if self.tripped is not None:
            raise EndpointUnavailable(self.tripped)


def _retry_after(headers: dict[str, str]) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


async def http_post(
    url: str, payload: dict, headers: dict[str, str] | None = None
) -> tuple[int, dict, bytes]:
    """POST ``payload`` as JSON (HTTP/1.1, ``Connection: close``, as datatrove's helper) and return
    ``(status, headers, body)``; a connection that fails raises :class:`RequestError` with its kind."""
    parsed = urlparse(url)
    host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        reader, writer = await asyncio.open_connection(host, port, ssl=parsed.scheme == "https" or None)
    except ConnectionRefusedError:
        raise RequestError("connection-refused", f"connection refused by {host}:{port}") from None
    except OSError as e:
        raise RequestError("connection-error", f"cannot connect to {host}:{port}: {e}") from None
    try:
        body = json.dumps(payload).encode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        writer.write(
            (
                f"POST {parsed.path or '/'} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
            ).encode()
            + body
        )
        await writer.drain()
        status_line = (await reader.readline()).decode("latin-1").split(" ", 2)
        if len(status_line) < 2 or not status_line[1].isdigit():
            raise RequestError("connection-reset", "the server closed the connection without an answer")
        status = int(status_line[1])
        response_headers: dict[str, str] = {}
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            response_headers[name.strip().lower()] = value.strip()
        length = response_headers.get("content-length")
        data = await (reader.readexactly(int(length)) if length and length.isdigit() else reader.read())
        return status, response_headers, data
    except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError) as e:
        raise RequestError(
            "connection-reset", f"connection reset by the server ({type(e).__name__})"
        ) from None
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


def _raise_for_status(status: int, headers: dict[str, str], body: bytes) -> None:
    if status == 200:
        return
    text = body.decode("utf-8", "replace")[:300]
    label = "BadRequestError" if status == 400 else f"HTTP {status}"
    raise RequestError(
        f"http-{status}", f"{label} from the server: {text}", retry_after=_retry_after(headers)
    )


def _connection_error(error: BaseException) -> RequestError:
    """The kind of a connection failure seen through the OpenAI client (httpx underneath)."""
    import httpx

    chain, exc = [], error
    while exc is not None and len(chain) < 10:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    names = "; ".join(f"{type(c).__name__}: {c}" for c in chain[1:] if str(c)) or str(error)
    if any(isinstance(c, ConnectionRefusedError) or "refused" in str(c).lower() for c in chain):
        return RequestError("connection-refused", f"connection refused ({names})")
    if any(isinstance(c, ConnectionResetError | httpx.RemoteProtocolError | httpx.ReadError) for c in chain):
        return RequestError("connection-reset", f"connection reset by the server ({names})")
    return RequestError("connection-error", f"connection error ({names})")


async def _client_request(server, payload: dict) -> dict:
    """A request through datatrove's OpenAI client (non-local endpoints), errors mapped to kinds."""
    import openai

    body = dict(payload)
    model = body.pop("model")
    try:
        response = await server.client.chat.completions.create(model=model, **body)
    except openai.APITimeoutError:
        raise RequestError("timeout", "no answer within request_timeout") from None
    except openai.APIConnectionError as e:
        raise _connection_error(e) from None
    except openai.APIStatusError as e:
        headers = {k.lower(): v for k, v in e.response.headers.items()}
        label = "BadRequestError" if e.status_code == 400 else f"HTTP {e.status_code}"
        raise RequestError(
            f"http-{e.status_code}",
            f"{label} from the server: {e.message[:300]}",
            retry_after=_retry_after(headers),
        ) from None
    choice = response.choices[0]
    return {
        "choices": [
            {"message": {"content": choice.message.content or ""}, "finish_reason": choice.finish_reason}
        ],
        "usage": response.usage.model_dump() if response.usage is not None else {},
    }


async def send_request(runner, server, payload: dict, semaphore: asyncio.Semaphore) -> InferenceResult:
    """Replacement of ``InferenceRunner._send_request`` (datatrove 0.10): one attempt, bounded by
    ``request_timeout``, errors raised as :class:`RequestError` with their kind, counted by the runner's
    :class:`CircuitBreaker` (which raises :class:`EndpointUnavailable` once tripped)."""
    payload["model"] = runner.config.model_name_or_path
    for key, value in runner.config.default_generation_params.items():
        payload.setdefault(key, value)
    breaker: CircuitBreaker = runner.breaker
    timeout = runner.config.request_timeout
    async with semaphore:
        breaker.check()
        try:
            ready = server._server_ready  # vllm/sglang: wait until the server is up (not timed)
            if not ready.done() or ready.exception() is not None:
                await ready
            if getattr(server, "client", None) is not None:
                response = await asyncio.wait_for(_client_request(server, payload), timeout)
            else:
                url = server.get_base_url().rstrip("/") + "/v1/chat/completions"
                status, headers, body = await asyncio.wait_for(http_post(url, payload), timeout)
                _raise_for_status(status, headers, body)
                try:
                    response = json.loads(body)
                    response["choices"][0]["message"]
                except (ValueError, KeyError, IndexError, TypeError) as e:
                    raise RequestError("bad-body", f"unparsable answer body ({e}): {body[:200]!r}") from None
        except asyncio.TimeoutError:
            error = RequestError("timeout", f"no answer within request_timeout={timeout:g}s")
            breaker.failure(error)
            breaker.check()
            raise error from None
        except RequestError as error:
            breaker.failure(error)
            breaker.check()
            raise
        breaker.success()
    choice = response["choices"][0]
    usage = response.get("usage") or {}
    runner.stat_update("prompt_tokens", value=usage.get("prompt_tokens", 0) or 0, unit="request")
    runner.stat_update("completion_tokens", value=usage.get("completion_tokens", 0) or 0, unit="request")
    runner.stat_update("successful_requests", value=1, unit="request")
    runner.metrics.add_metrics(
        tokens_input=usage.get("prompt_tokens", 0) or 0,
        tokens_output=usage.get("completion_tokens", 0) or 0,
        requests=1,
        successful_requests=1,
    )
    message = choice.get("message") or {}
    return InferenceResult(
        text=message.get("content") or "",
        finish_reason=choice.get("finish_reason") or "",
        usage=usage,
        reasoning=message.get("reasoning") or message.get("reasoning_content") or "",
    )


# --------------------------------------------------------------------------- #
# The inference runner with the replacements above
# --------------------------------------------------------------------------- #


class MpGIInferenceRunner(InferenceRunner):
    """datatrove's ``InferenceRunner`` with the replacements of :data:`PATCHES`; constructed like it.

    - the request cache is a :class:`WalRequestCache`, checkpoints go through :class:`SyncCheckpointManager`,
      and the reader hands over documents in batches of :attr:`read_batch` (datatrove makes a thread hop
      per document);
    - for a non-local ``endpoint`` datatrove talks through the OpenAI client, whose base URL must end
      in ``/v1`` while its readiness probe appends ``/v1/models`` to the same URL: the config carries
      the server root and the client gets ``<root>/v1``;
    - the API key is read from the environment variable ``api_key_env`` inside the task, so that it is
      never pickled into the pipeline (Slurm and Ray executors write the pipeline to disk);
    - each request is one attempt bounded by ``request_timeout`` with a labelled error, counted by a
      :class:`CircuitBreaker` that stops the stage after ``circuit_breaker`` consecutive connection
      failures (:func:`send_request`); the OpenAI client's own retries are off.

    Args (besides ``InferenceRunner``'s):
        api_key_env: name of the environment variable holding the endpoint's API key, or ``None``.
        circuit_breaker: consecutive connection failures that stop the stage.
        backend: the recipe backend's name (for error messages).
    """

    read_batch = 256  # documents fetched from the reader per thread hop

    def __init__(
        self,
        *args,
        api_key_env: str | None = None,
        circuit_breaker: int = 5,
        backend: str = "<name>",
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.backend = backend
        self.api_key_env = api_key_env
        self.circuit_breaker = circuit_breaker
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

    async def run_async(self, data_gen, rank: int = 0) -> None:
        """datatrove's loop; when the circuit breaker trips, the documents in flight all end with
        :class:`EndpointUnavailable`: one is raised, the others are not "never retrieved" noise."""
        loop = asyncio.get_running_loop()

        def handler(loop, context):
            if not isinstance(context.get("exception"), EndpointUnavailable):
                loop.default_exception_handler(context)

        loop.set_exception_handler(handler)
        await super().run_async(data_gen, rank)

    async def _send_request(self, server, payload: dict, semaphore: asyncio.Semaphore) -> InferenceResult:
        """One attempt with truthful error kinds and the circuit breaker (:func:`send_request`)."""
        return await send_request(self, server, payload, semaphore)

    def _init_server(self, rank: int):
        server = super()._init_server(rank)
        self.breaker = CircuitBreaker(
            endpoint=getattr(server, "endpoint_url", None) or f"{self.config.server_type} server",
            threshold=self.circuit_breaker,
            request_timeout=self.config.request_timeout,
            backend=self.backend,
        )
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
            # one attempt per call: retries, Retry-After and the circuit breaker are MpGI's
            server.client = client.with_options(max_retries=0, timeout=self.config.request_timeout + 5)
        return server


# --------------------------------------------------------------------------- #
# Task logs: stderr level and operational errors
# --------------------------------------------------------------------------- #


def _stderr_filter(record: dict[str, Any]) -> bool:
    exc = record.get("exception")
    if exc is not None and exc.type is not None and issubclass(exc.type, ServerError):
        return False  # the CLI prints it as one line; the task log file keeps the traceback
    return True


def set_stderr_level(level: str | None) -> None:
    """Level of datatrove's stderr log lines in this process and its workers (``None``: datatrove's)."""
    if level is None:
        os.environ.pop(STDERR_LEVEL_ENV, None)
    else:
        os.environ[STDERR_LEVEL_ENV] = level
    install_log_filter()
    import datatrove.utils.logging as dt_logging

    dt_logging.setup_default_logger()


def install_log_filter() -> None:
    """Make datatrove's stderr log lines follow :data:`STDERR_LEVEL_ENV` (``WARNING`` for ``-q`` and
    ``--no-progress``, ``ERROR`` for ``-qq``) and hide tracebacks of operational errors on stderr."""
    import datatrove.executor.base as executor_base
    import datatrove.utils.logging as dt_logging

    if getattr(dt_logging, "_hqrs_patched", False):
        return

    def add_task_logger(logging_dir, rank, local_rank=0, node_rank=-1):
        """datatrove's ``add_task_logger`` with the stderr sink's level and filter set."""
        logger = dt_logging.logger
        logger.remove()
        logfile = logging_dir.open(f"logs/task_{rank:05d}.log", "w")
        node_prefix = f"[NODE {node_rank}] " if node_rank != -1 else ""
        fmt = (
            f"{node_prefix}{{time:YYYY-MM-DD HH:mm:ss.SSS}} | <level>{{level: <8}}</level> | "
            "{name}:{function}:{line} - <level>{message}</level>"
        )
        logger.add(
            sys.stderr,
            colorize=dt_logging.DATATROVE_COLORIZE_LOGS,
            level=(os.environ.get(STDERR_LEVEL_ENV) or "INFO") if local_rank == 0 else "ERROR",
            format=fmt,
            filter=_stderr_filter,
        )
        logger.add(logfile, colorize=dt_logging.DATATROVE_COLORIZE_LOG_FILES, level="DEBUG", format=fmt)
        logger.info(f"Launching pipeline for {rank=}")
        return logfile

    def setup_default_logger():
        dt_logging.logger.remove()
        dt_logging.logger.add(
            sys.stderr,
            colorize=dt_logging.DATATROVE_COLORIZE_LOGS,
            level=os.environ.get(STDERR_LEVEL_ENV) or "DEBUG",
            filter=_stderr_filter,
        )

    dt_logging.add_task_logger = add_task_logger
    executor_base.add_task_logger = add_task_logger
    dt_logging.setup_default_logger = setup_default_logger
    dt_logging._hqrs_patched = True
    setup_default_logger()


# --------------------------------------------------------------------------- #
# Child processes die with their parent
# --------------------------------------------------------------------------- #

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> bool:
    """Ask Linux to send this process SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``).

    Returns False where that is not available (not Linux); then a ``kill -9`` of the parent can still
    leave children behind, as before."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    # the parent may have died between fork and prctl: then we are already an orphan
    return os.getppid() != 1


def install_child_reaper() -> None:
    """Children that datatrove starts (the ``multiprocess.Manager`` server of ``LocalPipelineExecutor``,
    pool workers) die with the process that started them: forked ones through ``register_after_fork``,
    spawned ones when they import this module to unpickle the pipeline."""
    if getattr(install_child_reaper, "_done", False):
        return
    install_child_reaper._done = True
    multiprocess.util.register_after_fork(install_child_reaper, lambda _: die_with_parent())
    if multiprocess.parent_process() is not None:  # a spawned multiprocess child
        die_with_parent()
