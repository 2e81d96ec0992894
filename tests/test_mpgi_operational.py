"""MpGI in production (#13.1-#13.4): fail fast on a dead or absent endpoint (circuit breaker, one
``hqrs: error:`` line), truthful error labels and ``Retry-After``, resume across operational changes,
checked model answers, portable and clean run directories. Real HTTP servers on loopback, no mocks."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hqrs.dataset_builder.mpgi import iter_results, run_mpgi, run_status
from hqrs.dataset_builder.mpgi.engine import MpGIRunError
from hqrs.dataset_builder.mpgi.loopback import LoopbackServer, prompt_text
from hqrs.dataset_builder.mpgi.recipe import recipe_from_dict
from hqrs.dataset_builder.parallel import ExecutorConfigError
from tests.mpgi_fixtures import index_images, loop_recipe, make_records, mpgi_run_argv, site_of

pytestmark = pytest.mark.usefixtures("loopback_and_unix_sockets")


def gen_only(url: str, **backend) -> dict:
    data = loop_recipe(url, **backend)
    data["generators"] = data["generators"][:1]
    data["integrator"] = {"backend": "template"}
    return data


def write_recipe(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hqrs.scripts.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def assert_one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("hqrs: error:")]
    assert len(lines) == 1 and "Traceback" not in stderr and "CancelledError" not in stderr, stderr[-4000:]
    return lines[0]


# --------------------------------------------------------------------------- #
# 13.1 a dead or absent server
# --------------------------------------------------------------------------- #


def test_server_dying_mid_run_stops_the_stage_fast_and_leaves_records_pending(tmp_path):
    """Before: 28 records timed out one by one (127 s with request_timeout 5, retries 2, 4 in flight) and
    ended in a traceback. Now the circuit breaker stops the stage within about one request_timeout."""
    make_records(tmp_path / "img", 40)
    server = LoopbackServer(latency=0.05).__enter__()
    recipe = write_recipe(tmp_path / "r.json", gen_only(server.url, request_timeout=20, max_concurrent=4))
    args = mpgi_run_argv(recipe, tmp_path / "img", tmp_path / "run")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hqrs.scripts.cli", *args, "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while server.total_answered < 10 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    url = server.url
    server.__exit__(None, None, None)
    died = time.monotonic()
    _, err = proc.communicate(timeout=120)
    elapsed = time.monotonic() - died
    assert proc.returncode == 1
    line = assert_one_error_line(err)
    assert url in line and "connection refused" in line and "rerun" in line and "backends.m" in line
    assert elapsed < 20, elapsed  # one request_timeout; before: every record timed out after its retries
    status = run_status(tmp_path / "run")
    gen = status["passes"][0]["stages"]["gen:m"]
    assert gen["failed"] == 0 and gen["done"] >= 10 and gen["pending"] == 40 - gen["done"]
    # the server comes back on another port: the same run directory resumes (#13.2) and finishes
    with LoopbackServer() as again:
        out = cli(
            *args[:-2],
            "--out",
            str(tmp_path / "run"),
            "--set",
            f"backends.m.endpoint_url={again.url}/v1",
            "--no-progress",
        )
        assert out.returncode == 0, out.stderr[-3000:]
        assert sum(again.received.values()) == 40 - gen["done"]
    assert sum(r.status == "ok" for r in iter_results(tmp_path / "run")) == 40


def test_absent_server_is_one_line_before_anything_runs(tmp_path):
    make_records(tmp_path / "img", 3)
    recipe = write_recipe(tmp_path / "r.yaml", gen_only("http://127.0.0.1:9"))
    out = cli(*mpgi_run_argv(recipe, tmp_path / "img", tmp_path / "run"))
    assert out.returncode == 1
    line = assert_one_error_line(out.stderr)
    assert "http://127.0.0.1:9" in line and "not reachable" in line and "is the server running?" in line
    assert not list((tmp_path / "run").rglob("output/*.jsonl"))  # no stage ran


def test_server_that_never_becomes_ready_is_one_line(tmp_path):
    """A server that answers but never reports ready (404 on /v1/models): datatrove's readiness wait gives
    up with a ServerError, shown as one line (its traceback stays in the task log)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        make_records(tmp_path / "img", 2)
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        recipe = write_recipe(
            tmp_path / "r.json", gen_only(url, server_ready_attempts=2, server_ready_delay=0.2)
        )
        out = cli(*mpgi_run_argv(recipe, tmp_path / "img", tmp_path / "run"))
    finally:
        httpd.shutdown()
    assert out.returncode == 1
    line = assert_one_error_line(out.stderr)
    assert "Failed to start EndpointServer" in line and "rerun" in line
    assert "Traceback" in "".join(p.read_text() for p in (tmp_path / "run").rglob("logs/logs/task_*.log"))


def test_hung_server_trips_the_breaker_after_about_one_request_timeout(tmp_path):
    records = make_records(tmp_path / "img", 20)
    with LoopbackServer(hold_after=2) as server:
        recipe = recipe_from_dict(gen_only(server.url, request_timeout=2, max_concurrent=8, retries=3))
        started = time.monotonic()
        with pytest.raises(
            MpGIRunError, match=r"no answer within request_timeout=2s.*raise backends\.m\.request_timeout"
        ):
            run_mpgi(records, recipe, tmp_path / "run", progress=False)
        elapsed = time.monotonic() - started
        received = sum(server.received.values())
    # before: 18 records x 4 attempts x 2 s / 8 in flight = at least 18 s and 74 requests
    assert received <= 2 + 8 + 8, received  # the first wave in flight (and retries sent before the trip)
    assert elapsed < 15, elapsed
    assert run_status(tmp_path / "run")["passes"][0]["stages"]["gen:m"]["failed"] == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2"], ids=["raw-http", "openai-client"])
def test_error_labels_are_truthful_and_retry_after_is_honoured(tmp_path, monkeypatch, host):
    """127.0.0.1 goes through the raw HTTP path, 127.0.0.2 (a "remote" host) through the OpenAI client."""
    monkeypatch.setenv("HQRS_TEST_KEY", "sk-test")
    records = make_records(tmp_path / "img", 4)
    index_images(records)
    faults = {0: "reset", 1: "503", 2: "sleep:3", 3: "429:2"}

    def plan(payload, attempt):
        return faults[site_of(payload)]

    with LoopbackServer(plan=plan, host=host) as server:
        recipe = recipe_from_dict(
            gen_only(server.url, retries=1, circuit_breaker=100, api_key_env="HQRS_TEST_KEY")
        )
        report = run_mpgi(records, recipe, tmp_path / "run", progress=False)
        assert report.failed == 4
        times = [t for t, p in server.arrivals if site_of(p) == 3]
    errors = {r.record.labels[0]: r.error for r in iter_results(tmp_path / "run")}
    assert "connection reset" in errors["site0"] and "timeout" not in errors["site0"]
    assert "HTTP 503" in errors["site1"] and "unrecoverable" not in errors["site1"]
    assert "after 2 attempts" in errors["site1"]
    assert "no answer within request_timeout=1s" in errors["site2"]
    assert "HTTP 429" in errors["site3"]
    assert len(times) == 2 and times[1] - times[0] >= 1.9  # Retry-After: 2 (the backoff is 0.01 s)


@pytest.mark.parametrize(
    ("server", "executor", "missing"), [("vllm", "local", "vllm"), ("sglang", "local", "sglang")]
)
def test_missing_optional_backends_are_one_line_before_the_pass(tmp_path, server, executor, missing):
    import importlib.util

    if importlib.util.find_spec(missing) is not None:
        pytest.skip(f"{missing} is installed here")
    make_records(tmp_path / "img", 1)
    data = {
        "name": "g",
        "backends": {"m": {"server": server, "model": "x"}},
        "generators": [{"name": "g", "backend": "m", "perspective": "scene"}],
    }
    recipe = write_recipe(tmp_path / "r.yaml", data)
    out = cli(*mpgi_run_argv(recipe, tmp_path / "img", tmp_path / "run", "--executor", executor))
    line = assert_one_error_line(out.stderr)
    assert out.returncode == 1 and f"pip install {missing}" in line
    assert not (tmp_path / "run").exists()


def test_missing_ray_is_reported_before_the_pass(tmp_path):
    import importlib.util

    if importlib.util.find_spec("ray") is not None:
        pytest.skip("ray is installed here")
    with pytest.raises(
        ExecutorConfigError, match=r"--executor ray needs Ray in this environment: pip install"
    ):
        run_mpgi(
            make_records(tmp_path / "img", 1),
            recipe_from_dict({"name": "o"}),
            tmp_path / "run",
            executor="ray",
            progress=False,
        )
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- #
# 13.2 resume survives operational changes
# --------------------------------------------------------------------------- #


def test_operational_changes_resume_content_changes_refuse(tmp_path):
    records = make_records(tmp_path / "img", 4)
    index_images(records)
    with LoopbackServer(plan=lambda p, a: "sleep:2" if site_of(p) == 0 else None) as server:
        data = gen_only(server.url, request_timeout=0.5, retries=0)
        first = run_mpgi(records, recipe_from_dict(data), tmp_path / "run", progress=False)
        assert (first.ok, first.failed) == (3, 1)
        # a longer timeout, localhost for 127.0.0.1, /v1, other concurrency and retries: same run directory
        changed = json.loads(json.dumps(data))
        changed["backends"]["m"].update(
            endpoint_url=server.url.replace("127.0.0.1", "localhost") + "/v1",
            request_timeout=5,
            max_concurrent=2,
            retries=1,
            circuit_breaker=3,
        )
        changed["execution"] = {"records_per_chunk": 7}
        again = run_mpgi(records, recipe_from_dict(changed), tmp_path / "run", progress=False)
        assert (again.ok, again.failed, again.skipped, again.processed) == (4, 0, 3, 1)
        for key, value in [("model", "other"), ("max_image_side", 64)]:
            other = json.loads(json.dumps(data))
            other["backends"]["m"][key] = value
            with pytest.raises(
                ValueError, match="models, prompts, sampling, perspectives or the integrator differ"
            ):
                run_mpgi(records, recipe_from_dict(other), tmp_path / "run", progress=False)
        other = json.loads(json.dumps(data))
        other["generators"][0]["sampling"] = {"temperature": 0.1}
        with pytest.raises(ValueError, match="differ"):
            run_mpgi(records, recipe_from_dict(other), tmp_path / "run", progress=False)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    attempts = [a for p in manifest["passes"] for a in p["attempts"]]
    assert [a["settings"]["backends"]["m"]["request_timeout"] for a in attempts] == [0.5, 5.0]
    assert attempts[1]["settings"]["backends"]["m"]["endpoint_url"].startswith("http://localhost:")


# --------------------------------------------------------------------------- #
# 13.3 model answers are checked, not trusted
# --------------------------------------------------------------------------- #


def test_model_answers_are_checked_counted_and_retried(tmp_path, capsys):
    from hqrs.dataset_builder.mpgi.loopback import echo_responder
    from hqrs.scripts.cli import main

    records = make_records(tmp_path / "img", 6)
    huge = " ".join(["field"] * 200_000)
    wordy = " ".join(["field"] * 200)  # a "long" caption is 30-90 words (112 with the tolerance)

    def plan(payload, attempt):
        site, text = site_of(payload), prompt_text(payload)
        integration = '"captions"' in text
        if site == 0 and not integration:
            return "text:" + huge  # a 1.2 MB perspective for max_tokens 256
        if site == 1 and not integration:
            return "text:I'm sorry, but I can't help with that request."
        if site == 2 and not integration:
            return "finish:length:An aerial view of fields and"
        if site in (3, 4) and integration:
            caps = json.loads(echo_responder(payload))["captions"]
            for k, cap in enumerate(caps):
                if cap["length"] == "long" and (site == 4 or k == len(caps) - 1):
                    cap["text"] = wordy
                if site == 4:
                    cap["text"] = wordy
            return "text:" + json.dumps({"captions": caps})
        return None

    with LoopbackServer(plan=plan) as server:
        data = loop_recipe(server.url)
        data["generators"] = data["generators"][:1]
        report = run_mpgi(records, recipe_from_dict(data), tmp_path / "run", progress=False)
        assert (report.ok, report.failed) == (2, 4), report.errors
        by_site = {r.record.labels[0]: r for r in iter_results(tmp_path / "run")}
        assert "answer too long: 1199999 characters for max_tokens=256" in by_site["site0"].error
        assert "refusal" in by_site["site1"].error and "after 3 attempts" in by_site["site1"].error
        assert "truncated answer (finish_reason=length" in by_site["site2"].error
        assert by_site["site3"].status == "ok" and len(by_site["site3"].captions) == 5
        assert all(len(c.text.split()) <= 90 * 1.25 for c in by_site["site3"].captions)
        assert "outside the caption word ranges" in by_site["site4"].error
        assert all(p.text != huge for r in by_site.values() for p in r.perspectives)
        status = run_status(tmp_path / "run")
        assert status["failed_by_reason"] == {
            "too long": 1,
            "refusal": 1,
            "truncated": 1,
            "caption length": 1,
        }
        assert main(["mpgi", "status", str(tmp_path / "run")]) == 0
        assert "failed by reason:" in capsys.readouterr().out
        # the server behaves again: the rerun retries exactly the four failed records
        server.plan = None
        again = run_mpgi(records, recipe_from_dict(data), tmp_path / "run", progress=False)
        assert (again.ok, again.failed, again.processed) == (6, 0, 4)


@pytest.mark.parametrize(
    ("mode", "server_type", "sent"),
    [("json_schema", None, True), ("auto", None, False), ("off", None, False)],
)
def test_structured_output_sends_the_captions_schema(tmp_path, mode, server_type, sent):
    records = make_records(tmp_path / "img", 1)
    with LoopbackServer() as server:
        data = loop_recipe(server.url)
        data["generators"] = data["generators"][:1]
        data["integrator"]["structured_output"] = mode
        data["integrator"]["sampling"] = {"max_tokens": 512, "response_format": {"type": "json_object"}}
        report = run_mpgi(records, recipe_from_dict(data), tmp_path / "run", progress=False)
        assert report.ok == 1, report.errors
        formats = [p.get("response_format") for p in server.payloads if '"captions"' in prompt_text(p)]
    if sent:
        fmt = formats[0]
        assert fmt["type"] == "json_schema"
        schema = fmt["json_schema"]["schema"]
        assert schema["required"] == ["captions"]
        assert schema["properties"]["captions"]["items"]["properties"]["sources"]["items"]["enum"] == [
            "rule",
            "relay",
        ]
    else:
        assert formats == [{"type": "json_object"}]  # the recipe's own setting, for servers without schemas


def test_auto_structured_output_is_json_schema_for_vllm():
    from hqrs.dataset_builder.mpgi.steps import captions_response_format

    fmt = captions_response_format({"short": 2, "long": 0}, ["rule", "g"])
    assert fmt["json_schema"]["schema"]["properties"]["captions"]["items"]["properties"]["length"] == {
        "enum": ["short"]
    }
    assert fmt["json_schema"]["schema"]["properties"]["captions"]["maxItems"] == 2


# --------------------------------------------------------------------------- #
# 13.4 run directories are portable and clean
# --------------------------------------------------------------------------- #


def test_relative_source_run_builds_from_another_directory(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    b.mkdir()
    make_records(a / "imgs", 5)
    out = cli("mpgi", "run", "--source", "imgs", "--out", "run", "-q", cwd=a)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "datatrove" not in out.stderr and "| INFO" not in out.stderr  # -q: no loguru lines (35+ before)
    built = cli("build", "--from-run", str(a / "run"), "--out", "ds", "-q", cwd=b)
    assert built.returncode == 0, built.stderr[-3000:]
    import pyarrow.parquet as pq

    rows = sum(pq.read_metadata(p).num_rows for p in (b / "ds").rglob("*.parquet"))
    assert rows >= 5, built.stdout + built.stderr


def test_no_progress_and_qq_silence_datatrove(tmp_path):
    make_records(tmp_path / "imgs", 2)
    loud = cli("mpgi", "run", "--source", str(tmp_path / "imgs"), "--out", str(tmp_path / "r1"))
    assert "datatrove" in loud.stderr and len(loud.stderr.splitlines()) > 20
    for flags, name in ((["--no-progress"], "r2"), (["-qq"], "r3")):
        quiet = cli("mpgi", "run", *flags, "--source", str(tmp_path / "imgs"), "--out", str(tmp_path / name))
        assert quiet.returncode == 0 and "datatrove" not in quiet.stderr, quiet.stderr[-2000:]


def test_stale_build_temp_files_are_removed(tmp_path):
    from hqrs.dataset_builder.build_folder import BuildFolder

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "data").mkdir()
    stale = tmp_path / "data" / f".train-00000-of-00001.parquet.{dead.pid}.tmp"
    live = tmp_path / "data" / f".train-00000-of-00001.parquet.{__import__('os').getpid()}.tmp"
    stale.write_bytes(b"PAR1")
    live.write_bytes(b"PAR1")
    assert BuildFolder(tmp_path).remove_stale_tmp() == 1
    assert not stale.exists() and live.exists()


def test_stale_run_dir_temp_files_are_removed(tmp_path):
    from hqrs.dataset_builder.mpgi import load_recipe

    records = make_records(tmp_path / "img", 2)
    run_mpgi(records, load_recipe("offline"), tmp_path / "run", progress=False)
    stale = [
        tmp_path / "run" / ".manifest.json.k1x2.tmp",
        tmp_path / "run" / "passes" / "0000" / ".DONE.json.a8b.tmp",
    ]
    for path in stale:
        path.write_text("{")
    run_mpgi(records, load_recipe("offline"), tmp_path / "run", progress=False)
    assert not any(p.exists() for p in stale)


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            pass
    return out | {g for c in list(out) for g in _children(c)}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_kill9_during_a_stage_leaves_no_orphans(tmp_path):
    import os
    import signal

    make_records(tmp_path / "img", 6)
    with LoopbackServer(hold_after=2) as server:
        recipe = write_recipe(tmp_path / "r.json", gen_only(server.url, request_timeout=60))
        argv = mpgi_run_argv(
            recipe, tmp_path / "img", tmp_path / "run", "--workers", "2", "--tasks", "2", "-q"
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "hqrs.scripts.cli", *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 120
        while server.held < 1 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert server.held >= 1
        children = _children(proc.pid)
        assert children  # datatrove's Manager server and the pool workers
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 10
        alive = children
        while alive and time.time() < deadline:
            alive = {
                c
                for c in alive
                if Path(f"/proc/{c}").exists() and "Z" not in Path(f"/proc/{c}/stat").read_text().split()[2]
            }
            time.sleep(0.1)
        assert not alive, [Path(f"/proc/{c}/cmdline").read_bytes()[:200] for c in alive]


def test_datatrove_compat_version_range():
    """The replaced datatrove internals exist with the signatures the compat module was written for."""
    import inspect

    from datatrove.pipeline.inference.run_inference import InferenceRunner

    from hqrs.dataset_builder.mpgi import datatrove_compat

    datatrove_compat.check_version()
    assert list(inspect.signature(InferenceRunner._send_request).parameters) == [
        "self",
        "server",
        "payload",
        "semaphore",
    ]
    with pytest.raises(
        RuntimeError, match=r"datatrove 0\.11\.0 is installed .* tested with >=0\.10\.0,<0\.11\.0"
    ):
        datatrove_compat.check_version("0.11.0")
    with pytest.raises(RuntimeError):
        datatrove_compat.check_version("0.9.3")
    assert datatrove_compat.check_version("0.10.7rc1") == "0.10.7rc1"


def test_truncated_answers_are_rejected_unless_the_recipe_accepts_them():
    from datatrove.pipeline.inference.run_inference import InferenceResult

    from hqrs.dataset_builder.mpgi.recipe import AnswerChecks, RecipeError
    from hqrs.dataset_builder.mpgi.steps import answer_problem

    cut = InferenceResult(text="A harbor with many", finish_reason="length", usage={})
    payload = {"max_tokens": 4}
    assert "finish_reason=length" in answer_problem(cut, payload, AnswerChecks())
    assert answer_problem(cut, payload, AnswerChecks(accept_truncated=True)) is None
    with pytest.raises(RecipeError, match="accept_truncated"):
        AnswerChecks(accept_truncated="yes").validate("checks")
