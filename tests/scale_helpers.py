"""Shared pieces of the Slurm / Ray end-to-end tests (tests/test_scale_*.py).

Every run goes through the real ``hqrs`` console script of this interpreter's environment, called by its
full path with a PATH that does *not* hold the environment's ``bin`` (as from cron or a job script).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

HQRS = Path(sys.executable).parent / "hqrs"
AID = "aid_classification"  # 30 classes x 5 real AID images (rs_real)


def bare_env(**extra: str) -> dict[str, str]:
    """The environment minus this venv, and any other Python environment with datatrove, on PATH (``hqrs``
    is called by full path, not activated; an activated venv of the caller would otherwise run the jobs)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(
        p
        for p in env.get("PATH", "").split(os.pathsep)
        if p and p != venv_bin and not (Path(p) / "launch_pickled_pipeline").exists()
    )
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **extra)
    return env


def hqrs(*args: str, env: dict[str, str] | None = None, timeout: float = 600, cwd=None):
    return subprocess.run(
        [str(HQRS), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or bare_env(),
        cwd=cwd,
    )


def status_json(run_dir: Path) -> dict:
    out = hqrs("mpgi", "status", run_dir, "--json")
    assert out.returncode in (0, 2), out.stderr[-2000:]
    return json.loads(out.stdout)


def wait_for(predicate, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def loop_recipe(url: str, records_per_chunk: int = 1) -> dict:
    """A model-backed recipe against the loopback server: one MLLM perspective + LLM integration (at
    least 2 requests per record; the echoed captions miss the word ranges once, so 3), checkpointing
    every document."""
    return {
        "name": "loop-scale",
        "backends": {
            "m": {
                "server": "endpoint",
                "endpoint_url": url,
                "model": "loopback",
                "request_timeout": 60.0,
                "retries": 2,
                "retry_backoff": 0.05,
                "server_ready_attempts": 20,
                "server_ready_delay": 0.2,
                "max_concurrent": 2,
            }
        },
        "generators": [{"name": "scene", "backend": "m", "perspective": "scene"}],
        "integrator": {"backend": "m", "max_repairs": 1},
        "execution": {"records_per_chunk": records_per_chunk},
    }


def captions_by_image(run_dir: Path) -> dict[str, list[str]]:
    from hqrs.dataset_builder.mpgi import iter_results

    out: dict[str, list[str]] = {}
    for r in iter_results(run_dir):
        assert r.image_id not in out, f"duplicate result for {r.image_id}"
        assert r.status == "ok", (r.image_id, r.error)
        out[r.image_id] = [c.text for c in r.captions]
    return out


def built_rows(out_dir: Path) -> list[tuple]:
    """(split, image_id, captions, label) of every row of the built default config, sorted."""
    rows = []
    for path in sorted(out_dir.rglob("*.parquet")):
        if "default" not in path.parts:
            continue
        table = pq.read_table(path)
        cols = table.column_names
        id_col = "image_id" if "image_id" in cols else cols[0]
        keep = [id_col, *(c for c in cols if "caption" in c or c == "label")]
        split = path.name.split("-")[0]
        for row in table.select(keep).to_pylist():
            rows.append((split, *(json.dumps(row[c], sort_keys=True, default=str) for c in keep)))
    return sorted(rows)
