"""An OpenAI-compatible chat server on 127.0.0.1 for tests and benchmarks (standard library only).

It answers ``POST /v1/chat/completions`` and ``GET /v1/models`` with ``Connection: close`` (what
datatrove's client sends), counts every request by payload hash, and injects failures on demand:

    >>> with LoopbackChatServer(latency=0.0, responder=lambda payload: "An answer.") as server:  # doctest: +SKIP
    ...     server.url   # 'http://127.0.0.1:PORT' -> recipe backends.<name>.endpoint_url

A *fault plan* is a callable ``plan(payload, attempt) -> str | None`` where ``attempt`` counts earlier
requests with the same (seed-less) payload. It returns ``None`` (answer normally) or one of:
``"500"``, ``"503"``, ``"400"``, ``"sleep:SECONDS"`` (answer late), ``"reset"`` (close the connection
without answering), ``"bad-http-json"`` (200 with an unparsable body), ``"empty"`` (empty content),
``"text:..."`` (this content), ``"429:SECONDS"`` (429 Too Many Requests with ``Retry-After: SECONDS``),
``"finish:REASON:TEXT"`` (this content with this ``finish_reason``).

Generic plumbing of the core layer: it knows nothing of MpGI prompts.
:mod:`hqrs.dataset_builder.mpgi.loopback` adds the answers an MpGI run expects (integration JSON built
from the rule perspective) and ``python -m hqrs.dataset_builder.mpgi.loopback``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

FaultPlan = Callable[[dict, int], "str | None"]


def payload_hash(payload: dict, drop_seed: bool = False) -> str:
    data = {k: v for k, v in payload.items() if not (drop_seed and k == "seed")}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def prompt_text(payload: dict) -> str:
    """All text of the payload's messages, concatenated."""
    parts = []
    for message in payload.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(c.get("text", "") for c in content if isinstance(c, dict))
    return "\n".join(parts)


def describe_responder(payload: dict) -> str:
    """Default answer: a one-sentence image description that differs per prompt."""
    digest = hashlib.sha256(prompt_text(payload).encode()).hexdigest()[:6]
    return f"An aerial view with fields, roads and buildings (view {digest})."


class LoopbackChatServer:
    """Threaded asyncio HTTP server; see the module docstring.

    Args:
        latency: seconds every answer waits (the benchmark's fixed latency).
        responder: ``payload -> content`` of normal answers.
        plan: fault plan, see the module docstring.
        hold_after: after this many answered requests, hold further requests (no answer) until
            :meth:`release` — used to ``kill -9`` a client at a known point.
        host: loopback address to listen on (``127.0.0.2`` counts as a remote host for datatrove,
            which then talks through the OpenAI client).
    """

    def __init__(
        self,
        latency: float = 0.0,
        responder: Callable[[dict], str] = describe_responder,
        plan: FaultPlan | None = None,
        hold_after: int | None = None,
        host: str = "127.0.0.1",
    ):
        self.latency = latency
        self.responder = responder
        self.plan = plan
        self.hold_after = hold_after
        self.answered: Counter[str] = Counter()  # payload hash → successful answers
        self.received: Counter[str] = Counter()  # payload hash → requests received
        self.attempts: Counter[str] = Counter()  # seed-less payload hash → requests received
        self.faults: Counter[str] = Counter()
        self.held = 0
        self.first_request_at: float | None = None  # time.monotonic() of the first chat request
        self.last_answer_at: float | None = None  # ... and of the last successful answer
        self.payloads: list[dict] = []
        self.arrivals: list[tuple[float, dict]] = []  # (time.monotonic(), payload) of every chat request
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._release: asyncio.Event | None = None
        self._drop_held = False
        self.port: int | None = None
        self.host = host
        self.authorizations: Counter[str] = Counter()  # Authorization header of chat requests ("" if none)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def total_answered(self) -> int:
        return sum(self.answered.values())

    # ------------------------------------------------------------------ #
    def __enter__(self) -> LoopbackChatServer:
        ready = threading.Event()

        def main():
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._release = asyncio.Event()
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, self.host, 0, backlog=1024)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()
            pending = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._server.close()
            self._loop.run_until_complete(self._server.wait_closed())
            self._loop.close()

        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self.release(drop_held=True)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def release(self, drop_held: bool = True) -> None:
        """Stop holding: held requests are dropped (connection closed, never answered) by default."""
        self.hold_after = None
        self._drop_held = drop_held
        if self._loop is not None and self._release is not None:
            self._loop.call_soon_threadsafe(self._release.set)

    # ------------------------------------------------------------------ #
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = (await reader.readline()).decode("latin-1").strip()
            if not request_line:
                return
            method, path, _ = (request_line.split(" ", 2) + ["", ""])[:3]
            length, auth = 0, ""
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
                elif name.strip().lower() == "authorization":
                    auth = value.strip()
            body = await reader.readexactly(length) if length else b""
            if method == "GET" and path.rstrip("/") == "/v1/models":
                await self._send(
                    writer, 200, {"object": "list", "data": [{"id": "loopback", "object": "model"}]}
                )
            elif method == "POST" and path == "/v1/chat/completions":
                with self._lock:
                    self.authorizations[auth] += 1
                await self._chat(writer, json.loads(body or b"{}"))
            else:
                await self._send(writer, 404, {"error": f"no route {method} {path}"})
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            try:
                writer.close()
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def _chat(self, writer: asyncio.StreamWriter, payload: dict) -> None:
        key, base = payload_hash(payload), payload_hash(payload, drop_seed=True)
        with self._lock:
            if self.first_request_at is None:
                self.first_request_at = time.monotonic()
            self.received[key] += 1
            attempt = self.attempts[base]
            self.attempts[base] += 1
            self.payloads.append(payload)
            self.arrivals.append((time.monotonic(), payload))
            hold = self.hold_after is not None and self.total_answered >= self.hold_after
            if hold:
                self.held += 1
        if hold:
            await self._release.wait()
            if self._drop_held:
                return
        action = self.plan(payload, attempt) if self.plan else None
        if self.latency:
            await asyncio.sleep(self.latency)
        if action is not None:
            with self._lock:
                self.faults[action.split(":")[0]] += 1
        if action in ("500", "503", "400"):
            await self._send(writer, int(action), {"error": {"message": f"injected {action}"}})
            return
        if action and action.startswith("429:"):
            body = json.dumps({"error": {"message": "rate limited"}}).encode()
            await self._send_raw(writer, 429, body, {"Retry-After": action.split(":", 1)[1]})
            return
        if action == "reset":
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        if action == "bad-http-json":
            await self._send_raw(writer, 200, b'{"choices": [ {"message": ')
            return
        if action and action.startswith("sleep:"):
            await asyncio.sleep(float(action.split(":", 1)[1]))
            action = None
        finish = "stop"
        if action and action.startswith("finish:"):
            _, finish, action = action.split(":", 2)
            action = "text:" + action
        if action == "empty":
            content = ""
        elif action and action.startswith("text:"):
            content = action[5:]
        else:
            content = self.responder(payload)
        prompt_tokens = len(prompt_text(payload).split())
        completion_tokens = len(content.split())
        response = {
            "id": f"chatcmpl-{key}",
            "object": "chat.completion",
            "model": payload.get("model", "loopback"),
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        ok = await self._send(writer, 200, response)
        if ok and content:
            with self._lock:
                self.answered[key] += 1
                self.last_answer_at = time.monotonic()

    async def _send(self, writer: asyncio.StreamWriter, status: int, data: Any) -> bool:
        return await self._send_raw(writer, status, json.dumps(data).encode())

    async def _send_raw(
        self, writer: asyncio.StreamWriter, status: int, body: bytes, headers: dict[str, str] | None = None
    ) -> bool:
        reason = {
            200: "OK",
            400: "Bad Request",
            404: "Not Found",
            429: "Too Many Requests",
            500: "Internal Server Error",
        }.get(status, "Error")
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
        ).encode()
        try:
            writer.write(head + body)
            await writer.drain()
            return True
        except (ConnectionError, OSError):
            return False
