"""MpGI and builds on a real single-node Slurm cluster (``.ci/slurm-up.sh``), driven through the real
``hqrs`` console script called by full path without activating its environment.

Skipped cleanly when no Slurm cluster answers (``sinfo``); CI starts one (see .ci/run).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from scale_helpers import (
    AID,
    bare_env,
    built_rows,
    captions_by_image,
    hqrs,
    loop_recipe,
    status_json,
    wait_for,
)

from hqrs.dataset_builder.mpgi.loopback import LoopbackServer

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def partition() -> str:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        pytest.skip("Slurm is not installed (apt-get install slurm-wlm munge; then .ci/slurm-up.sh)")
    res = subprocess.run(["sinfo", "-h", "-o", "%R %t"], capture_output=True, text=True, timeout=30)
    up = [line.split()[0] for line in res.stdout.splitlines() if line.split()[-1] in ("idle", "mix", "alloc")]
    if res.returncode != 0 or not up:
        pytest.skip(f"no Slurm cluster up (.ci/slurm-up.sh): {res.stderr.strip()[:200] or res.stdout[:200]}")
    return up[0]


@pytest.fixture(autouse=True)
def _loopback_only_and_cancel_leftovers(tmp_path):
    from pytest_socket import socket_allow_hosts

    socket_allow_hosts(["127.0.0.1", "::1"], allow_unix_socket=True)
    yield
    if shutil.which("squeue") is None:
        return
    left = sorted({j["job"] for run in tmp_path.iterdir() if run.is_dir() for j in queued(run)})
    if left:  # a test that failed midway leaves no jobs behind
        subprocess.run(["scancel", *left], timeout=30, check=False)


def _tags(run: Path) -> set[str]:
    return {json.loads(p.read_text())["tag"] for p in run.rglob("hqrs_launch.json")}


def queued(run: Path) -> list[dict]:
    """This run's jobs still in the queue (one entry per array element)."""
    res = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i|%F|%K|%T|%r|%k"], capture_output=True, text=True, timeout=30
    )
    tags = _tags(run)
    keys = ("id", "job", "index", "state", "reason", "tag")
    jobs = [dict(zip(keys, line.split("|"))) for line in res.stdout.splitlines()]
    return [j for j in jobs if j.get("tag") in tags]


def settled(run: Path) -> bool:
    """Nothing of this run runs or can start: what is left waits on a failed stage (directly or not)."""
    return all(j["state"] == "PENDING" and j["reason"].startswith("Dependency") for j in queued(run))


def run_args(run: Path, source: str, part: str, *extra: str) -> list[str]:
    return [
        "mpgi",
        "run",
        "--executor",
        "slurm",
        "--tasks",
        "4",
        "--source",
        source,
        "--out",
        run,
        "--no-progress",
        "--set",
        f"execution.slurm.partition={part}",
        "--set",
        "execution.slurm.time=00:15:00",
        *extra,
    ]


def test_offline_pending_done_collect_and_build_equals_local(rs_real, partition, tmp_path):
    run = tmp_path / "run"
    args = run_args(run, f"folder:{rs_real / AID}", partition, "--limit", "24")
    # submitted held, so "pending" is observed for certain; released below
    held = [*args, "--set", "execution.slurm.sbatch_args.hold="]
    out = hqrs(*held)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "0 ok, 0 failed, 24 pending" in out.stdout
    st = status_json(run)
    assert (st["ok"], st["pending"], st["failed_tasks"]) == (0, 24, [])
    tasks = st["passes"][0]["tasks"]["integration"]
    assert (tasks["executor"], tasks["pending"], tasks["completed"]) == ("slurm", 4, 0)
    # a rerun while the jobs are queued submits nothing new
    before = sorted(j["id"] for j in queued(run))
    again = hqrs(*held)
    assert again.returncode == 0 and "24 pending" in again.stdout, again.stderr[-2000:]
    assert sorted(j["id"] for j in queued(run)) == before
    job_ids = sorted({j["job"] for j in queued(run)})
    subprocess.run(["scontrol", "release", ",".join(job_ids)], check=True, timeout=30)
    wait_for(lambda: not queued(run), 300, "the Slurm jobs to finish")
    st = status_json(run)
    assert (st["ok"], st["failed"], st["pending"], st["failed_tasks"]) == (24, 0, 0, [])
    collect = hqrs(*held)
    assert collect.returncode == 0 and "24 ok, 0 failed, 0 pending" in collect.stdout, collect.stdout
    assert status_json(run)["passes"][0]["complete"] is True
    assert not queued(run)

    local = tmp_path / "local"
    out = hqrs(
        "mpgi", "run", "--tasks", "4", "--limit", "24", "--source", f"folder:{rs_real / AID}", "--out", local
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert captions_by_image(run) == captions_by_image(local)
    for name, src in (("slurm", run), ("local", local)):
        b = hqrs("build", "--from-run", src, "--out", tmp_path / f"build_{name}", "--no-progress")
        assert b.returncode == 0, b.stderr[-2000:]
    rows = built_rows(tmp_path / "build_slurm")
    assert len(rows) == 24 and rows == built_rows(tmp_path / "build_local")


def test_model_recipe_scancel_one_task_then_resume(rs_real, partition, tmp_path):
    run = tmp_path / "run"
    n = 8
    with LoopbackServer(hold_after=3) as server:
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(json.dumps(loop_recipe(server.url)))  # JSON is YAML
        args = run_args(run, f"folder:{rs_real / AID}", partition, "--limit", str(n), "--recipe", recipe)
        out = hqrs(*args)
        assert out.returncode == 0, out.stderr[-3000:]
        # 3 answers, then every request is held: a task is mid-run; cancel it
        wait_for(lambda: server.held >= 1, 300, "a held request")
        slurm_logs = run / "passes" / "0000" / "stages" / "gen-m" / "logs" / "slurm_logs"

        def started():  # running and past its start (its log exists): mid-run, not mid-launch
            return [
                j
                for j in queued(run)
                if j["state"] == "RUNNING" and (slurm_logs / f"{j['job']}_{j['index']}.out").is_file()
            ]

        victim = wait_for(started, 60, "a started task")[0]
        subprocess.run(["scancel", f"{victim['job']}_{victim['index']}"], check=True, timeout=30)
        wait_for(lambda: all(j["id"] != victim["id"] for j in queued(run)), 60, "the cancelled task to end")
        server.release(drop_held=True)  # the cancelled task's request is never answered
        wait_for(lambda: settled(run), 300, "the other tasks to finish")
        # Slurm marks the dependants DependencyNeverSatisfied on a later scheduling pass, not at once
        wait_for(
            lambda: status_json(run)["passes"][0]["tasks"]["integration"]["blocked"] == 4,
            120,
            "the integration tasks to show blocked",
        )

        status = hqrs("mpgi", "status", run)
        assert status.returncode == 2, status.stdout + status.stderr
        st = status_json(run)
        [failed] = st["failed_tasks"]
        assert failed["stage"] == "gen:m" and Path(failed["log"]).is_file(), failed
        assert f"log {failed['log']}" in status.stdout and "FAILED" in status.stdout
        assert st["passes"][0]["tasks"]["integration"]["blocked"] == 4  # waits on the failed stage
        assert st["passes"][0]["tasks"]["gen:m"]["completed"] == 3

        resume = hqrs(*args)
        assert resume.returncode == 0, resume.stderr[-3000:]
        gen_logs = run / "passes" / "0000" / "stages" / "gen-m" / "logs"
        assert json.loads((gen_logs / "ranks_to_run.json").read_text()) == [failed["rank"]]  # only it
        wait_for(lambda: not queued(run), 300, "the resubmitted jobs to finish")
        collect = hqrs(*args)
        assert f"{n} ok, 0 failed, 0 pending" in collect.stdout, collect.stdout + collect.stderr[-2000:]
        # nothing answered before the cancel was sent again: the server answered exactly what an
        # uninterrupted run of the same input asks for (measured below; records of one class can send the
        # same payload, so count answers, not distinct payloads)
        answered = sum(server.answered.values())
        assert answered >= 2 * n, server.answered
        slurm_captions = captions_by_image(run)
        assert len(slurm_captions) == n

        local = tmp_path / "local"
        out = hqrs(
            "mpgi", "run", "--source", f"folder:{rs_real / AID}", "--limit", str(n), "--recipe", recipe,
            "--out", local, "--tasks", "4",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        assert sum(server.answered.values()) - answered == answered, server.answered
    assert captions_by_image(local) == slurm_captions


def test_errors_do_not_claim_the_run_dir_and_failed_jobs_show_failed(rs_real, partition, tmp_path):
    source = f"folder:{rs_real / AID}"
    # no sbatch on PATH
    out = hqrs(*run_args(tmp_path / "a", source, partition), env=bare_env(PATH=str(tmp_path)))
    assert out.returncode == 1 and out.stderr.startswith(
        "hqrs: error: --executor slurm: 'sbatch' is not on PATH"
    )
    assert not (tmp_path / "a").exists()
    # a partition that does not exist
    out = hqrs(*run_args(tmp_path / "b", source, "no-such-partition"))
    assert out.returncode == 1 and "partition 'no-such-partition' does not exist" in out.stderr
    assert f"known partitions: {partition}" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "b").exists()
    # a missing setting: the corrected command then starts a fresh run in the same directory
    args = run_args(tmp_path / "c", source, partition, "--limit", "4")
    out = hqrs(*args[: args.index("execution.slurm.time=00:15:00") - 1])
    assert out.returncode == 1 and "set execution.slurm.time" in out.stderr
    assert not (tmp_path / "c").exists()
    # a job that fails (its environment command points nowhere): FAILED with its log, never "done"
    args = [*args, "--set", "execution.slurm.venv_path=/nonexistent/bin/activate"]
    out = hqrs(*args)
    assert out.returncode == 0, out.stderr[-2000:]
    run = tmp_path / "c"
    wait_for(lambda: settled(run), 120, "the failing jobs to end")
    status = hqrs("mpgi", "status", run)
    assert status.returncode == 2 and "0 ok, 0 failed, 4 pending" in status.stdout
    st = status_json(run)
    assert len(st["failed_tasks"]) == 4 and st["passes"][0]["complete"] is False
    log = Path(st["failed_tasks"][0]["log"])
    assert "No such file or directory" in log.read_text() and f"log {log}" in status.stdout
    subprocess.run(["scancel", *sorted({j["job"] for j in queued(run)})], timeout=30, check=False)
