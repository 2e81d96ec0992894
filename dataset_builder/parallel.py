"""Parallel plumbing: an order-preserving, memory-bounded map for the build (analysis and image
encoding), and the datatrove executors (local, Slurm, Ray) that MpGI stages run on.

``multiprocessing.Pool.imap`` reads its whole input ahead in a feeder thread and buffers every result
the consumer has not taken yet; :func:`bounded_map` keeps at most ``window`` chunks in flight, so a
streaming build stays streaming, and yields results in input order, so the build is deterministic
whatever ``num_proc`` is.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import multiprocessing
import os
import shlex
import shutil
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def effective_num_proc(num_proc: int) -> int:
    """``num_proc`` capped at :func:`available_cpus` (with a warning, as ``datasets`` does for more
    processes than shards): more worker interpreters than CPUs only cost memory and start-up time, and a
    huge value would try to start that many processes."""
    cpus = available_cpus()
    if int(num_proc) > cpus:
        logger.warning(
            "num_proc=%d is more than the %d available CPUs; using %d processes", num_proc, cpus, cpus
        )
        return cpus
    return int(num_proc)


def make_pool(num_proc: int):
    """A pool of ``num_proc`` fresh interpreters (``spawn``: safe after pyarrow / torch started threads;
    at most :func:`available_cpus`), or ``None`` for ``num_proc <= 1``. Use it as a context manager."""
    num_proc = effective_num_proc(num_proc)
    if num_proc <= 1:
        return None
    return multiprocessing.get_context("spawn").Pool(num_proc)


def _apply_chunk(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    return [fn(item) for item in items]


def bounded_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    pool=None,
    *,
    remote: Callable[[T], bool] | None = None,
    arg: Callable[[T], Any] | None = None,
    chunk: int = 8,
    window: int | None = None,
) -> Iterator[tuple[T, R]]:
    """``(item, fn(arg(item)))`` in input order (``arg`` default: the item itself, which is what is
    pickled to a worker); ``fn`` (a module-level function) runs in ``pool`` for items where
    ``remote(item)`` is true (default all), in this process for the others and when ``pool`` is
    ``None``. At most ``window`` chunks (default 4 per worker) are in flight."""
    arg = arg or (lambda item: item)
    if pool is None:
        for item in items:
            yield item, fn(arg(item))
        return

    def submit(batch: list[T]):
        return pool.apply_async(_apply_chunk, (fn, [arg(i) for i in batch]))

    window = window or 4 * getattr(pool, "_processes", 2)
    # queue entries: (items, async result or None for items computed here)
    queue: deque[tuple[list[T], Any]] = deque()
    local: list[T] = []
    batch: list[T] = []

    def drain(limit: int) -> Iterator[tuple[T, R]]:
        while len(queue) > limit:
            chunk_items, pending = queue.popleft()
            results = pending.get() if pending is not None else [fn(arg(i)) for i in chunk_items]
            yield from zip(chunk_items, results)

    for item in items:
        if remote is None or remote(item):
            if local:
                queue.append((local, None))
                local = []
            batch.append(item)
            if len(batch) >= chunk:
                queue.append((batch, submit(batch)))
                batch = []
        else:
            if batch:
                queue.append((batch, submit(batch)))
                batch = []
            local.append(item)
            if len(local) >= chunk:
                queue.append((local, None))
                local = []
        yield from drain(window)
    if batch:
        queue.append((batch, submit(batch)))
    if local:
        queue.append((local, None))
    yield from drain(0)


# --------------------------------------------------------------------------- #
# datatrove executors: local, Slurm, Ray
# --------------------------------------------------------------------------- #

logger = logging.getLogger("hqrs.parallel")

EXECUTORS = ("local", "slurm", "ray")
LAUNCH_FILE = "hqrs_launch.json"  # in each stage's logging dir: who runs it (executor, job id / pid)
_SLURM_ALIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}
_LAUNCHERS = {  # datatrove console scripts a Slurm job calls by name -> their modules
    "launch_pickled_pipeline": "datatrove.tools.launch_pickled_pipeline",
    "merge_stats": "datatrove.tools.merge_stats",
}


class ExecutorConfigError(ValueError):
    """An executor that cannot run here: no ``sbatch`` on PATH, an unknown partition, Ray not installed,
    a missing required setting. Raised before anything is written to the run directory."""


def _slurm_cmd(args: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def check_executor(kind: str, options: dict[str, Any] | None = None, environment: bool = True) -> None:
    """Check that ``kind`` can run here with ``options`` (the recipe's ``execution.slurm`` / ``ray``):
    the required settings and, with ``environment``, the Slurm commands / partition or Ray install.

    Raises:
        ExecutorConfigError: naming the missing setting / command / partition and the fix.
    """
    options = dict(options or {})
    if kind not in EXECUTORS:
        raise ExecutorConfigError(f"unknown executor {kind!r}: use one of {', '.join(EXECUTORS)}")
    if kind == "slurm":
        missing = [k for k in ("partition", "time") if k not in options]
        if missing:
            raise ExecutorConfigError(
                f"--executor slurm needs {' and '.join(missing)}: set execution.slurm.{missing[0]} in the recipe "
                f"or pass --set execution.slurm.{missing[0]}=... (e.g. partition=debug, time=01:00:00)"
            )
    if not environment:
        return
    if kind == "slurm":
        for command in ("sbatch", "squeue", "scontrol"):
            if shutil.which(command) is None:
                raise ExecutorConfigError(
                    f"--executor slurm: {command!r} is not on PATH ({os.environ.get('PATH', '')!r}); run hqrs "
                    "where the Slurm client commands are installed (a login node), or use --executor local"
                )
        partition = str(options["partition"])
        res = _slurm_cmd(["scontrol", "show", "partition", partition])
        if res.returncode != 0:
            known = _slurm_cmd(["sinfo", "-h", "-o", "%R"]).stdout.split()
            raise ExecutorConfigError(
                f"--executor slurm: partition {partition!r} does not exist "
                f"({(res.stderr or res.stdout).strip()[:200]}); known partitions: {', '.join(known) or 'none'}; "
                "fix execution.slurm.partition"
            )
    if kind == "ray":
        if importlib.util.find_spec("ray") is None:
            raise ExecutorConfigError(
                "--executor ray needs Ray in this environment: pip install 'hqrs[ray]' (or 'ray[default]')"
            )


def run_tag(logging_dir: str | os.PathLike) -> str:
    """A short tag of one stage's logging dir, put in its Slurm jobs' ``--comment`` to find them."""
    return "hqrs-" + hashlib.sha256(str(Path(logging_dir).resolve()).encode()).hexdigest()[:16]


def slurm_env_command(logging_dir: str | os.PathLike) -> str:
    """The ``env_command`` that makes a Slurm job run in *this* interpreter.

    datatrove's job script calls ``launch_pickled_pipeline`` / ``merge_stats`` by name; they are found
    only when the submitting environment's ``bin`` is on PATH (an activated venv). This writes two
    shims into ``LOGGING_DIR/bin`` that ``exec`` ``sys.executable -m datatrove.tools....`` and returns
    ``export PATH=LOGGING_DIR/bin:$PATH``, so a job runs where ``hqrs`` ran, however it was started.
    """
    bin_dir = Path(logging_dir) / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, module in _LAUNCHERS.items():
        path = bin_dir / name
        path.write_text(
            "#!/bin/sh\n# written by hqrs: datatrove's launcher in the interpreter that submitted the job\n"
            f'exec {shlex.quote(sys.executable)} -m {module} "$@"\n'
        )
        path.chmod(0o755)
    return f'export PATH={shlex.quote(str(bin_dir.resolve()))}:"$PATH"'


def init_ray() -> str:
    """Connect to the Ray cluster of ``RAY_ADDRESS`` (e.g. one started with ``ray start --head
    --node-ip-address 127.0.0.1``), or start an in-process one on 127.0.0.1 when it is unset.
    Returns ``"address <ADDR>"`` or ``"in-process"``."""
    import ray

    address = os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return f"address {address}" if address else "in-process"
    # the workers run this interpreter (the venv hqrs runs in), whoever started the cluster
    runtime_env = {"py_executable": sys.executable}
    if address:
        host = address.split("://")[-1].rsplit(":", 1)[0]
        if host.startswith("127.") or host == "localhost":
            # Ray rewrites a loopback address to the machine's own address, where a cluster started with
            # --node-ip-address 127.0.0.1 does not listen: join this machine's cluster ("auto", which
            # also picks up its auth token) on loopback instead
            # ("auto" reads RAY_ADDRESS first, so it is set aside meanwhile)
            saved = os.environ.pop("RAY_ADDRESS")
            try:
                ray.init(
                    address="auto", _node_ip_address="127.0.0.1", log_to_driver=False, runtime_env=runtime_env
                )
            finally:
                os.environ["RAY_ADDRESS"] = saved
        else:
            ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
        return f"address {address}"
    # "local": always a new in-process instance (a bare ray.init() joins any cluster recorded on this
    # machine, and hangs on a stale record of one that was killed)
    ray.init(
        address="local",
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        log_to_driver=False,
        runtime_env=runtime_env,
    )
    return "in-process"


def _write_launch(logging_dir: str | os.PathLike, kind: str, job_id: Any = None) -> None:
    folder = Path(logging_dir)
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "executor": kind,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "job_id": None if job_id in (None, -1) else str(job_id),
        "tag": run_tag(logging_dir),
        "launched": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    tmp = folder / f".{LAUNCH_FILE}.tmp"
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(folder / LAUNCH_FILE)


def make_executor(
    kind: str,
    pipeline: list,
    logging_dir: str,
    tasks: int,
    workers: int,
    depends=None,
    options: dict[str, Any] | None = None,
    job_name: str = "mpgi",
):
    """A datatrove executor for one stage; ``options`` are the recipe's ``execution.slurm``/``ray`` args.

    Slurm jobs run in this interpreter (see :func:`slurm_env_command`) unless ``options`` name their
    own ``env_command`` / ``venv_path`` / ``condaenv``; ``workers`` > 1 caps the concurrent array
    tasks (default: no cap).
    """
    options = dict(options or {})
    if kind == "local":
        from datatrove.executor import LocalPipelineExecutor

        return LocalPipelineExecutor(
            pipeline,
            tasks=tasks,
            workers=workers,
            logging_dir=logging_dir,
            depends=depends,
            start_method="spawn",
        )
    check_executor(kind, options, environment=False)
    workers = workers if workers > 1 else -1
    if kind == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        if not any(options.get(k) for k in ("env_command", "venv_path", "condaenv")):
            options["env_command"] = slurm_env_command(logging_dir)
        sbatch_args = dict(options.pop("sbatch_args", None) or {})
        sbatch_args.setdefault("comment", run_tag(logging_dir))
        options.setdefault("job_name", job_name)
        return SlurmPipelineExecutor(
            pipeline,
            tasks=tasks,
            workers=workers,
            logging_dir=logging_dir,
            depends=depends,
            sbatch_args=sbatch_args,
            **options,
        )
    from datatrove.executor import RayPipelineExecutor

    return RayPipelineExecutor(
        pipeline, tasks=tasks, workers=workers, logging_dir=logging_dir, depends=depends, **options
    )


class StageIncompleteError(RuntimeError):
    """A stage finished with tasks that did not complete (their logs are named); rerun to retry them."""


def run_stages(
    kind: str,
    stages: list[tuple[list, str, str]],
    tasks: int,
    workers: int,
    options: dict[str, Any] | None = None,
) -> bool:
    """Run (local, Ray: until done) or submit (Slurm) the chained stages ``[(pipeline, logging_dir,
    job_name)]``; each stage reads the previous one's output.

    Slurm: when a job of these stages is still queued or running nothing is submitted (a rerun never
    runs a rank twice); jobs blocked forever behind a failed stage (``DependencyNeverSatisfied``) are
    cancelled and the unfinished ranks resubmitted. Ray: stages run one after another (datatrove's
    ``depends=`` would poll a failed dependency forever); a stage left incomplete stops the chain.

    Returns:
        True when something was submitted or run, False when Slurm jobs were still in flight.

    Raises:
        StageIncompleteError: a Ray / local stage ended with failed tasks.
        ExecutorConfigError: see :func:`check_executor`.
    """
    if kind == "slurm":
        states = [stage_task_states(d, tasks) for _, d, _ in stages]
        if any(s["running"] or s["pending"] for s in states if s["launched"]):
            logger.info("Slurm jobs of this pass are still queued or running: nothing submitted")
            return False
        blocked = sorted({j for s in states for j in s["blocked_jobs"]})
        if blocked:  # nothing runs: what still waits on a dependency waits on a failed stage, forever
            logger.info("cancelling Slurm jobs blocked behind a failed stage: %s", ", ".join(blocked))
            _slurm_cmd(["scancel", *blocked])
        executors = []
        previous = None
        for pipeline, logging_dir, job_name in stages:
            previous = make_executor(kind, pipeline, logging_dir, tasks, workers, previous, options, job_name)
            executors.append(previous)
        previous.run()
        for executor, (_, logging_dir, _) in zip(executors, stages):
            _write_launch(logging_dir, kind, executor.job_id)
        return True
    if kind == "ray":
        how = init_ray()
        logger.info("Ray: %s", how)
        for pipeline, logging_dir, job_name in stages:
            executor = make_executor(kind, pipeline, logging_dir, tasks, workers, None, options, job_name)
            _write_launch(logging_dir, kind)
            executor.run()
            _raise_if_incomplete(executor, logging_dir, tasks)
        return True
    previous = None
    for pipeline, logging_dir, job_name in stages:
        previous = make_executor(kind, pipeline, logging_dir, tasks, workers, previous, options, job_name)
        _write_launch(logging_dir, kind)
    previous.run()
    return True


def incomplete_ranks(logging_dir: str | os.PathLike, tasks: int) -> list[int]:
    """Ranks ``0..tasks-1`` of a stage without datatrove's completion marker, through datatrove's public
    ``PipelineExecutor.get_incomplete_ranks()`` (the same markers for the local, Slurm and Ray executors).

    Example:
        >>> incomplete_ranks("/no/such/stage/logs", 3)
        [0, 1, 2]
    """
    from datatrove.executor import LocalPipelineExecutor

    # an executor over no pipeline only to read LOGGING_DIR/completions: it writes nothing
    reader = LocalPipelineExecutor([], tasks=max(1, tasks), logging_dir=str(logging_dir))
    return reader.get_incomplete_ranks(range(tasks), skip_completed=True)


def _raise_if_incomplete(executor, logging_dir: str, tasks: int) -> None:
    incomplete = executor.get_incomplete_ranks(range(tasks), skip_completed=True)
    if incomplete:
        logs = [str(Path(logging_dir) / "logs" / f"task_{r:05d}.log") for r in incomplete]
        raise StageIncompleteError(
            f"{len(incomplete)} of {tasks} task(s) did not complete (ranks {incomplete}); logs: {', '.join(logs)}"
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _squeue(tag: str) -> dict[tuple[str, str], tuple[str, str]] | None:
    """``{(array job id, array index): (state, reason)}`` of the queued jobs with comment ``tag``
    (None when ``squeue`` is unavailable)."""
    if shutil.which("squeue") is None:
        return None
    try:
        res = _slurm_cmd(["squeue", "-h", "-r", "-o", "%F|%K|%T|%r|%k|%i"])
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        return None
    out = {}
    for line in res.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 6 and parts[4] == tag:
            job, index, state, reason, _, job_id = parts
            index = index if index not in ("N/A", "") else "0"
            out[(job, index)] = (state, reason)
            out[(job_id, "*")] = (state, reason)  # the job itself (merge-stats jobs are not arrays)
    return out


def stage_task_states(logging_dir: str | os.PathLike, tasks: int) -> dict[str, Any]:
    """Per-task state of one stage from its datatrove logs and, for Slurm, ``squeue``.

    Returns ``{"executor", "launched", "completed", "running", "pending", "blocked", "unknown",
    "failed": [{"rank", "log"}], "blocked_jobs": [job ids]}``. A task is *failed* when it was launched,
    has no completion marker and its job / process is gone (cancelled, crashed, timed out, killed).
    """
    folder = Path(logging_dir)
    completed = set(range(tasks)) - set(incomplete_ranks(folder, tasks))
    out: dict[str, Any] = {
        "executor": None,
        "launched": False,
        "completed": len(completed),
        "running": 0,
        "pending": 0,
        "blocked": 0,
        "unknown": 0,
        "failed": [],
        "blocked_jobs": [],
    }
    rest = [r for r in range(tasks) if r not in completed]
    try:
        launch = json.loads((folder / LAUNCH_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        out["pending"] = len(rest)  # never launched
        return out
    out["executor"] = launch.get("executor")
    out["launched"] = True
    if not rest:
        return out
    if launch.get("executor") == "slurm":
        job = launch.get("job_id")
        queue = _squeue(launch.get("tag", run_tag(folder)))
        if queue is None:
            out["unknown"] = len(rest)
            return out
        # jobs waiting on a dependency (array stages and their merge-stats jobs): stale when nothing of
        # the pass is running any more, cancelled then by run_stages before it resubmits
        out["blocked_jobs"] = sorted(
            {j for (j, i), (_, reason) in queue.items() if i != "*" and reason.startswith("Dependency")}
        )
        try:
            order = json.loads((folder / "ranks_to_run.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            order = []
        index_of = {rank: i for i, rank in enumerate(order)}
        for rank in rest:
            i = index_of.get(rank)
            state, reason = queue.get((str(job), str(i)), (None, "")) if job and i is not None else (None, "")
            if state in _SLURM_ALIVE:
                if "DependencyNeverSatisfied" in reason:
                    out["blocked"] += 1
                elif state == "PENDING":
                    out["pending"] += 1
                else:
                    out["running"] += 1
            else:
                log = folder / "slurm_logs" / f"{job}_{i}.out"
                out["failed"].append(
                    {"rank": rank, "log": str(log if log.exists() else folder / "slurm_logs")}
                )
        return out
    alive = launch.get("host") == socket.gethostname() and _pid_alive(int(launch.get("pid", 0)))
    for rank in rest:
        if alive:
            out["running"] += 1
        else:
            log = folder / "logs" / f"task_{rank:05d}.log"
            out["failed"].append({"rank": rank, "log": str(log if log.exists() else folder)})
    return out


__all__ = [
    "EXECUTORS",
    "ExecutorConfigError",
    "StageIncompleteError",
    "available_cpus",
    "bounded_map",
    "effective_num_proc",
    "check_executor",
    "init_ray",
    "make_executor",
    "make_pool",
    "run_stages",
    "slurm_env_command",
    "stage_task_states",
]
