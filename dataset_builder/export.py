"""Write HQRS-IT as a hub-ready folder (parquet + card), an open_clip CSV, or webdataset shards.

Parquet layout (``load_dataset(OUT)`` / ``load_dataset(OUT, "pairs")`` read it locally or from the Hub)::

    OUT/README.md                                      card with YAML ``configs`` and ``dataset_info``
    OUT/build_report.json                              counts, skipped items with file and reason, splits
    OUT/data/<config>/<split>-XXXXX-of-YYYYY.parquet   image bytes embedded, row groups of 100 rows

Every shard is written to a temporary file and renamed when complete; a rerun with the same input
and settings reuses the staged plan and skips the shards that exist. Memory does not grow with the
number of records: results are streamed into staged shard lists, and every output shard is written
row group by row group from its staged list.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import tarfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .builder import (
    CONFIG_NAMES,
    FEATURES,
    HQRSIT,
    encode_rows,
    iter_staged,
    label_text,
    nonempty_captions,
    rows_for,
)
from .dataset_card import write_build_card
from .parallel import bounded_map, make_pool
from .planning import SPLITS, parse_ratios
from .records import atomic_write_bytes, check_image_id, inside
from .sources import DUPLICATE_REASON
from .sources.base import SkipReport
from .sources.images import WEB_EXTENSIONS, image_cell_job

logger = logging.getLogger("hqrs.export")

FORMATS = ("parquet", "open_clip-csv", "webdataset")
ROW_GROUP_ROWS = 100  # datasets' row group size for image datasets
EXIT_SKIPPED = 3  # `hqrs build --strict` exit status when anything was skipped


@dataclass
class _Task:
    kind: str  # parquet | wds | csv
    config: str
    split: str
    index: int
    total: int
    files: list[str]
    out: str
    keep_original: bool = False


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _remove_stale_tmp(folder: Path) -> int:
    """Remove the ``.NAME.PID.tmp`` files of builds that were killed (their PID no longer runs)."""
    removed = 0
    for tmp in folder.rglob(".*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running (or the PID was reused): leave it
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):
            continue
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def _cell_args(doc: dict[str, Any], keep_original: bool) -> tuple[str, str, bool]:
    return doc["record"]["image"], check_image_id(doc["record"]["image_id"]), keep_original


def _needs_encoding(doc: dict[str, Any], keep_original: bool) -> bool:
    return not keep_original and Path(doc["record"]["image"]).suffix.lower() not in WEB_EXTENSIONS


def _with_cells(task: _Task, pool) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Staged docs with their image cells; re-encoding (TIFF → PNG) runs in ``pool`` if given."""
    keep = task.keep_original
    return bounded_map(
        image_cell_job,
        iter_staged(task.files),
        pool,
        remote=lambda doc: _needs_encoding(doc, keep),
        arg=lambda doc: _cell_args(doc, keep),
    )


def _run_task(task: _Task, pool=None) -> dict[str, Any]:
    out = Path(task.out)
    if out.exists():
        return {"out": task.out, "reused": True, **_shard_stats(task, out)}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(out)
    try:
        if task.kind == "parquet":
            rows = _write_parquet(task, tmp, pool)
        elif task.kind == "wds":
            rows = _write_wds(task, tmp, pool)
        else:
            rows = _write_csv_part(task, tmp, pool)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return {"out": task.out, "reused": False, "rows": rows, "bytes": out.stat().st_size}


def _shard_stats(task: _Task, out: Path) -> dict[str, Any]:
    if task.kind == "parquet":
        import pyarrow.parquet as pq

        rows = pq.ParquetFile(out).metadata.num_rows
    elif task.kind == "wds":
        with tarfile.open(out) as tar:
            rows = sum(1 for m in tar.getmembers() if m.name.endswith(".json"))
    else:
        with open(out, encoding="utf-8") as f:
            rows = sum(1 for _ in f)
    return {"rows": rows, "bytes": out.stat().st_size}


def _write_parquet(task: _Task, tmp: Path, pool=None) -> int:
    import pyarrow.parquet as pq

    features = FEATURES[task.config]
    n = 0
    with pq.ParquetWriter(tmp, features.arrow_schema) as writer:
        batch: list[dict[str, Any]] = []
        for doc, cell in _with_cells(task, pool):
            for _, row in rows_for(task.config, doc, task.keep_original, cell):
                batch.append(row)
                if len(batch) >= ROW_GROUP_ROWS:
                    writer.write_table(encode_rows(features, batch))
                    n += len(batch)
                    batch = []
        if batch or n == 0:
            writer.write_table(encode_rows(features, batch))
            n += len(batch)
    return n


def _sample_json(doc: dict[str, Any], captions: list[dict[str, Any]]) -> dict[str, Any]:
    r = doc["record"]
    return {
        "image_id": r["image_id"],
        "source": r["source"],
        "captions": [c["text"] for c in captions],
        "lengths": [c["length"] for c in captions],
        "label": label_text(r.get("labels") or []),
        "width": r["width"],
        "height": r["height"],
        "gsd": r.get("gsd"),
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


def _write_wds(task: _Task, tmp: Path, pool=None) -> int:
    n = 0
    with tarfile.open(tmp, "w") as tar:
        for doc, cell in _with_cells(task, pool):
            image_id = check_image_id(doc["record"]["image_id"], "webdataset member")
            captions = nonempty_captions(doc)
            ext = Path(cell["path"]).suffix.lstrip(".")
            _member_name(image_id, ext)
            _add_bytes(tar, f"{image_id}.{ext}", cell["bytes"])
            _add_bytes(tar, f"{image_id}.txt", "\n".join(c["text"] for c in captions).encode())
            sample = json.dumps(_sample_json(doc, captions), ensure_ascii=False).encode()
            _add_bytes(tar, f"{image_id}.json", sample)
            n += 1
    return n


def _write_csv_part(task: _Task, tmp: Path, pool=None) -> int:
    root = Path(task.out).parent.parent  # OUT (the part files are OUT/.parts/*.tsv)
    images_dir = inside(root, "images")  # a pre-planted OUT/images link to elsewhere is refused
    images_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        for doc, cell in _with_cells(task, pool):
            check_image_id(doc["record"]["image_id"], "open_clip CSV image")
            target = inside(root, "images", cell["path"])
            if not target.exists():
                atomic_write_bytes(target, cell["bytes"])
            for cap in nonempty_captions(doc):
                writer.writerow([f"images/{cell['path']}", " ".join(cap["text"].split())])
                n += 1
    return n


def _tasks(
    fmt: str, configs: Iterable[str], plan, staging: Path, out: Path, keep_original: bool = False
) -> list[_Task]:
    tasks = []
    for split in SPLITS:
        if split not in plan.splits:
            continue
        files = plan.shard_files(staging, split)
        total = len(files)
        for k, file in enumerate(files):
            if fmt == "parquet":
                for config in configs:
                    target = inside(out, "data", config, f"{split}-{k:05d}-of-{total:05d}.parquet")
                    tasks.append(
                        _Task("parquet", config, split, k, total, [file], str(target), keep_original)
                    )
            elif fmt == "webdataset":
                target = inside(out, f"{split}-{k:05d}-of-{total:05d}.tar")
                tasks.append(_Task("wds", "default", split, k, total, [file], str(target), keep_original))
            else:
                target = inside(out, ".parts", f"{split}-{k:05d}-of-{total:05d}.tsv")
                tasks.append(_Task("csv", "pairs", split, k, total, [file], str(target), keep_original))
    return tasks


_STAMP = ".hqrs_export.json"
_SHARD_GLOBS = ("data/*/*.parquet", "*-of-*.tar", ".parts/*.tsv")


def _drop_stale_shards(out: Path, tasks: list[_Task], stamp: dict[str, Any]) -> None:
    """A rerun reuses a finished shard only when it was written for the same plan (inputs, split
    settings, shard size) and image encoding; every other shard in ``out`` (another plan's, or one this
    plan does not name, e.g. of another shard count or config) is deleted, so ``out`` holds this plan only."""
    path = out / _STAMP
    try:
        same = json.loads(path.read_text(encoding="utf-8")) == stamp
    except (OSError, ValueError):
        same = False
    wanted = {Path(t.out) for t in tasks}
    for pattern in _SHARD_GLOBS:
        for shard in out.glob(pattern):
            try:
                inside(out, str(shard.relative_to(out)))
            except ValueError:  # reached through a link to another folder: not ours to delete
                continue
            if not same or shard not in wanted:
                shard.unlink()
    atomic_write_bytes(path, json.dumps(stamp).encode())


def _run_tasks(tasks: list[_Task], pool, progress: bool) -> list[dict[str, Any]]:
    """Write the shards one after the other; with ``pool`` the image re-encoding of each runs in it."""
    results = []
    with tqdm(total=len(tasks), desc="writing shards", unit=" shards", disable=not progress) as bar:
        for task in tasks:
            results.append(_run_task(task, pool))
            bar.update()
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
    shard_size: int | str = 2000,
    split_ratios: tuple[float, float, float] | str = (0.9, 0.05, 0.05),
    seed: str = "hqrs-it",
    near_dup_distance: int = 4,
    contamination: Iterable[str] = (),
    contamination_distance: int = 4,
    keep_original: bool = False,
    progress: bool = True,
    extra_report: dict[str, Any] | None = None,
    allowed_roots: Iterable[str] = (),
) -> dict[str, Any]:
    """Build HQRS-IT from one input and write it to ``out_dir``; returns the build report.

    See :class:`~hqrs.dataset_builder.builder.HQRSIT` for the inputs and configs and the module docstring
    for the layout. ``fmt``: ``parquet`` (hub-ready, all ``configs``), ``open_clip-csv`` (``images/`` +
    ``<split>.csv``, tab-separated ``filepath`` / ``caption``, one row per caption) or ``webdataset``
    (``<split>-XXXXX-of-YYYYY.tar`` with ``<id>.jpg|png``, ``<id>.txt`` captions, ``<id>.json`` metadata).
    ``allowed_roots``: folders every input image must resolve inside (default: anywhere, but every image
    is re-verified against its id, see :func:`~hqrs.dataset_builder.planning.verify_image`).

    Raises:
        ValueError: bad settings, an input that is not one, or an input that gives no image at all (the
            build report with every skip and its reason is written first).
    """
    started = time.perf_counter()
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    configs = tuple(configs)
    unknown = [c for c in configs if c not in CONFIG_NAMES]
    if unknown or not configs:
        raise ValueError(f"configs must be a non-empty subset of {CONFIG_NAMES}, got {configs!r}")
    if int(num_proc) < 1:
        raise ValueError(f"num_proc must be >= 1, got {num_proc!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(out)  # left by a build killed with kill -9 (#13.4)
    split_ratios = parse_ratios(split_ratios)
    report = SkipReport()
    builder = HQRSIT(
        config_name="default",
        cache_dir=str(out / ".cache"),
        run_dir=run_dir,
        captions_csv=captions_csv,
        sources=tuple(sources),
        recipe=recipe,
        mpgi_dir=mpgi_dir,
        staging_dir=str(out / ".staging"),
        split_ratios=tuple(split_ratios),
        seed=seed,
        near_dup_distance=near_dup_distance,
        contamination=tuple(contamination),
        contamination_distance=contamination_distance,
        shard_size=shard_size,
        keep_original=bool(keep_original),
        progress=progress,
        allowed_roots=tuple(str(r) for r in allowed_roots),
    )
    # datasets' builder leaves a lock file in its cache folder: removed however the build ends
    with contextlib.ExitStack() as stack:
        stack.callback(_remove_locks, out / ".cache")
        pool = make_pool(int(num_proc))
        if pool is not None:
            stack.enter_context(pool)
        plan, staging = builder.plan(report, pool)
        tasks = _tasks(fmt, configs, plan, staging, out, bool(keep_original))
        _drop_stale_shards(out, tasks, {"plan": plan.fingerprint, "keep_original": bool(keep_original)})
        results = _run_tasks(tasks, pool, progress)

    split_rows: dict[str, dict[str, int]] = {c: {} for c in (configs if fmt == "parquet" else ())}
    split_bytes: dict[str, dict[str, int]] = {c: {} for c in (configs if fmt == "parquet" else ())}
    for task, res in zip(tasks, results):
        split_rows.setdefault(task.config, {}).setdefault(task.split, 0)
        split_bytes.setdefault(task.config, {}).setdefault(task.split, 0)
        split_rows[task.config][task.split] += res["rows"]
        split_bytes[task.config][task.split] += res["bytes"]
    if fmt == "parquet":
        write_card(out, configs, split_rows, split_bytes)
    elif fmt == "open_clip-csv":
        _join_csv_parts(out, tasks)

    data = report.to_dict()
    build_report = {
        "format": fmt,
        "configs": list(configs) if fmt == "parquet" else [],
        "input": {
            "run_dir": run_dir,
            "captions_csv": captions_csv,
            "sources": list(sources),
            "recipe": recipe,
        },
        "records": data["records"],
        "images": plan.stats["images"],
        "skipped": data["skipped"],
        "skipped_by_kind": data["skipped_by_kind"],
        "exact_duplicates": report.count(DUPLICATE_REASON),
        "skipped_items": data["items"],
        "near_duplicates": plan.stats["near_duplicates"],
        "contamination": plan.stats["contamination"],
        "split_ratios": plan.stats["split_ratios"],
        "seed": plan.stats["seed"],
        "splits": {
            s: {
                "images": plan.splits[s]["num_examples"],
                "rows": {c: split_rows.get(c, {}).get(s, 0) for c in split_rows},
            }
            for s in plan.splits
        },
        "shards": {
            "size": plan.stats["shard_size"],
            "written": sum(1 for r in results if not r["reused"]),
            "reused": sum(1 for r in results if r["reused"]),
            "files": [str(Path(r["out"]).relative_to(out)) for r in results if fmt != "open_clip-csv"],
        },
        "seconds": round(time.perf_counter() - started, 3),
        **(extra_report or {}),
    }
    atomic_write_bytes(
        out / "build_report.json", json.dumps(build_report, indent=1, ensure_ascii=False).encode()
    )
    if not plan.stats["images"]:
        reasons = Counter(i["reason"][:120] for i in data["items"])
        top = "; ".join(f"{n}× {r}" for r, n in reasons.most_common(3)) or "the input holds no image"
        raise ValueError(
            f"the build read no usable image ({data['skipped']} item(s) skipped: {top}); see "
            f"{out / 'build_report.json'} for every skip and its reason"
        )
    return build_report


def _remove_locks(cache: Path) -> None:
    for lock in cache.glob("*.lock"):
        with contextlib.suppress(OSError):
            lock.unlink()
    with contextlib.suppress(OSError):
        cache.rmdir()  # only when empty


def _join_csv_parts(out: Path, tasks: list[_Task]) -> None:
    for split in SPLITS:
        parts = [Path(t.out) for t in tasks if t.split == split]
        if not parts:
            continue
        target = inside(out, f"{split}.csv")
        tmp = _tmp_path(target)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("filepath\tcaption\n")
            for part in parts:
                with open(part, encoding="utf-8") as p:
                    for line in p:
                        f.write(line)
        os.replace(tmp, target)


__all__ = ["EXIT_SKIPPED", "FORMATS", "export_dataset", "write_card"]
