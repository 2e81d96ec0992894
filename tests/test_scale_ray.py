"""MpGI and builds on a real local Ray cluster: ``ray start --head --node-ip-address 127.0.0.1`` (found
through ``RAY_ADDRESS``), and the in-process ``ray.init()`` used when ``RAY_ADDRESS`` is unset.

Skipped cleanly without Ray (``pip install -e '.[ray]'``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from scale_helpers import (
    AID,
    HQRS,
    bare_env,
    built_rows,
    captions_by_image,
    hqrs,
    loop_recipe,
    status_json,
    wait_for,
)

from hqrs.dataset_builder.mpgi.loopback import LoopbackServer

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory):
    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray is not installed: pip install -e '.[ray]'")
    if os.environ.get("RAY_ADDRESS"):
        yield os.environ["RAY_ADDRESS"]
        return
    folder = tmp_path_factory.mktemp("ray")
    env = {**os.environ, "RAY": str(Path(sys.executable).parent / "ray"), "HQRS_RAY_DIR": str(folder)}
    env["HQRS_RAY_PORT"] = "6391"
    up = subprocess.run(
        ["bash", str(REPO / ".ci" / "ray-up.sh")], capture_output=True, text=True, env=env, timeout=200
    )
    if up.returncode != 0:
        subprocess.run(["bash", str(REPO / ".ci" / "ray-down.sh")], env=env, timeout=60, check=False)
        pytest.fail(f"a local Ray cluster did not start: {up.stderr[-2000:]}")
    try:
        yield up.stdout.strip().rsplit("=", 1)[-1]
    finally:
        subprocess.run(["bash", str(REPO / ".ci" / "ray-down.sh")], env=env, timeout=60, check=False)


@pytest.fixture(autouse=True)
def _loopback_only():
    from pytest_socket import socket_allow_hosts

    socket_allow_hosts(["127.0.0.1", "::1"], allow_unix_socket=True)
    yield


def _kill_one_rank_worker() -> int:
    """SIGKILL one Ray actor running datatrove ranks (``ray::RankWorker``) with its pool processes."""
    import psutil

    def is_worker(p):
        try:
            return " ".join(p.cmdline()).startswith("ray::RankWorker")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False

    actors = [p for p in psutil.process_iter() if is_worker(p) and not is_worker(p.parent() or p)]
    assert actors, "no ray::RankWorker process found"
    victim = actors[0]
    for p in [*victim.children(recursive=True), victim]:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    return victim.pid


def test_cluster_model_recipe_worker_killed_mid_run(rs_real, ray_address, tmp_path):
    run, n = tmp_path / "run", 8
    with LoopbackServer(hold_after=3) as server:
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(json.dumps(loop_recipe(server.url)))
        args = ["--source", f"folder:{rs_real / AID}", "--limit", str(n), "--recipe", recipe, "--tasks", "4"]
        proc = subprocess.Popen(
            [
                str(HQRS),
                "mpgi",
                "run",
                "--executor",
                "ray",
                "--out",
                str(run),
                "--no-progress",
                *map(str, args),
            ],
            env=bare_env(RAY_ADDRESS=ray_address),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            wait_for(lambda: server.held >= 1 or proc.poll() is not None, 300, "a held request")
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            st = status_json(run)  # mid-run: pending, tasks running, nothing failed
            gen = st["passes"][0]["tasks"]["gen:m"]
            assert (
                st["pending"] == n and gen["executor"] == "ray" and gen["running"] == 4 - gen["completed"] > 0
            )
            assert st["failed_tasks"] == []
            _kill_one_rank_worker()
            server.release(drop_held=True)
            out, _ = proc.communicate(timeout=500)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0 and f"{n} ok, 0 failed, 0 pending" in out, out[-4000:]
        # Ray resubmitted the killed rank; datatrove's checkpoints and request cache kept its answers: the
        # server answered exactly what an uninterrupted run of the same input asks for (measured below)
        answered = sum(server.answered.values())
        assert answered >= 2 * n, server.answered
        st = status_json(run)
        assert st["passes"][0]["complete"] and st["failed_tasks"] == [] and st["ok"] == n
        again = hqrs(
            "mpgi", "run", "--executor", "ray", "--out", run, *args, env=bare_env(RAY_ADDRESS=ray_address)
        )
        assert f"{n} ok" in again.stdout and "0 already done" not in again.stdout, again.stdout
        assert sum(server.answered.values()) == answered  # the collecting rerun sends nothing
        local = hqrs("mpgi", "run", "--out", tmp_path / "local", *args)
        assert local.returncode == 0, local.stderr[-2000:]
        assert sum(server.answered.values()) - answered == answered, server.answered  # nothing sent twice
    assert captions_by_image(run) == captions_by_image(tmp_path / "local")


def test_in_process_offline_build_equals_local(rs_real, ray_address, tmp_path):
    env = bare_env()
    env.pop("RAY_ADDRESS", None)  # in-process ray.init() on 127.0.0.1
    args = ["--source", f"folder:{rs_real / AID}", "--limit", "24", "--tasks", "4", "--no-progress"]
    out = hqrs("mpgi", "run", "--executor", "ray", "--out", tmp_path / "run", *args, env=env)
    assert out.returncode == 0 and "24 ok, 0 failed, 0 pending" in out.stdout, out.stdout + out.stderr[-3000:]
    assert hqrs("mpgi", "run", "--out", tmp_path / "local", *args).returncode == 0
    assert captions_by_image(tmp_path / "run") == captions_by_image(tmp_path / "local")
    for name in ("run", "local"):
        b = hqrs("build", "--from-run", tmp_path / name, "--out", tmp_path / f"build_{name}", "--no-progress")
        assert b.returncode == 0, b.stderr[-2000:]
    rows = built_rows(tmp_path / "build_run")
    assert len(rows) == 24 and rows == built_rows(tmp_path / "build_local")


def test_in_process_failed_tasks_stop_the_run_and_show_their_logs(rs_real, ray_address, tmp_path, request):
    """A server that is up for the probe but resets every request: every task stops (circuit breaker);
    the run stops with one error line naming the task logs, and `status` lists the failed tasks with
    their logs (never "done")."""
    server = LoopbackServer(plan=lambda payload, attempt: "reset")
    server.__enter__()
    request.addfinalizer(lambda: server.__exit__(None, None, None))
    recipe = loop_recipe(server.url)
    recipe["backends"]["m"].update(circuit_breaker=2, retries=0)
    (tmp_path / "recipe.yaml").write_text(json.dumps(recipe))
    env = bare_env()
    env.pop("RAY_ADDRESS", None)
    run = tmp_path / "run"
    args = ["--source", f"folder:{rs_real / AID}", "--limit", "4", "--tasks", "2", "--no-progress"]
    out = hqrs(
        "mpgi", "run", "--executor", "ray", "--recipe", tmp_path / "recipe.yaml", "--out", run, *args, env=env
    )
    assert out.returncode == 1, out.stdout + out.stderr[-3000:]
    error = out.stderr.strip().splitlines()[-1]
    assert error.startswith("hqrs: error: MpGI pass 0000 stopped: StageIncompleteError: 2 of 2 task(s)")
    assert "task_00000.log" in error
    status = hqrs("mpgi", "status", run)
    assert status.returncode == 2 and "0 ok, 0 failed, 4 pending" in status.stdout
    failed = status_json(run)["failed_tasks"]
    assert [(f["stage"], f["rank"]) for f in failed] == [("gen:m", 0), ("gen:m", 1)]
    assert all(Path(f["log"]).is_file() and f"log {f['log']}" in status.stdout for f in failed)
