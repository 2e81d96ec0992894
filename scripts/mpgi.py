"""``hqrs mpgi run`` / ``status`` / ``recipe-schema``: the MpGI engine from the command line."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from .cli import leaf_parser

logger = logging.getLogger("hqrs.mpgi")


def register(subparsers, parents) -> None:
    p = subparsers.add_parser(
        "mpgi",
        help="generate multi-perspective captions (MpGI) for annotated RS images",
        description="MpGI: rule perspective, MLLM perspectives and LLM integration, on datatrove.",
    )
    sub = p.add_subparsers(dest="mpgi_command", metavar="SUBCOMMAND", required=True)

    run = leaf_parser(
        sub,
        "run",
        parents,
        help="run (or resume, or retry the failed records of) an MpGI run",
        description=(
            "Run MpGI on the records of --source into --out. Rerunning the same command resumes an "
            "interrupted run (finished documents and answered requests are not redone) and then retries "
            "records that failed."
        ),
    )
    run.add_argument(
        "--recipe", default="offline", help="shipped recipe (offline, cpu-tiny, gpu-vllm) or YAML path"
    )
    run.add_argument(
        "--source",
        action="append",
        required=True,
        metavar="SPEC",
        help="records: 'KIND:PATH?images=DIR' (dataset-builder source adapters), or a folder of images; repeatable",
    )
    run.add_argument("--out", required=True, type=Path, help="run directory")
    run.add_argument("--executor", choices=("local", "slurm", "ray"), default="local")
    run.add_argument("--tasks", type=int, default=1, help="datatrove tasks (input shards)")
    run.add_argument("--workers", type=int, default=1, help="parallel datatrove workers (local executor)")
    run.add_argument("--limit", type=int, default=None, help="only the first N records")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key, e.g. backends.local.endpoint_url=http://127.0.0.1:8000 (repeatable)",
    )
    run.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    run.set_defaults(func=run_command)

    status = leaf_parser(
        sub,
        "status",
        parents,
        help="done / failed / pending records per stage of a run",
        description="Show how far an MpGI run is: done / failed / pending per stage and pass.",
    )
    status.add_argument("run_dir", type=Path, help="run directory")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(func=status_command)

    schema = leaf_parser(
        sub,
        "recipe-schema",
        parents,
        help="print the JSON schema of a recipe file",
        description=(
            "Print the JSON schema of an MpGI recipe (every key, its type, bounds and default), e.g. for an "
            "editor's YAML language server: `hqrs mpgi recipe-schema > recipe.schema.json`."
        ),
    )
    schema.set_defaults(func=recipe_schema_command)


def iter_source_records(specs: list[str], report=None):
    """Records of ``specs``: source-adapter specs (``KIND:PATH?...``), a plain folder of images
    (→ ``images:PATH``), or a folder of class sub-folders (→ ``folder:PATH``)."""
    from hqrs.dataset_builder.sources import SkipReport, iter_records, load_source
    from hqrs.dataset_builder.sources.images import IMAGE_EXTENSIONS

    report = report if report is not None else SkipReport()
    sources = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            flat = any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in path.iterdir())
            spec = f"{'images' if flat else 'folder'}:{spec}"
        sources.append(load_source(spec))
    # iter_records: exact duplicates are counted skips here too (as in `hqrs build`), not dropped unseen
    yield from iter_records(sources, report)


def quiet_datatrove(args: argparse.Namespace) -> bool:
    """Apply ``-q``/``-qq``/``--no-progress`` (given before or after the command) to datatrove, which logs
    through loguru, not logging: ``-q`` and ``--no-progress`` keep its warnings, ``-qq`` its errors only.
    Returns whether progress bars are shown (not with ``--no-progress`` or ``-qq``)."""
    from hqrs.dataset_builder.mpgi.datatrove_compat import set_stderr_level

    verbosity = (getattr(args, "verbose", 0) or 0) - (getattr(args, "quiet", 0) or 0)
    progress = getattr(args, "progress", True)
    set_stderr_level("ERROR" if verbosity <= -2 else "WARNING" if verbosity == -1 or not progress else None)
    return progress and verbosity > -2


def run_command(args: argparse.Namespace) -> int:
    from hqrs.dataset_builder.mpgi import load_recipe, run_mpgi
    from hqrs.dataset_builder.mpgi.engine import MpGIRunError
    from hqrs.dataset_builder.sources import SkipReport

    progress = quiet_datatrove(args)
    recipe = load_recipe(args.recipe, overrides=args.overrides)
    report = SkipReport()
    try:
        result = run_mpgi(
            iter_source_records(args.source, report),
            recipe,
            args.out,
            executor=args.executor,
            tasks=args.tasks,
            workers=args.workers,
            limit=args.limit,
            progress=progress,
        )
    except MpGIRunError as e:
        raise OSError(str(e)) from e
    skipped = len(report)
    print(
        f"{result.ok} ok, {result.failed} failed, {result.pending} pending, {result.skipped} already done "
        f"({result.records} records, {skipped} source items skipped) in {result.seconds:.1f} s; "
        f"tokens {result.prompt_tokens} in / {result.completion_tokens} out; "
        f"fact filter rejected {result.fact_rejected}, dropped {result.fact_dropped}; "
        f"{result.repairs} JSON repairs → {args.out}"
    )
    for message, count in sorted(result.errors.items(), key=lambda kv: -kv[1])[:5]:
        print(f"  failed ×{count}: {message}")
    if result.failed:
        print("  rerun the same command to retry the failed records")
    return 0 if result.failed == 0 else 2


def recipe_schema_command(args: argparse.Namespace) -> int:
    from hqrs.dataset_builder.mpgi.recipe import Recipe

    print(json.dumps(Recipe.model_json_schema(), indent=2))
    return 0


def status_command(args: argparse.Namespace) -> int:
    from hqrs.dataset_builder.mpgi import run_status

    status = run_status(args.run_dir)
    if args.json:
        print(json.dumps(status, indent=2))
        return 2 if status.get("failed_tasks") else 0
    print(
        f"{status['run_dir']}: recipe {status['recipe']} ({(status['recipe_hash'] or '?')[:12]}), "
        f"{status['records']} records: {status['ok']} ok, {status['failed']} failed, {status['pending']} pending"
    )
    if status.get("failed_by_reason"):
        print("  failed by reason: " + ", ".join(f"{k} {v}" for k, v in status["failed_by_reason"].items()))
        print("  rerun `hqrs mpgi run` with the same --out to retry them")
    for p in status["passes"]:
        state = "complete" if p["complete"] else "unfinished"
        print(f"  pass {p['pass']} ({p['records']} records, {state})")
        for stage, c in p["stages"].items():
            print(f"    {stage:<24} done {c['done']:>7}  failed {c['failed']:>7}  pending {c['pending']:>7}")
            t = p.get("tasks", {}).get(stage)
            if t and t["launched"] and not p["complete"]:
                blocked = f", {t['blocked']} blocked by a failed stage" if t["blocked"] else ""
                print(
                    f"    {'':<24} tasks ({t['executor']}): {t['completed']} completed, {t['running']} running, "
                    f"{t['pending']} queued, {len(t['failed'])} FAILED{blocked}"
                )
    for task in status.get("failed_tasks", []):
        print(f"  FAILED: pass {task['pass']} {task['stage']} task {task['rank']}: log {task['log']}")
    if status.get("failed_tasks"):
        print(
            "  rerun the same `hqrs mpgi run` command to resubmit the failed tasks (finished ones are kept)"
        )
        return 2
    return 0
