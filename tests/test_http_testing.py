"""The core loopback chat server (hqrs.dataset_builder.http_testing) on its own, and MpGI's answers on top."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from hqrs.dataset_builder.http_testing import LoopbackChatServer, describe_responder
from hqrs.dataset_builder.mpgi.loopback import LoopbackServer, echo_responder


def _chat(url: str, text: str) -> tuple[int, dict]:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}).encode()
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback)
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_core_server_answers_with_its_responder_and_injects_faults():
    plan = lambda payload, attempt: "503" if attempt == 0 else None  # noqa: E731
    with LoopbackChatServer(
        responder=lambda payload: f"seen {len(payload['messages'])}", plan=plan
    ) as server:
        assert _chat(server.url, "hello") == (503, {"error": {"message": "injected 503"}})
        status, answer = _chat(server.url, "hello")
    assert status == 200 and answer["choices"][0]["message"]["content"] == "seen 1"
    assert answer["usage"] == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    assert server.total_answered == 1 and sum(server.received.values()) == 2 and server.faults["503"] == 1


def test_core_default_is_a_description_and_mpgi_server_defaults_to_echo():
    # an integration prompt: the core server describes, MpGI's server answers caption JSON from the rule
    prompt = '[rule] (rule): Two ships. A harbor.\nReturn {"captions": [...]}\n- 1 short caption'
    with LoopbackChatServer() as core, LoopbackServer() as mpgi:
        core_answer = _chat(core.url, prompt)[1]["choices"][0]["message"]["content"]
        mpgi_answer = _chat(mpgi.url, prompt)[1]["choices"][0]["message"]["content"]
    payload = {"messages": [{"role": "user", "content": prompt}]}
    assert core_answer == describe_responder(payload) != mpgi_answer
    assert mpgi_answer == echo_responder(payload)
    assert json.loads(mpgi_answer) == {
        "captions": [{"text": "Two ships.", "length": "short", "sources": ["rule"]}]
    }
    assert isinstance(mpgi, LoopbackChatServer)


def test_mpgi_server_takes_another_responder():
    with LoopbackServer(latency=0.0, responder=lambda payload: "custom") as server:
        assert _chat(server.url, "x")[1]["choices"][0]["message"]["content"] == "custom"
