"""Build HQRS-IT: :func:`build` runs MpGI → plan → write and returns a :class:`BuildReport`.

Stages and what they hand over (typed, in this order):

1. **input / MpGI** (:func:`input_results`): ``sources`` run through MpGI into a run directory, or a
   finished run directory, or a released caption CSV → :class:`~hqrs.dataset_builder.records.MpGIResult`
   per image.
2. **plan** (:func:`hqrs.dataset_builder.planning.make_plan`): every result's image is read once
   (verified, perceptual hash, image cell) and staged → :class:`~hqrs.dataset_builder.planning.Plan`
   of :class:`~hqrs.dataset_builder.planning.PlannedImage` shard lists plus the staged image cells.
3. **write** (:func:`write_shards`): rows from :func:`hqrs.dataset_builder.rows.rows_for` → parquet /
   webdataset / CSV shards → :class:`ShardResult` per shard, then the card and :class:`BuildReport`.

This is the only shard writer: :class:`~hqrs.dataset_builder.builder.HQRSIT` builds through it and reads
the parquet shards back. The folder layout is :class:`~hqrs.dataset_builder.build_folder.BuildFolder`'s
(``load_dataset(OUT)`` / ``load_dataset(OUT, "pairs")`` read it locally or from the Hub).

Every shard is written to a temporary file and renamed when complete; a rerun with the same input
and settings reuses the staged plan and skips the shards that exist. Memory does not grow with the
number of records: results are streamed into staged shard lists, and every output shard is written
row group by row group from its staged list.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import itertools
import json
import logging
import os
import tarfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .build_folder import CARD, FORMATS, SPLITS, BuildFolder, tmp_path
from .dataset_card import write_build_card
from .mpgi import iter_results, load_recipe, run_mpgi
from .parallel import bounded_map, make_pool
from .planning import IMAGES_FILE, ImageStaging, Plan, SplitSettings, StagedImages, iter_planned, make_plan
from .records import Caption, MpGIResult, atomic_write_bytes, check_image_id
from .rows import CONFIG_NAMES, FEATURES, caption_length, encode_rows, label_text, nonempty_captions, rows_for
from .sources import DUPLICATE_REASON, CellSink, captions_csv_spec, iter_records, load_source, load_sources
from .sources.base import SkipReport
from .sources.images import ImageCell, encode_cell, needs_encoding

logger = logging.getLogger("hqrs.export")


ROW_GROUP_ROWS = 100  # datasets' row group size for image datasets
EXIT_SKIPPED = 3  # `hqrs build --strict` exit status when anything was skipped


# --------------------------------------------------------------------------------------------- settings


@dataclass
class BuildInput:
    """What to build from: exactly one of ``run_dir`` (a finished MpGI run directory), ``captions_csv``
    (a released caption CSV: an ``openclip-csv`` source spec or a path; its captions are the final
    captions) or ``sources`` (source specs; MpGI runs with ``recipe`` into ``mpgi_dir``, default
    ``OUT/.cache/hqrs_mpgi``).

    Raises:
        ValueError: more than one input given.
    """

    run_dir: str | None = None
    captions_csv: str | None = None
    sources: tuple[str, ...] = ()
    recipe: str = "offline"
    mpgi_dir: str | None = None

    def __post_init__(self) -> None:
        self.sources = tuple(self.sources)
        given = [k for k in ("run_dir", "captions_csv") if getattr(self, k)] + (
            ["sources"] if self.sources else []
        )
        if len(given) > 1:
            raise ValueError(f"give exactly one input (run_dir, captions_csv or sources), got {given}")

    def to_report(self) -> dict[str, Any]:
        return {
            "run_dir": self.run_dir,
            "captions_csv": self.captions_csv,
            "sources": list(self.sources),
            "recipe": self.recipe,
        }


@dataclass
class BuildConfig:
    """How to build: output format and configs, worker processes, image encoding and the split settings
    (:class:`~hqrs.dataset_builder.planning.SplitSettings`, the one place their defaults live).

    Raises:
        ValueError: an unknown format or config, or ``num_proc < 1``.
    """

    fmt: str = "parquet"
    configs: tuple[str, ...] = CONFIG_NAMES
    num_proc: int = 1
    keep_original: bool = False
    progress: bool = True
    split: SplitSettings = field(default_factory=SplitSettings)
    extra_report: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.fmt!r}")
        self.configs = tuple(self.configs)
        unknown = [c for c in self.configs if c not in CONFIG_NAMES]
        if unknown or not self.configs:
            raise ValueError(f"configs must be a non-empty subset of {CONFIG_NAMES}, got {self.configs!r}")
        if int(self.num_proc) < 1:
            raise ValueError(f"num_proc must be >= 1, got {self.num_proc!r}")
        self.num_proc = int(self.num_proc)
        self.keep_original = bool(self.keep_original)


@dataclass
class ShardResult:
    """One written (or reused) output shard."""

    path: str
    config: str
    split: str
    rows: int
    bytes: int
    reused: bool


@dataclass
class BuildReport:
    """What a build did; :meth:`to_dict` is ``build_report.json`` (and what :func:`export_dataset`
    returns)."""

    format: str
    configs: list[str]
    input: dict[str, Any]
    records: dict[str, int]
    images: int
    skipped: int
    skipped_by_kind: dict[str, int]
    exact_duplicates: int
    skipped_items: list[dict[str, Any]]
    near_duplicates: dict[str, Any]
    contamination: dict[str, Any]
    split_ratios: list[float]
    seed: str
    splits: dict[str, dict[str, Any]]
    shards: dict[str, Any]
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {**{k: v for k, v in data.items() if k != "extra"}, **data["extra"]}


# --------------------------------------------------------------------------------------------- 1. input


def results_from_captions_csv(
    spec: str, report: SkipReport, pool=None, cells: CellSink | None = None
) -> Iterator[MpGIResult]:
    """Results from a released caption CSV: the CSV captions are the final captions (image analysis in
    ``pool``'s workers if given; image cells handed to ``cells`` if given, see
    :meth:`~hqrs.dataset_builder.sources.base.Source.records`)."""
    # the same duplicate check as the --source path (iter_records): one skip per exact duplicate
    for record in iter_records([load_source(captions_csv_spec(spec)[0])], report, pool, cells):
        captions = [
            Caption(text=t, length=caption_length(t), sources=["released"]) for t in record.references
        ]
        yield MpGIResult(record=replace(record, references=[]), rule_text="", captions=captions)


def _tree_fingerprint(path: Path) -> list[Any]:
    if path.is_file():
        st = path.stat()
        return [str(path.resolve()), st.st_size, st.st_mtime_ns]
    out = []
    for p in sorted(path.rglob("*")):
        if p.is_file() and not {"checkpoints", "logs"} & set(p.relative_to(path).parts):
            st = p.stat()
            out.append([str(p.relative_to(path)), st.st_size, st.st_mtime_ns])
    return [str(path.resolve()), out]


def _noting_ids(records: Iterable[Any], ids: set[str]) -> Iterator[Any]:
    """``records`` unchanged, adding each image id to ``ids`` as it passes."""
    for record in records:
        ids.add(record.image_id)
        yield record


def input_results(
    inp: BuildInput,
    folder: BuildFolder,
    report: SkipReport,
    pool=None,
    progress: bool = False,
    cells: CellSink | None = None,
) -> tuple[Iterator[MpGIResult], list[Any]]:
    """Stage 1: the MpGI results to build from and the fingerprint of that input. ``sources`` run
    through MpGI first (into ``inp.mpgi_dir`` or ``folder.mpgi_cache``; image analysis in ``pool``), and
    only the results of the images these sources gave are built: a run directory reused with other
    sources keeps its earlier results (MpGI does not redo them when they come back), but they are not
    part of this build.
    The source analysis of ``sources`` or a caption CSV hands each image's cell to ``cells`` (the
    build's :class:`~hqrs.dataset_builder.planning.ImageStaging`), so the plan need not read it again.

    Raises:
        ValueError: no input, or a run directory that is not one.
    """
    if inp.sources:
        run_dir = Path(inp.mpgi_dir) if inp.mpgi_dir else folder.mpgi_cache
        ids: set[str] = set()  # the images this input gave: the run directory may hold others too
        run_mpgi(
            _noting_ids(iter_records(load_sources(list(inp.sources)), report, pool, cells), ids),
            load_recipe(inp.recipe),
            run_dir,
            progress=progress,
        )
        ids_digest = hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()
        fingerprint = ["sources", ids_digest, _tree_fingerprint(run_dir / "passes")]
        return (r for r in iter_results(run_dir) if r.image_id in ids), fingerprint
    elif inp.run_dir:
        run_dir = Path(inp.run_dir)
    elif inp.captions_csv:
        csv_path = captions_csv_spec(inp.captions_csv)[1]
        fingerprint = ["csv", inp.captions_csv, _tree_fingerprint(csv_path)]
        return results_from_captions_csv(inp.captions_csv, report, pool, cells), fingerprint
    else:
        raise ValueError("a build needs an input: run_dir=, captions_csv= or sources=")
    if not (run_dir / "recipe.json").is_file():
        raise ValueError(f"{str(run_dir)!r} is not an MpGI run directory (no recipe.json)")
    return iter_results(run_dir), ["run", _tree_fingerprint(run_dir / "passes")]


# --------------------------------------------------------------------------------------------- 2. plan


def plan_build(
    inp: BuildInput, folder: BuildFolder, config: BuildConfig, report: SkipReport, pool=None
) -> tuple[Plan, Path]:
    """Stages 1 and 2: the input's results, staged, split and sharded in ``folder.staging`` (a finished
    plan of the same input and settings is reused). The image staging is opened first, so the source
    analysis (sources, caption CSV) stages each image's cell from its one read of the file. (A caption
    CSV is analysed only when the plan is made; sources are analysed before it is known whether a
    staged plan can be reused, so a rerun over an existing plan does not stage cells: the plan reads
    the files it needs.)"""
    rerun = bool(inp.sources) and (folder.staging / "plan.json").is_file()
    with ImageStaging(folder.staging, config.keep_original, hand_over=not rerun) as images:
        return _plan_build(inp, folder, config, report, pool, images)


def _plan_build(
    inp: BuildInput, folder: BuildFolder, config: BuildConfig, report: SkipReport, pool, images: ImageStaging
) -> tuple[Plan, Path]:
    results, input_fp = input_results(inp, folder, report, pool, config.progress, images)
    settings = config.split
    fingerprint = hashlib.sha256(
        json.dumps(
            [input_fp, settings.__dict__, {"keep_original": config.keep_original}],
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()
    staging = folder.staging
    plan = make_plan(
        results,
        settings,
        staging,
        fingerprint,
        report,
        progress=config.progress,
        pool=pool,
        keep_original=config.keep_original,
        images=images,
    )
    return plan, staging


# --------------------------------------------------------------------------------------------- 3. write


@dataclass
class _Task:
    kind: str  # parquet | wds | csv
    config: str
    split: str
    index: int
    total: int
    files: list[str]  # staged PlannedImage shard files
    out: str
    images: str  # the staged image cells (planning.IMAGES_FILE)
    keep_original: bool = False


def _with_cells(task: _Task, pool=None) -> Iterator[tuple[MpGIResult, ImageCell]]:
    """The task's planned results with their image cells, from the staged cells (no input file is read
    here); re-encoding runs in ``pool``'s workers when given."""
    staged = StagedImages(Path(task.images))
    keep = task.keep_original
    pairs = ((planned.result, staged.cell(planned.index)) for planned in iter_planned(task.files))
    for (result, _), cell in bounded_map(
        encode_cell,
        pairs,
        pool,
        remote=lambda pair: needs_encoding(pair[1].path, keep),
        arg=lambda pair: (pair[1], pair[0].record.image_id, keep),
    ):
        yield result, cell


def _run_task(task: _Task, pool=None) -> ShardResult:
    return _run_pass([task], pool)[0]


def _run_pass(tasks: list[_Task], pool=None) -> list[ShardResult]:
    """Write the shards of ``tasks`` (one staged shard list: the parquet configs of one shard, or one
    webdataset / CSV part) in one pass over its images; a shard that exists is reused."""
    results: dict[int, ShardResult] = {}
    todo = []
    for i, task in enumerate(tasks):
        out = Path(task.out)
        if out.exists():
            rows, size = _shard_stats(task, out)
            results[i] = ShardResult(task.out, task.config, task.split, rows, size, reused=True)
        else:
            todo.append(i)
    if todo:
        tmps = {}
        for i in todo:
            out = Path(tasks[i].out)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmps[i] = tmp_path(out)
        try:
            cells = _with_cells(tasks[todo[0]], pool)
            first = tasks[todo[0]]
            if first.kind == "parquet":
                rows = _write_parquet([tasks[i] for i in todo], [tmps[i] for i in todo], cells)
            elif first.kind == "wds":
                rows = [_write_wds(first, tmps[todo[0]], cells)]
            else:
                rows = [_write_csv_part(first, tmps[todo[0]], cells)]
            for i in todo:
                os.replace(tmps[i], tasks[i].out)
        except BaseException:
            for tmp in tmps.values():
                with contextlib.suppress(OSError):
                    tmp.unlink()
            raise
        for i, n in zip(todo, rows):
            t = tasks[i]
            results[i] = ShardResult(t.out, t.config, t.split, n, Path(t.out).stat().st_size, reused=False)
    return [results[i] for i in range(len(tasks))]


def _shard_stats(task: _Task, out: Path) -> tuple[int, int]:
    if task.kind == "parquet":
        import pyarrow.parquet as pq

        rows = pq.ParquetFile(out).metadata.num_rows
    elif task.kind == "wds":
        with tarfile.open(out) as tar:
            rows = sum(1 for m in tar.getmembers() if m.name.endswith(".json"))
    else:
        with open(out, encoding="utf-8") as f:
            rows = sum(1 for _ in f)
    return rows, out.stat().st_size


def _write_parquet(
    tasks: list[_Task], tmps: list[Path], cells: Iterable[tuple[MpGIResult, ImageCell]]
) -> list[int]:
    """Every config's shard of one staged shard list, in one pass (row groups of ROW_GROUP_ROWS)."""
    import pyarrow.parquet as pq

    features = [FEATURES[t.config] for t in tasks]
    counts = [0] * len(tasks)
    batches: list[list[dict[str, Any]]] = [[] for _ in tasks]
    with contextlib.ExitStack() as stack:
        writers = [
            stack.enter_context(pq.ParquetWriter(tmp, f.arrow_schema)) for tmp, f in zip(tmps, features)
        ]
        for result, cell in cells:
            for k, task in enumerate(tasks):
                for _, row in rows_for(task.config, result, cell):
                    batches[k].append(row)
                    if len(batches[k]) >= ROW_GROUP_ROWS:
                        writers[k].write_table(encode_rows(features[k], batches[k]))
                        counts[k] += len(batches[k])
                        batches[k] = []
        for k in range(len(tasks)):
            if batches[k] or counts[k] == 0:
                writers[k].write_table(encode_rows(features[k], batches[k]))
                counts[k] += len(batches[k])
    return counts


def _sample_json(result: MpGIResult, captions: list[Caption]) -> dict[str, Any]:
    r = result.record
    return {
        "image_id": r.image_id,
        "source": r.source,
        "captions": [c.text for c in captions],
        "lengths": [c.length for c in captions],
        "label": label_text(r.labels or []),
        "width": r.width,
        "height": r.height,
        "gsd": r.gsd,
    }


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _member_name(image_id: Any, ext: str) -> str:
    """``<id>.<ext>``: a plain member name (the id is checked: no ``/``, ``..`` or absolute names)."""
    check_image_id(image_id, "webdataset member")
    if not ext.isalnum():
        raise ValueError(f"webdataset member: extension {ext!r} is not alphanumeric")
    return f"{image_id}.{ext}"


def _write_wds(task: _Task, tmp: Path, cells: Iterable[tuple[MpGIResult, ImageCell]]) -> int:
    n = 0
    with tarfile.open(tmp, "w") as tar:
        for result, cell in cells:
            image_id = check_image_id(result.record.image_id, "webdataset member")
            captions = nonempty_captions(result)
            _add_bytes(tar, _member_name(image_id, cell.ext), cell.bytes)
            _add_bytes(tar, f"{image_id}.txt", "\n".join(c.text for c in captions).encode())
            sample = json.dumps(_sample_json(result, captions), ensure_ascii=False).encode()
            _add_bytes(tar, f"{image_id}.json", sample)
            n += 1
    return n


def _write_csv_part(task: _Task, tmp: Path, cells: Iterable[tuple[MpGIResult, ImageCell]]) -> int:
    folder = BuildFolder(Path(task.out).parent.parent)  # OUT (the part files are OUT/.parts/*.tsv)
    folder.images.mkdir(parents=True, exist_ok=True)  # a pre-planted OUT/images link is refused
    n = 0
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        for result, cell in cells:
            check_image_id(result.record.image_id, "open_clip CSV image")
            target = folder.image_file(cell.path)
            if not target.exists():
                atomic_write_bytes(target, cell.bytes)
            for cap in nonempty_captions(result):
                writer.writerow([f"images/{cell.path}", " ".join(cap.text.split())])
                n += 1
    return n


def _tasks(
    fmt: str, configs: Iterable[str], plan: Plan, staging: Path, folder: BuildFolder, keep_original: bool
) -> list[_Task]:
    images = str(staging / IMAGES_FILE)
    tasks = []
    for split in SPLITS:
        if split not in plan.splits:
            continue
        files = plan.shard_files(staging, split)
        total = len(files)
        for k, file in enumerate(files):
            if fmt == "parquet":
                for config in configs:
                    target = folder.parquet_shard(config, split, k, total)
                    tasks.append(
                        _Task("parquet", config, split, k, total, [file], str(target), images, keep_original)
                    )
            elif fmt == "webdataset":
                target = folder.wds_shard(split, k, total)
                tasks.append(
                    _Task("wds", "default", split, k, total, [file], str(target), images, keep_original)
                )
            else:
                target = folder.csv_part(split, k, total)
                tasks.append(
                    _Task("csv", "pairs", split, k, total, [file], str(target), images, keep_original)
                )
    return tasks


def _drop_stale_shards(folder: BuildFolder, tasks: list[_Task], stamp: dict[str, Any]) -> None:
    """A rerun reuses a finished shard only when it was written for the same plan (inputs, split
    settings, shard size, image encoding); every other shard in the folder (another plan's, or one this
    plan does not name, e.g. of another shard count or config) is deleted, so it holds this plan only.

    When the folder's earlier build (its stamp) was of another format, that format's other files go too
    (:meth:`~hqrs.dataset_builder.build_folder.BuildFolder.format_artefacts`: the parquet card and
    ``data/``, the CSV files and ``images/``), and an open_clip-csv rerun of another plan starts with no
    ``images/`` and ``<split>.csv`` of the earlier one: the folder holds what a fresh build writes."""
    path = folder.stamp
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        old = old if isinstance(old, dict) else {}
    except (OSError, ValueError):
        old = None
    same = old is not None and old.get("plan") == stamp["plan"]
    if old is not None:  # an hqrs build wrote here (a stamp of an older version names no format)
        old_fmt = old.get("format") or folder.format()
        if old_fmt in FORMATS and (old_fmt != stamp["format"] or not same):
            for artefact in folder.format_artefacts(old_fmt):
                if old_fmt != stamp["format"] or artefact.name != CARD:  # the card is rewritten
                    folder.remove(artefact)
    wanted = {Path(t.out) for t in tasks}
    for shard in folder.existing_shards():
        if not same or shard not in wanted:
            shard.unlink()
    folder.remove_empty_config_dirs()
    atomic_write_bytes(path, json.dumps(stamp).encode())


def write_shards(tasks: list[_Task], pool=None, progress: bool = False) -> list[ShardResult]:
    """Stage 3: write every shard; the tasks of one staged shard list (the parquet configs of a shard)
    are written in one pass over its images, and TIFF / BMP re-encoding runs in ``pool`` when given."""
    results = []
    groups = [list(g) for _, g in itertools.groupby(tasks, key=lambda t: (t.kind, t.split, t.index, t.files))]
    with tqdm(total=len(tasks), desc="writing shards", unit=" shards", disable=not progress) as bar:
        for group in groups:
            results.extend(_run_pass(group, pool))
            bar.update(len(group))
    return results


def write_card(
    out: Path,
    configs: Iterable[str],
    split_rows: dict[str, dict[str, int]],
    split_bytes: dict[str, dict[str, int]],
    pretty_name: str = "HQRS-IT",
) -> None:
    """README.md with YAML ``configs`` (data files per split) and ``dataset_info`` (features, splits):
    :func:`~hqrs.dataset_builder.dataset_card.write_build_card`, the writer `hqrs push dataset` uses too."""
    write_build_card(out, {c: FEATURES[c] for c in configs}, split_rows, split_bytes, pretty_name)


def build(
    inp: BuildInput, out: str | os.PathLike | BuildFolder, config: BuildConfig | None = None
) -> BuildReport:
    """Build HQRS-IT from ``inp`` into the build folder ``out``: MpGI → plan → write, then card and report.

    Example:
        >>> report = build(BuildInput(captions_csv="caps.csv"), "out", BuildConfig(configs=("pairs",)))  # doctest: +SKIP
        >>> report.images, report.splits["train"]["images"]  # doctest: +SKIP

    Raises:
        ValueError: bad settings, an input that is not one, or an input that gives no image at all (the
            build report with every skip and its reason is written first).
    """
    started = time.perf_counter()
    config = config if config is not None else BuildConfig()
    folder = out if isinstance(out, BuildFolder) else BuildFolder(out)
    folder.root.mkdir(parents=True, exist_ok=True)
    folder.remove_stale_tmp()  # left by a build killed with kill -9 (#13.4)
    fmt, configs = config.fmt, config.configs
    report = SkipReport()
    with contextlib.ExitStack() as stack:
        pool = make_pool(config.num_proc)
        if pool is not None:
            stack.enter_context(pool)
        plan, staging = plan_build(inp, folder, config, report, pool)
        tasks = _tasks(fmt, configs, plan, staging, folder, config.keep_original)
        _drop_stale_shards(folder, tasks, {"plan": plan.fingerprint, "format": fmt})
        shards = write_shards(tasks, pool, config.progress)

    written = configs if fmt == "parquet" else ()
    split_rows: dict[str, dict[str, int]] = {c: {} for c in written}
    split_bytes: dict[str, dict[str, int]] = {c: {} for c in written}
    for shard in shards:
        split_rows.setdefault(shard.config, {}).setdefault(shard.split, 0)
        split_bytes.setdefault(shard.config, {}).setdefault(shard.split, 0)
        split_rows[shard.config][shard.split] += shard.rows
        split_bytes[shard.config][shard.split] += shard.bytes
    if fmt == "parquet" and plan.stats["images"]:
        write_card(folder.root, configs, split_rows, split_bytes)
    elif fmt == "parquet":  # no image: no card naming data files that are not there
        folder.card.unlink(missing_ok=True)
    elif fmt == "open_clip-csv":
        _join_csv_parts(folder, tasks)

    data = report.to_dict()
    result = BuildReport(
        format=fmt,
        configs=list(written),
        input=inp.to_report(),
        records=data["records"],
        images=plan.stats["images"],
        skipped=data["skipped"],
        skipped_by_kind=data["skipped_by_kind"],
        exact_duplicates=report.count(DUPLICATE_REASON),
        skipped_items=data["items"],
        near_duplicates=plan.stats["near_duplicates"],
        contamination=plan.stats["contamination"],
        split_ratios=plan.stats["split_ratios"],
        seed=plan.stats["seed"],
        splits={
            s: {
                "images": plan.splits[s].num_examples,
                "rows": {c: split_rows.get(c, {}).get(s, 0) for c in split_rows},
            }
            for s in plan.splits
        },
        shards={
            "size": plan.stats["shard_size"],
            "written": sum(1 for r in shards if not r.reused),
            "reused": sum(1 for r in shards if r.reused),
            "files": [folder.relative(r.path) for r in shards if fmt != "open_clip-csv"],
        },
        seconds=round(time.perf_counter() - started, 3),
        extra=dict(config.extra_report),
    )
    atomic_write_bytes(folder.report, json.dumps(result.to_dict(), indent=1, ensure_ascii=False).encode())
    if not result.images:
        reasons = Counter(i["reason"][:120] for i in data["items"])
        top = "; ".join(f"{n}× {r}" for r, n in reasons.most_common(3)) or "the input holds no image"
        raise ValueError(
            f"the build read no usable image ({data['skipped']} item(s) skipped: {top}); see "
            f"{folder.report} for every skip and its reason"
        )
    return result


_SPLIT = SplitSettings  # the split defaults below are SplitSettings' (its fields' class attributes)


def export_dataset(
    out_dir: str | os.PathLike,
    *,
    run_dir: str | None = None,
    captions_csv: str | None = None,
    sources: Iterable[str] = (),
    recipe: str = "offline",
    mpgi_dir: str | None = None,
    configs: Iterable[str] = CONFIG_NAMES,
    fmt: str = "parquet",
    num_proc: int = 1,
    shard_size: int | str = _SPLIT.shard_size,
    split_ratios: tuple[float, float, float] | str = _SPLIT.ratios,
    seed: str = _SPLIT.seed,
    near_dup_distance: int = _SPLIT.near_dup_distance,
    contamination: Iterable[str] = (),
    contamination_distance: int = _SPLIT.contamination_distance,
    keep_original: bool = False,
    progress: bool = True,
    extra_report: dict[str, Any] | None = None,
    allowed_roots: Iterable[str] = (),
) -> dict[str, Any]:
    """:func:`build` with keyword settings; returns the build report as a dict (``build_report.json``).

    See :class:`BuildInput` for the inputs, :mod:`hqrs.dataset_builder.rows` for the configs and
    :class:`~hqrs.dataset_builder.build_folder.BuildFolder` for the layout. ``fmt``: ``parquet``
    (hub-ready, all ``configs``), ``open_clip-csv`` (``images/`` + ``<split>.csv``, tab-separated
    ``filepath`` / ``caption``, one row per caption) or ``webdataset`` (``<split>-XXXXX-of-YYYYY.tar``
    with ``<id>.jpg|png``, ``<id>.txt`` captions, ``<id>.json`` metadata). ``allowed_roots``: folders
    every input image must resolve inside (default: anywhere, but every image is re-verified against its
    id, see :func:`~hqrs.dataset_builder.planning.read_verified`).

    Raises:
        ValueError: see :func:`build`.
    """
    config = BuildConfig(
        fmt=fmt,
        configs=tuple(configs),
        num_proc=num_proc,
        keep_original=keep_original,
        progress=progress,
        extra_report=dict(extra_report or {}),
        split=SplitSettings(
            ratios=split_ratios,
            seed=seed,
            near_dup_distance=near_dup_distance,
            contamination=tuple(contamination),
            contamination_distance=contamination_distance,
            shard_size=shard_size,
            allowed_roots=tuple(str(r) for r in allowed_roots),
        ),
    )
    inp = BuildInput(
        run_dir=run_dir, captions_csv=captions_csv, sources=tuple(sources), recipe=recipe, mpgi_dir=mpgi_dir
    )
    return build(inp, out_dir, config).to_dict()


def _join_csv_parts(folder: BuildFolder, tasks: list[_Task]) -> None:
    for split in SPLITS:
        parts = [Path(t.out) for t in tasks if t.split == split]
        if not parts:
            continue
        target = folder.csv_file(split)
        tmp = tmp_path(target)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("filepath\tcaption\n")
            for part in parts:
                with open(part, encoding="utf-8") as p:
                    for line in p:
                        f.write(line)
        os.replace(tmp, target)


__all__ = [
    "EXIT_SKIPPED",
    "FORMATS",
    "BuildConfig",
    "BuildInput",
    "BuildReport",
    "ShardResult",
    "build",
    "export_dataset",
    "input_results",
    "plan_build",
    "results_from_captions_csv",
    "write_card",
    "write_shards",
]
