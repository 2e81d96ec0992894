"""``hqrs push model|dataset``: stage, check and upload to the Hugging Face Hub (or only stage, with --dry-run)."""

from __future__ import annotations

import logging
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .cli import leaf_parser

logger = logging.getLogger("hqrs.push")


def _common(p) -> None:
    p.add_argument("folder", type=Path, help="the folder to publish")
    p.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--revision", default=None, help="branch to commit to (created if missing)")
    p.add_argument("--commit-message", default=None)
    p.add_argument(
        "--license", default=None, help="licence id for the card (model: apache-2.0, dataset: other)"
    )
    p.add_argument(
        "--dry-run",
        type=Path,
        metavar="OUT",
        default=None,
        help="write exactly the files that would be uploaded to OUT and print the operations; upload nothing",
    )


@contextmanager
def _staging_folder(args):
    """OUT for a dry run (kept, nothing written elsewhere); a temporary folder for a real push."""
    if args.dry_run is not None:
        yield args.dry_run
        return
    with tempfile.TemporaryDirectory(prefix="hqrs-push-") as tmp:
        yield Path(tmp) / "stage"


def _finish(plan, args) -> int:
    for line in plan.operations():
        print(line)
    if args.dry_run is not None:
        print(f"dry run: {len(plan.files)} file(s) staged in {plan.folder}; nothing uploaded")
        return 0
    from hqrs.hub_cards.push import push

    info = push(plan, private=args.private, revision=args.revision, commit_message=args.commit_message)
    print(f"pushed {len(plan.files)} file(s) to {info.commit_url if hasattr(info, 'commit_url') else info}")
    return 0


def run_model(args) -> int:
    from hqrs.hub_cards.cards import load_eval_results
    from hqrs.hub_cards.push import stage_model

    results = (
        load_eval_results(args.results, args.folder, allow_other_model=args.allow_other_model_results)
        if args.results
        else None
    )
    training = Path(args.training).read_text(encoding="utf-8") if args.training else None
    with _staging_folder(args) as out:
        plan = stage_model(
            args.folder,
            out,
            args.repo_id,
            base_model=args.base_model,
            datasets=args.datasets,
            results=results,
            training=training,
            license=args.license or "apache-2.0",
        )
        return _finish(plan, args)


def run_dataset(args) -> int:
    from hqrs.dataset_builder.io import load_json_utf8
    from hqrs.hub_cards.cards import load_sources_list
    from hqrs.hub_cards.push import stage_dataset

    stats = load_json_utf8(args.stats, "dataset statistics") if args.stats else None
    sources = load_sources_list(args.sources) if args.sources else None
    with _staging_folder(args) as out:
        plan = stage_dataset(
            args.folder,
            out,
            args.repo_id,
            stats=stats,
            plots=args.plot,
            sources=sources,
            license=args.license or "other",
        )
        return _finish(plan, args)


def register(subparsers, parents) -> None:
    p = subparsers.add_parser(
        "push",
        help="publish a model or dataset folder to the Hugging Face Hub",
        description="Publish a model folder or a dataset built by `hqrs build` to the Hugging Face Hub. "
        "Every push is staged first (--dry-run OUT keeps the staged folder and uploads nothing).",
    )
    sub = p.add_subparsers(dest="push_command", metavar="KIND", required=True)

    m = leaf_parser(
        sub,
        "model",
        parents,
        help="push an HQRS-CLIP or RS-CoCa model folder",
        description="Stage a saved HQRS-CLIP or RS-CoCa folder (safetensors, config, processor, the "
        "package's remote code), render its model card with `hqrs eval` results, check every staged "
        "file for secrets and local paths, then upload it (or only stage it with --dry-run).",
    )
    _common(m)
    m.add_argument("--base-model", default=None, help="Hub id of the model it was fine-tuned from")
    m.add_argument("--datasets", nargs="*", default=None, help="Hub ids of the training datasets")
    m.add_argument(
        "--results",
        nargs="*",
        default=None,
        help="`hqrs eval` result JSON files for model-index; each must have been measured on this folder "
        "(same weights hash)",
    )
    m.add_argument(
        "--allow-other-model-results",
        action="store_true",
        help="attach --results measured on another model (a warning names each)",
    )
    m.add_argument("--training", default=None, help="a Markdown file describing the training recipe")
    m.set_defaults(func=run_model)

    d = leaf_parser(
        sub,
        "dataset",
        parents,
        help="push a folder written by `hqrs build`",
        description="Stage a folder written by `hqrs build` (parquet shards, build report, plots), render "
        "its dataset card from the build report and MpGI run manifest, check every staged file for "
        "secrets and local paths, then upload it (or only stage it with --dry-run).",
    )
    _common(d)
    d.add_argument("--stats", default=None, help="JSON written by `hqrs eval dataset`")
    d.add_argument(
        "--plot", nargs="*", default=None, help="PNG plots to include (e.g. from `hqrs eval dataset`)"
    )
    d.add_argument(
        "--sources", default=None, help='JSON list of {"name", "license", "citation"} for the card'
    )
    d.set_defaults(func=run_dataset)
