"""The executor plumbing of hqrs.dataset_builder.parallel that needs no cluster: launcher shims, checks
made before a run directory is claimed, per-task states from datatrove's logs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hqrs.dataset_builder.mpgi import load_recipe, run_mpgi
from hqrs.dataset_builder.parallel import (
    LAUNCH_FILE,
    ExecutorConfigError,
    _write_launch,
    check_executor,
    slurm_env_command,
    stage_task_states,
)


def test_slurm_shims_run_datatrove_in_this_interpreter(tmp_path):
    """The job script's `launch_pickled_pipeline` / `merge_stats` resolve to this interpreter even with a
    PATH that does not hold any Python environment (a job of an hqrs that was not activated)."""
    env_command = slurm_env_command(tmp_path / "logs")
    script = f"{env_command}\ncommand -v launch_pickled_pipeline\nlaunch_pickled_pipeline --help\nmerge_stats --help\n"
    out = subprocess.run(
        ["/bin/bash", "-c", script], capture_output=True, text=True, env={"PATH": "/nonexistent"}, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == str(
        (tmp_path / "logs" / "bin" / "launch_pickled_pipeline").resolve()
    )
    assert "Loads a pickled pipeline executor" in out.stdout
    assert sys.executable in (tmp_path / "logs" / "bin" / "launch_pickled_pipeline").read_text()


def test_config_errors_name_the_fix_and_claim_nothing(tmp_path, monkeypatch):
    with pytest.raises(ExecutorConfigError, match=r"needs time: set execution\.slurm\.time"):
        check_executor("slurm", {"partition": "debug"})
    with pytest.raises(ExecutorConfigError, match="unknown executor 'k8s'"):
        check_executor("k8s")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ExecutorConfigError, match="'sbatch' is not on PATH"):
        check_executor("slurm", {"partition": "debug", "time": "1:00"})
    recipe = load_recipe(
        "offline", overrides=["execution.slurm.partition=debug", "execution.slurm.time=1:00"]
    )
    with pytest.raises(ExecutorConfigError, match="sbatch"):
        run_mpgi([], recipe, tmp_path / "run", executor="slurm", progress=False)
    assert not (tmp_path / "run").exists()  # the corrected command starts cleanly


def test_task_states_from_logs(tmp_path):
    logs = tmp_path / "logs"
    assert stage_task_states(logs, 3)["pending"] == 3  # never launched: queued, not failed
    _write_launch(logs, "local")  # this process: alive
    (logs / "completions").mkdir()
    (logs / "completions" / "00001").touch()
    st = stage_task_states(logs, 3)
    assert (st["launched"], st["completed"], st["running"], st["failed"]) == (True, 1, 2, [])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    data = json.loads((logs / LAUNCH_FILE).read_text())
    (logs / LAUNCH_FILE).write_text(json.dumps({**data, "pid": gone.pid}))
    (logs / "logs").mkdir()
    (logs / "logs" / "task_00002.log").write_text("Traceback ...")
    st = stage_task_states(logs, 3)
    assert st["running"] == 0 and [f["rank"] for f in st["failed"]] == [0, 2]
    assert st["failed"][1]["log"] == str(logs / "logs" / "task_00002.log")
