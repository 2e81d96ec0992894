"""MpGI engine end to end through real HTTP on loopback: datatrove InferenceRunner stages against
:class:`LoopbackServer` (an OpenAI-compatible server), failure injection, retry of failed records,
and resume after ``kill -9`` counted on the server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from hqrs.dataset_builder.http_testing import payload_hash
from hqrs.dataset_builder.mpgi import iter_results, load_recipe, run_mpgi, run_status
from hqrs.dataset_builder.mpgi.loopback import LoopbackServer, echo_responder, prompt_text
from hqrs.dataset_builder.mpgi.recipe import recipe_from_dict
from tests.mpgi_fixtures import index_images, loop_recipe, make_records, site_of

pytestmark = pytest.mark.usefixtures("loopback_and_unix_sockets")


def test_offline_recipe_runs_without_server(tmp_path):
    records = make_records(tmp_path / "img", 12)
    report = run_mpgi(records + records[:2], load_recipe("offline"), tmp_path / "run", progress=False)
    assert (report.ok, report.failed, report.duplicates) == (12, 0, 2)
    results = list(iter_results(tmp_path / "run"))
    assert sorted(r.image_id for r in results) == sorted(r.image_id for r in records)
    for r in results:
        assert [c.length for c in r.captions] == ["short"] * 2 + ["medium"] * 2 + ["long"] * 2
        assert len({c.text for c in r.captions}) == 6
        assert all(c.sources == ["rule"] for c in r.captions)
    again = run_mpgi(records, load_recipe("offline"), tmp_path / "run", progress=False)
    assert (again.skipped, again.processed, again.new_pass) == (12, 0, None)
    # deterministic: a fresh run gives the same captions
    run_mpgi(records, load_recipe("offline"), tmp_path / "run2", progress=False)
    first = {r.image_id: [c.text for c in r.captions] for r in results}
    assert first == {r.image_id: [c.text for c in r.captions] for r in iter_results(tmp_path / "run2")}


def test_a_pass_interrupted_while_being_written_is_not_a_pass(tmp_path):
    """Ctrl-C while a new pass's input is written leaves only a '.NNNN.partial' folder: status and the
    next run ignore it, and the next run writes the pass anew."""
    from hqrs.dataset_builder.mpgi.engine import run_status

    records = make_records(tmp_path / "img", 4)
    run_mpgi(records[:2], load_recipe("offline"), tmp_path / "run", progress=False)
    partial = tmp_path / "run" / "passes" / ".0001.partial" / "input"
    partial.mkdir(parents=True)
    (partial / "00000.jsonl").write_text('{"id": "half')  # no pass.json: the write was cut off
    assert run_status(tmp_path / "run")  # reads the run without tripping on it
    report = run_mpgi(records, load_recipe("offline"), tmp_path / "run", progress=False)
    assert (report.ok, report.new_pass, report.skipped) == (4, 1, 2)
    assert sorted(p.name for p in (tmp_path / "run" / "passes").iterdir()) == ["0000", "0001"]


def test_end_to_end_provenance_and_manifest(tmp_path):
    records = make_records(tmp_path / "img", 6)
    index_images(records)
    with LoopbackServer() as server:
        recipe = recipe_from_dict(loop_recipe(server.url))
        report = run_mpgi(records, recipe, tmp_path / "run", progress=False)
        # 3 generator requests + 1 integration request per image, nothing else
        assert sum(server.received.values()) == 6 * 4
    assert (report.ok, report.failed) == (6, 0)
    assert report.prompt_tokens > 0 and report.completion_tokens > 0
    image_payloads = [p for p in server.payloads if isinstance(p["messages"][0]["content"], list)]
    assert len(image_payloads) == 6 * 3
    assert all(
        p["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
        for p in image_payloads
    )
    for result in iter_results(tmp_path / "run"):
        gens = [p.generator for p in result.perspectives]
        assert gens == ["rule", "relay", "scene#1", "scene#2"]
        assert all(
            p.model == "loopback" and p.prompt_id.startswith("perspective.jinja@")
            for p in result.perspectives[1:]
        )
        assert len(result.captions) == 6
        assert all(set(c.sources) <= set(gens) and c.sources for c in result.captions)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["recipe_hash"] == recipe.hash()
    assert manifest["models"] == {"m": "loopback"}
    assert {"datatrove", "transformers", "python"} <= set(manifest["packages"])
    assert manifest["totals"]["completion_tokens"] == report.completion_tokens > 0
    assert manifest["passes"][0]["summary"]["seconds"] > 0
    status = run_status(tmp_path / "run")
    assert status["passes"][0]["stages"]["gen:m"] == {"done": 6, "failed": 0, "pending": 0}
    with pytest.raises(ValueError, match="was made with recipe"):
        run_mpgi(records, load_recipe("offline"), tmp_path / "run", progress=False)


def answered_for(server: LoopbackServer, site: int) -> int:
    """Answers the server gave to requests about the record of ``site``."""
    keys = {payload_hash(p) for p in server.payloads if site_of(p) == site}
    return sum(server.answered[k] for k in keys)


def test_failures_are_retried_bounded_marked_and_rerun(tmp_path):
    records = make_records(tmp_path / "img", 7)
    index_images(records)
    faults = {0: "500", 1: "sleep:3", 2: "reset", 3: "bad-http-json", 4: "empty", 5: "503"}

    def plan(payload, attempt):
        site = site_of(payload)
        if site == 6:  # always failing: exhausts the retries
            return "500"
        if site in faults and attempt == 0 and "captions" not in prompt_text(payload):
            return faults[site]
        return None

    with LoopbackServer(plan=plan) as server:
        recipe = recipe_from_dict(loop_recipe(server.url))
        report = run_mpgi(records, recipe, tmp_path / "run", progress=False)
        assert (report.ok, report.failed) == (6, 1)
        assert {"500", "sleep", "reset", "bad-http-json", "empty", "503"} <= set(server.faults)
        failed = [r for r in iter_results(tmp_path / "run") if r.status == "failed"]
        assert [r.image_id for r in failed] == [records[6].image_id]
        assert "after 3 attempts" in failed[0].error and failed[0].captions == []
        # the failed record's requests were never answered (a request of another record that timed out on
        # the client may still be answered late by the server, so only this record's answers are counted)
        assert answered_for(server, site=6) == 0
        # the server heals; a rerun retries only the failed record. A longer timeout for it (an operational
        # setting, same run directory): with 1 s a loaded machine can time a request out, and its retry
        # (another seed) would be a second answered request
        server.plan = None
        patient = recipe_from_dict(loop_recipe(server.url, request_timeout=30.0))
        sent_before = len(server.payloads)
        again = run_mpgi(records, patient, tmp_path / "run", progress=False)
        assert (again.ok, again.failed, again.skipped, again.processed) == (7, 0, 6, 1)
        assert answered_for(server, site=6) == 4
        assert {site_of(p) for p in server.payloads[sent_before:]} == {6}  # nothing else was sent again
    results = list(iter_results(tmp_path / "run"))
    assert len(results) == 7 and all(r.status == "ok" for r in results)


def test_repair_and_fact_filter(tmp_path):
    records = make_records(tmp_path / "img", 2)  # site0 has one ship, site1 two ships

    def responder(payload):
        text = prompt_text(payload)
        if "could not be used" in text:  # the repair prompt
            return echo_responder({"messages": [payload["messages"][0]]})
        if '"captions"' in text and "rejected" not in text:
            if "site0" in text:
                return "Sure! Here are the captions: {captions: oops"
            good = json.loads(echo_responder(payload))["captions"]
            good[0]["text"] = "Seven ships and a plane in the harbor."  # contradicts count and exhaustive
            return "```json\n" + json.dumps({"captions": good}) + "\n```"
        return echo_responder(payload)

    with LoopbackServer(responder=responder) as server:
        recipe = recipe_from_dict(loop_recipe(server.url))
        report = run_mpgi(records, recipe, tmp_path / "run", progress=False)
    assert (report.ok, report.repairs, report.fact_rejected, report.regenerations) == (2, 1, 1, 1)
    for r in iter_results(tmp_path / "run"):
        assert len(r.captions) == 6
        assert not any("Seven" in c.text for c in r.captions)


@pytest.mark.parametrize("stage_budget", [5])
def test_kill9_resume_does_not_resend_answered_requests(tmp_path, stage_budget):
    records = make_records(tmp_path / "img", 10)
    (tmp_path / "records.jsonl").write_text("\n".join(json.dumps(r.to_dict()) for r in records))
    with LoopbackServer(hold_after=17) as server:
        (tmp_path / "recipe.json").write_text(
            json.dumps(loop_recipe(server.url, max_concurrent=4, request_timeout=30))
        )
        script = (
            "import json,sys\n"
            "from hqrs.dataset_builder.records import ImageRecord\n"
            "from hqrs.dataset_builder.mpgi import run_mpgi\n"
            "from hqrs.dataset_builder.mpgi.recipe import recipe_from_dict\n"
            "d=sys.argv[1]\n"
            "recs=[ImageRecord.from_dict(json.loads(l)) for l in open(d+'/records.jsonl')]\n"
            "r=run_mpgi(recs, recipe_from_dict(json.load(open(d+'/recipe.json'))), d+'/run', progress=False)\n"
            "print('REPORT', r.ok, r.failed)\n"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        deadline = time.time() + 120
        while server.held < 1 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert server.held >= 1, proc.stdout.read().decode()[-3000:] if proc.poll() is not None else "no hold"
        time.sleep(1.0)  # answered requests reach datatrove's request cache
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        answered_first = dict(server.answered)
        assert sum(answered_first.values()) == 17
        server.release(drop_held=True)
        time.sleep(0.2)
        out = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=300
        )
        assert "REPORT 10 0" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
        # no request answered before the kill was answered again
        assert all(n == 1 for n in server.answered.values()), [k for k, n in server.answered.items() if n > 1]
        assert sum(server.answered.values()) == 10 * 4
    results = list(iter_results(tmp_path / "run"))
    assert sorted(r.image_id for r in results) == sorted(r.image_id for r in records)
    assert all(r.status == "ok" and len(r.captions) == 6 for r in results)


@pytest.mark.parametrize(
    ("host", "suffix"),
    [("127.0.0.1", ""), ("127.0.0.1", "/v1/"), ("127.0.0.2", ""), ("127.0.0.2", "/v1")],
    ids=["local-root", "local-v1", "remote-root", "remote-v1"],
)
def test_endpoint_url_root_or_v1(tmp_path, monkeypatch, host, suffix):
    """``endpoint_url`` may be the server root or its ``/v1`` base URL. 127.0.0.1 goes through datatrove's
    raw HTTP helper; any other host (127.0.0.2, still loopback) through the OpenAI client, which gets
    the API key from the environment variable the recipe names."""
    monkeypatch.setenv("HQRS_TEST_ENDPOINT_KEY", "sk-test-123")
    records = make_records(tmp_path / "img", 3)
    with LoopbackServer(host=host) as server:
        data = loop_recipe(server.url + suffix, api_key_env="HQRS_TEST_ENDPOINT_KEY")
        data["generators"] = data["generators"][:1]  # relay (text + image) only
        data["integrator"] = {"backend": "template"}
        report = run_mpgi(records, recipe_from_dict(data), tmp_path / "run", progress=False)
        assert (report.ok, report.failed) == (3, 0), report.errors
        assert sum(server.received.values()) == 3
    expected = "" if host == "127.0.0.1" else "Bearer sk-test-123"
    assert dict(server.authorizations) == {expected: 3}
    assert all(r.perspectives[1].text.startswith("An aerial view") for r in iter_results(tmp_path / "run"))


def test_endpoint_api_key_env_missing_is_reported(tmp_path, monkeypatch):
    monkeypatch.delenv("HQRS_TEST_ENDPOINT_KEY", raising=False)
    records = make_records(tmp_path / "img", 1)
    with LoopbackServer(host="127.0.0.2") as server:
        data = loop_recipe(server.url, api_key_env="HQRS_TEST_ENDPOINT_KEY")
        data["integrator"] = {"backend": "template"}
        with pytest.raises(Exception, match="set the environment variable HQRS_TEST_ENDPOINT_KEY"):
            run_mpgi(records, recipe_from_dict(data), tmp_path / "run", progress=False)
        assert sum(server.received.values()) == 0
