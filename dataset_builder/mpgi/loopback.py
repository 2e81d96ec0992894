"""The loopback chat server of :mod:`hqrs.dataset_builder.http_testing` answering as MpGI's models would.

:class:`LoopbackServer` is :class:`~hqrs.dataset_builder.http_testing.LoopbackChatServer` with
:func:`echo_responder` as its default: integration prompts get valid JSON captions built from the rule
perspective, other prompts a one-sentence description. Fault plans, counters and holding are the core
server's (see its module docstring):

    >>> with LoopbackServer(latency=0.0) as server:  # doctest: +SKIP
    ...     server.url   # 'http://127.0.0.1:PORT' -> recipe backends.<name>.endpoint_url
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable

from ..http_testing import FaultPlan, LoopbackChatServer, describe_responder, payload_hash, prompt_text

__all__ = ["FaultPlan", "LoopbackServer", "echo_responder", "main", "payload_hash", "prompt_text"]


def echo_responder(payload: dict) -> str:
    """Default answers: integration prompts get valid JSON captions built from the rule description's
    sentences (so they agree with the facts); other prompts get a one-sentence description."""
    text = prompt_text(payload)
    if '"captions"' in text:
        match = re.search(r"^\[rule\] \(rule\): (.*)$", text, re.MULTILINE)
        rule = match.group(1) if match else "A remote sensing image."
        sentences = [s.strip() for s in re.split(r"(?<=\.)\s+", rule) if s.strip()]
        names = re.findall(r"^\[([^\]]+)\] \(", text, re.MULTILINE)
        wanted = re.findall(r"^- (\d+) (short|medium|long) caption", text, re.MULTILINE) or [
            ("2", "short"),
            ("2", "medium"),
            ("2", "long"),
        ]
        caps = []
        for count, length in wanted:
            for k in range(int(count)):
                n = {"short": 1, "medium": 2, "long": 4}[length]
                start = k % max(1, len(sentences))
                body = " ".join((sentences[start:] + sentences[:start])[:n])
                caps.append({"text": body, "length": length, "sources": names[:2]})
        return json.dumps({"captions": caps})
    return describe_responder(payload)


class LoopbackServer(LoopbackChatServer):
    """:class:`~hqrs.dataset_builder.http_testing.LoopbackChatServer` answering with :func:`echo_responder`
    unless another ``responder`` is given; the other arguments are the core server's."""

    def __init__(self, *args, responder: Callable[[dict], str] = echo_responder, **kwargs):
        super().__init__(*args, responder=responder, **kwargs)


def main(argv: list[str] | None = None) -> int:
    """Serve in a process of its own (benchmarks: the server must not share the client's GIL).

    ``python -m hqrs.dataset_builder.mpgi.loopback --latency 0.05`` prints ``{"port": N}``, serves until
    its stdin closes, then prints ``{"answered", "received", "first_request_at", "last_answer_at"}``
    (``time.monotonic()`` values, comparable across processes on one machine) and exits.
    """
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds every answer waits")
    args = parser.parse_args(argv)
    with LoopbackServer(latency=args.latency) as server:
        print(json.dumps({"port": server.port}), flush=True)
        sys.stdin.read()  # until the parent closes our stdin
        stats = {
            "answered": server.total_answered,
            "received": sum(server.received.values()),
            "first_request_at": server.first_request_at,
            "last_answer_at": server.last_answer_at,
        }
    print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
