"""``hqrs build``: run MpGI on sources (or read a finished run / a released caption CSV) and write HQRS-IT."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..dataset_builder.split_settings import SplitSettings
from .cli import leaf_parser
from .mpgi import quiet_datatrove

logger = logging.getLogger("hqrs.build")

SPLIT = SplitSettings  # the defaults of the split options are its fields' (one source of truth)
DEFAULT_RATIOS = ",".join(f"{r:g}" for r in SPLIT.ratios)
DEMO_RATIOS = "0.6,0.2,0.2"  # the 16-scene demo: every split gets some scenes


# the kinds of hqrs.dataset_builder.sources.SOURCE_KINDS (not imported here: numpy / PIL would slow every
# `hqrs` start by ~0.7 s); tests/test_security_inputs.py checks that the help lists every kind
SOURCE_KIND_NAMES = ("folder", "images", "karpathy", "dota", "voc", "coco", "mask", "openclip-csv")


def register(subparsers, parents) -> None:
    p = leaf_parser(
        subparsers,
        "build",
        parents,
        help="build HQRS-IT (parquet + card, open_clip CSV or webdataset) from sources, a run or a CSV",
        description=(
            "Build HQRS-IT. Input: --source (MpGI runs with --recipe, default the offline recipe), "
            "--from-run (a finished MpGI run directory), --captions-csv (a released caption CSV) or --demo "
            "(a generated demo scene set). Writes OUT/data/<config>/<split>-XXXXX-of-YYYYY.parquet, "
            "OUT/README.md and OUT/build_report.json."
        ),
    )
    src = p.add_argument_group("input (exactly one)")
    src.add_argument(
        "--source",
        action="append",
        default=None,
        metavar="SPEC",
        help=f"KIND:PATH[?images=DIR&opt=val] (kinds: {' '.join(SOURCE_KIND_NAMES)}; PATH relative or absolute) or "
        "a YAML list of sources; repeatable. Image files must resolve inside the source's folder unless "
        "the spec sets allow_outside_root=true",
    )
    src.add_argument(
        "--from-run", dest="from_run", default=None, metavar="DIR", help="a finished MpGI run directory"
    )
    src.add_argument(
        "--captions-csv",
        default=None,
        metavar="SPEC",
        help="released caption CSV or TSV (PATH, or openclip-csv:PATH?sep=...; the separator is detected "
        "from the header when not given; PATH relative or absolute)",
    )
    src.add_argument(
        "--demo", action="store_true", help="generate the demo scene set into OUT/demo_scenes and build it"
    )
    p.add_argument(
        "--recipe",
        default=None,
        help="MpGI recipe name or YAML path for --source / --demo (default: offline)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--run-dir",
        default=None,
        metavar="DIR",
        help="MpGI run directory for --source (default OUT/mpgi_run)",
    )
    p.add_argument(
        "--config",
        action="append",
        choices=("default", "full", "pairs"),
        default=None,
        help="configs to write (parquet only; repeatable; default: all three)",
    )
    p.add_argument(
        "--format", dest="fmt", choices=("parquet", "open_clip-csv", "webdataset"), default="parquet"
    )
    p.add_argument(
        "--allow-root",
        dest="allow_root",
        action="append",
        default=None,
        metavar="DIR",
        help="the input's images must resolve inside DIR (repeatable); checked for every image of "
        "--from-run / --source / --captions-csv in addition to the image-id check",
    )
    p.add_argument("--strict", action="store_true", help="exit with status 3 when anything was skipped")
    p.add_argument(
        "--num-proc",
        type=int,
        default=1,
        help="worker processes for image analysis (decode-check, perceptual hash) and PNG encoding (default 1; at most the available CPUs)",
    )
    p.add_argument(
        "--keep-original",
        action="store_true",
        help="embed TIFF / BMP files as they are instead of re-encoding them to PNG (faster; browsers "
        "do not show TIFF)",
    )
    p.add_argument(
        "--shard-size",
        default=str(SPLIT.shard_size),
        help=f"images per shard ({SPLIT.shard_size}) or bytes of images ('500MB', '1GiB')",
    )
    p.add_argument(
        "--split-ratios",
        default=None,
        help=f"train,validation,test ratios (default {DEFAULT_RATIOS}; demo {DEMO_RATIOS})",
    )
    p.add_argument("--seed", default=SPLIT.seed, help=f"salt of the split hash (default {SPLIT.seed})")
    p.add_argument(
        "--near-dup-distance",
        type=int,
        default=SPLIT.near_dup_distance,
        help=f"perceptual-hash bits for near-duplicates (-1: off; default {SPLIT.near_dup_distance})",
    )
    p.add_argument(
        "--contamination",
        action="append",
        default=None,
        metavar="SPEC",
        help="evaluation test set whose images are removed from train: a source spec "
        "(karpathy:dataset_rsicd.json?splits=test), an image folder or a hash JSON; repeatable",
    )
    p.add_argument(
        "--contamination-distance",
        type=int,
        default=SPLIT.contamination_distance,
        help=f"perceptual-hash bits (-1: exact bytes only; default {SPLIT.contamination_distance})",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=run)


def _check_applicable(args: argparse.Namespace) -> None:
    """A given option that cannot apply to this input or format is an error naming it (never ignored).

    Raises:
        ValueError: ``--recipe`` / ``--run-dir`` (a new MpGI run's) with ``--from-run`` or
            ``--captions-csv``; ``--config`` with a format other than parquet.
    """
    reuses = (
        "--from-run reuses that run's recipe"
        if args.from_run
        else "--captions-csv holds the final captions (no MpGI run)"
        if args.captions_csv
        else None
    )
    if reuses:
        for flag, value in (("--recipe", args.recipe), ("--run-dir", args.run_dir)):
            if value is not None:
                raise ValueError(
                    f"{flag} {value!r} applies to a new MpGI run (--source, --demo); {reuses}: drop {flag}"
                )
    if args.config and args.fmt != "parquet":
        raise ValueError(
            f"--config {','.join(args.config)} applies to --format parquet; --format {args.fmt} writes "
            "one layout (drop --config)"
        )


def run(args: argparse.Namespace) -> int:
    from ..dataset_builder.build_folder import BuildFolder
    from ..dataset_builder.export import EXIT_SKIPPED, export_dataset

    out = Path(args.out)
    folder = BuildFolder(out)
    inputs = [bool(args.source), bool(args.from_run), bool(args.captions_csv), bool(args.demo)]
    if sum(inputs) != 1:
        raise ValueError("give exactly one input: --source, --from-run, --captions-csv or --demo")
    _check_applicable(args)
    sources = list(args.source or [])
    ratios = args.split_ratios or DEFAULT_RATIOS
    if args.demo:
        from ..dataset_builder.demo import demo_source_spec, make_demo_scenes

        sources = [demo_source_spec(make_demo_scenes(folder.demo_scenes))]
        ratios = args.split_ratios or DEMO_RATIOS
    report = export_dataset(
        out,
        run_dir=args.from_run,
        captions_csv=args.captions_csv,
        sources=sources,
        recipe=args.recipe or "offline",
        mpgi_dir=args.run_dir or (str(folder.mpgi_run) if sources else None),
        configs=tuple(args.config or ("default", "full", "pairs")),
        fmt=args.fmt,
        num_proc=args.num_proc,
        shard_size=args.shard_size,
        split_ratios=ratios,
        seed=args.seed,
        near_dup_distance=args.near_dup_distance,
        contamination=tuple(args.contamination or ()),
        contamination_distance=args.contamination_distance,
        keep_original=args.keep_original,
        progress=quiet_datatrove(args),
        allowed_roots=tuple(args.allow_root or ()),
    )
    splits = ", ".join(f"{s} {v['images']}" for s, v in report["splits"].items())
    print(
        f"HQRS-IT written to {out}: {report['images']} images ({splits}); "
        f"shards written {report['shards']['written']}, reused {report['shards']['reused']}; "
        f"skipped {report['skipped']}; removed from train by the contamination guard "
        f"{report['contamination']['removed_from_train']} (details: {folder.report})"
    )
    if args.strict and report["skipped"]:
        kinds = ", ".join(f"{k} {n}" for k, n in report["skipped_by_kind"].items())
        print(
            f"hqrs: error: --strict and {report['skipped']} item(s) were skipped ({kinds}); see build_report.json"
        )
        return EXIT_SKIPPED
    return 0
