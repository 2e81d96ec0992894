"""Split planning for HQRS-IT: deterministic hash splits, near-duplicate groups, contamination guard.

One streaming pass over the MpGI results writes them to a staging file and keeps a small index per
image (id, perceptual hash, byte size). Then:

* **near-duplicates**: images whose 64-bit perceptual hashes differ in at most ``near_dup_distance``
  bits are joined into one group (union-find; candidate pairs come from a pigeonhole band index, so
  this is not quadratic). Exact duplicates (same image id = same bytes) are dropped as skips.
* **re-verification**: a run directory is input. Every result's image id must be a content id (16 hex
  characters), and its image must be a regular file (after following links) inside ``allowed_roots``
  when they are given, whose bytes hash to that id and which opens as an image; anything else is a
  skip with the reason (a record pointing at ``/etc/passwd`` is not embedded).
* **splits**: every group goes to ``train`` / ``validation`` / ``test`` by the SHA-256 of
  ``seed + smallest image id of the group``, against the cumulative ``ratios``; so a group never
  straddles splits and an image keeps its split when other images are added.
* **contamination guard**: images matching an evaluation test set (same content id, or perceptual
  hash within ``contamination_distance``) are removed from ``train`` and counted.
* **shards**: every split is cut into shard files of ``shard_size`` rows (or bytes, ``"500MB"``), written
  by a second streaming pass; these staged files are the builder's ``gen_kwargs`` shard lists.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from .build_folder import SPLITS, tmp_path
from .parallel import bounded_map
from .records import ImageRecord, MpGIResult, atomic_write_bytes, check_image_id, content_id, file_content_id
from .sources import IMAGE_EXTENSIONS, duplicate_reason, load_sources
from .sources.base import SkipReport, bad_text
from .sources.images import (
    ImageCell,
    SkipItem,
    cell_from_bytes,
    file_perceptual_hash,
    hamming,
    needs_encoding,
    pixel_limit,
)
from .split_settings import SplitSettings, parse_ratios, parse_size

logger = logging.getLogger("hqrs.planning")

PLAN_VERSION = 3  # 2: the plan keeps the input's skips and record counts; 3: image cells staged


def split_of(key: str, ratios: tuple[float, float, float], seed: str) -> str:
    u = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") / 2**64
    acc = 0.0
    for name, ratio in zip(SPLITS, ratios):
        acc += ratio
        if u < acc:
            return name
    return next(name for name, r in reversed(list(zip(SPLITS, ratios))) if r > 0)


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _bands(value: int, distance: int) -> list[tuple[int, int]]:
    """Pigeonhole: with ``distance + 1`` disjoint bands, two hashes within ``distance`` share a band."""
    n = distance + 1
    width = 64 // n
    out = []
    for b in range(n):
        lo = b * width
        hi = 64 if b == n - 1 else lo + width
        out.append((b, (value >> lo) & ((1 << (hi - lo)) - 1)))
    return out


class PhashIndex:
    """Find stored 64-bit hashes within a Hamming distance of a query, without comparing all pairs."""

    def __init__(self, distance: int):
        self.distance = distance
        self.values: list[int] = []
        self.buckets: dict[tuple[int, int], list[int]] = {}

    def add(self, value: int) -> int:
        idx = len(self.values)
        self.values.append(value)
        for band in _bands(value, self.distance):
            self.buckets.setdefault(band, []).append(idx)
        return idx

    def near(self, value: int) -> set[int]:
        found = set()
        for band in _bands(value, self.distance):
            for idx in self.buckets.get(band, ()):
                if (self.values[idx] ^ value).bit_count() <= self.distance:
                    found.add(idx)
        return found


def near_duplicate_groups(phashes: list[int | None], distance: int) -> list[int]:
    """Group index (the smallest member position) of every item; ``None`` hashes stay alone."""
    uf = _UnionFind(len(phashes))
    if distance >= 0:
        index = PhashIndex(distance)
        positions: list[int] = []
        for pos, value in enumerate(phashes):
            if value is None:
                continue
            for other in index.near(value):
                uf.union(positions[other], pos)
            index.add(value)
            positions.append(pos)
    return [uf.find(i) for i in range(len(phashes))]


@dataclass
class EvalSet:
    """Content ids and perceptual hashes of evaluation images (the contamination guard's reference)."""

    content_ids: set[str] = field(default_factory=set)
    phashes: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


def load_eval_sets(specs: Iterable[str], report: SkipReport | None = None) -> EvalSet:
    """Evaluation images from source specs (``karpathy:rsicd.json?splits=test``), folders of images,
    or a JSON file ``{"content_ids": [...], "phashes": [...]}``."""
    out = EvalSet()
    report = report if report is not None else SkipReport()
    for spec in specs:
        out.names.append(spec)
        path = Path(spec)
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                if file.is_file() and file.suffix.lower() in IMAGE_EXTENSIONS:
                    out.content_ids.add(file_content_id(file))
                    try:
                        out.phashes.append(int(file_perceptual_hash(file), 16))
                    except (OSError, SkipItem) as exc:
                        report.skip(file, f"contamination reference unreadable ({exc})", kind="file")
        elif path.is_file() and path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not ({"content_ids", "phashes"} & set(data)):
                raise ValueError(
                    f"contamination file {spec!r} must hold {{'content_ids': [...], 'phashes': [...]}}"
                )
            out.content_ids.update(data.get("content_ids", []))
            out.phashes.extend(int(h, 16) for h in data.get("phashes", []))
        elif ":" in spec:
            for source in load_sources([spec]):
                for record in source.records(report):
                    out.content_ids.add(record.image_id)
                    original = record.meta.get("original")
                    if original:
                        out.content_ids.add(file_content_id(original))
                    if record.meta.get("phash"):
                        out.phashes.append(int(record.meta["phash"], 16))
        else:
            raise ValueError(
                f"contamination set {spec!r} is not a folder, a hash JSON or a source spec KIND:PATH[?splits=test]"
            )
    return out


def _resolve_input_image(path: str | os.PathLike, allowed_roots: Iterable[str]) -> Path:
    p = Path(path)
    try:
        real = p.resolve(strict=True)
    except RuntimeError:
        raise ValueError(f"{str(p)!r} is a symbolic link loop") from None
    except OSError:
        raise ValueError(f"{str(p)!r} does not exist (or is a dangling symbolic link)") from None
    roots = [Path(r) for r in allowed_roots]
    if roots and not any(real == r or real.is_relative_to(r) for r in roots):
        raise ValueError(
            f"{str(p)!r} resolves to {str(real)!r}, outside the allowed roots "
            f"{', '.join(map(str, roots))} (add its folder with --allow-root)"
        )
    if not real.is_file():
        raise ValueError(f"{str(real)!r} is not a regular file")
    return real


def read_verified(
    path: str | os.PathLike, image_id: str, allowed_roots: Iterable[str] = (), *, check_header: bool = True
) -> bytes:
    """The bytes of the image a result points to, read once and checked before they are embedded.

    ``image_id`` must be a content id and ``path`` a regular file (symbolic links followed) inside one of
    ``allowed_roots`` (when given) whose SHA-256 gives ``image_id`` and (``check_header``) whose header
    parses as an image (:func:`stage_image` leaves that to the one open that makes the cell).

    Raises:
        ValueError / OSError: what is wrong, naming the path.
    """
    check_image_id(image_id)
    real = _resolve_input_image(path, allowed_roots)
    data = real.read_bytes()
    actual = content_id(data)
    if actual != image_id:
        raise ValueError(
            f"the bytes of {str(real)!r} hash to {actual}, not to the record's image_id {image_id}: "
            "the file changed since the run, or the record was altered"
        )
    if check_header:
        try:
            with pixel_limit(None), Image.open(io.BytesIO(data)) as im:
                im.size  # noqa: B018 - the header parsed
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise ValueError(f"{str(real)!r} is not an image ({exc})") from None
    return data


def verify_image(path: str | os.PathLike, image_id: str, allowed_roots: Iterable[str] = ()) -> int:
    """:func:`read_verified` of one image; returns its size in bytes.

    Raises:
        ValueError / OSError: what is wrong, naming the path.
    """
    return len(read_verified(path, image_id, allowed_roots))


@dataclass(frozen=True)
class StagedCell:
    """What reading one result's image gives the plan: its size, perceptual hash and embedded cell."""

    size: int
    phash: str
    cell: ImageCell


def _valid_phash(phash: Any) -> bool:
    return isinstance(phash, str) and len(phash) == 16 and set(phash) <= set("0123456789abcdef")


def _stage(args: tuple) -> StagedCell | StagedRef | str:
    """:func:`stage_image`, or for an image the analysis staged (``(path, image_id, allowed_roots,
    StagedRef)``, run in this process) the same path checks without reading the file again."""
    if isinstance(args[-1], StagedRef):
        path, image_id, allowed_roots, ref = args
        try:
            check_image_id(image_id)
            _resolve_input_image(path, allowed_roots)
        except (OSError, ValueError) as exc:
            return str(exc)
        return ref
    return stage_image(args)


def stage_image(args: tuple[str, str, tuple[str, ...], bool, str | None]) -> StagedCell | str:
    """Read the image of one result once, verify it (:func:`read_verified`) and make its cell and (when
    ``phash`` is not a valid one) its perceptual hash from one decode at most; a pool job.

    ``args``: ``(path, image_id, allowed_roots, keep_original, phash)``. Returns the reason as a string
    when the image is refused.
    """
    path, image_id, allowed_roots, keep_original, phash = args
    try:
        data = read_verified(path, image_id, allowed_roots, check_header=False)
    except (OSError, ValueError) as exc:
        return str(exc)
    want_phash = not _valid_phash(phash)
    try:  # the one open of these bytes here
        if needs_encoding(path, keep_original) and not want_phash:
            # staged as read: the writer makes its PNG (the one decode), in its pool when it has one
            with pixel_limit(None), Image.open(io.BytesIO(data)) as im:
                im.size  # noqa: B018 - the header parsed
            cell, computed = ImageCell(data, f"{image_id}{Path(path).suffix.lower()}"), None
        else:  # as embedded, or decoded once for the missing hash (and the PNG from that decode)
            cell, computed = cell_from_bytes(data, str(path), image_id, keep_original, want_phash)
    except (OSError, SyntaxError, SkipItem, ValueError, Image.DecompressionBombError) as exc:
        return f"{str(path)!r} is not an image ({exc})"
    return StagedCell(len(data), computed or phash, cell)


IMAGES_FILE = "images.arrow"  # the staged image cells, one record batch per staged image


@dataclass(frozen=True)
class StagedRef:
    """An image whose cell the source analysis of this build already staged (:class:`ImageStaging`):
    its size, perceptual hash and the index of its cell."""

    size: int
    phash: str
    index: int


def _cell_schema():
    import pyarrow as pa

    return pa.schema([("bytes", pa.binary()), ("path", pa.string())])


class StagedImagesWriter:
    """Appends image cells to the staged Arrow IPC file, one record batch per cell (the index of a cell
    is its batch number, so a reader fetches exactly the cells it needs)."""

    def __init__(self, path: Path):
        import pyarrow as pa

        self._pa = pa
        self._schema = _cell_schema()
        self._sink = pa.OSFile(str(path), "wb")
        self._ipc = pa.ipc.new_file(self._sink, self._schema)
        self.count = 0

    def append(self, cell: ImageCell) -> int:
        pa = self._pa
        columns = [pa.array([cell.bytes], pa.binary()), pa.array([cell.path], pa.string())]
        self._ipc.write_batch(pa.RecordBatch.from_arrays(columns, schema=self._schema))
        self.count += 1
        return self.count - 1

    def close(self) -> None:
        self._ipc.close()
        self._sink.close()

    def __enter__(self) -> StagedImagesWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ImageStaging:
    """The image cells of a plan being made, written to a temporary file next to ``images.arrow``.

    A build opens it before it reads its input: the source analysis hands every image's cell over
    (:meth:`add`, the :class:`~hqrs.dataset_builder.sources.CellSink` of
    :meth:`~hqrs.dataset_builder.sources.base.Source.records`), so :func:`make_plan` takes those images
    from here (:meth:`take`) instead of reading their files again, and appends the cells of the others.
    :meth:`commit` renames the file to ``images.arrow``; closing it uncommitted (a reused plan, an error)
    removes it. Memory: one small index entry per handed-over image not yet planned; the bytes stream
    to disk. With ``hand_over=False`` it takes no cell from the analysis (a rerun that will most likely
    reuse its plan: the cells would be written only to be thrown away).
    """

    def __init__(self, staging: Path, keep_original: bool = False, hand_over: bool = True):
        self.keep_original = keep_original
        self.hand_over = hand_over
        self.target = Path(staging) / IMAGES_FILE
        self.path = tmp_path(self.target)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.writer: StagedImagesWriter | None = StagedImagesWriter(self.path)
        self._handed: dict[str, tuple[str, StagedRef]] = {}

    def add(self, record: ImageRecord, cell: ImageCell, size: int, phash: str | None) -> None:
        """Stage the cell the analysis made of ``record``'s image (no perceptual hash: not taken; the
        plan reads the file)."""
        if (
            not self.hand_over
            or self.writer is None
            or not _valid_phash(phash)
            or record.image_id in self._handed
        ):
            return
        index = self.writer.append(cell)
        self._handed[record.image_id] = (str(record.image), StagedRef(int(size), phash, index))

    def take(self, image_id: str, path: str) -> StagedRef | None:
        """The staged cell of ``image_id`` when the analysis handed it over for the file ``path``."""
        handed = self._handed.pop(image_id, None)
        return handed[1] if handed is not None and handed[0] == str(path) else None

    def append(self, cell: ImageCell) -> int:
        return self.writer.append(cell)

    def commit(self) -> None:
        """Close the file and make it the plan's ``images.arrow``."""
        self.writer.close()
        self.writer = None
        os.replace(self.path, self.target)

    def close(self) -> None:
        """Drop what was staged unless committed."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            self.path.unlink(missing_ok=True)
        self._handed.clear()

    def __enter__(self) -> ImageStaging:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StagedImages:
    """The staged image cells of a plan (``images.arrow`` in the staging folder), read by index: the shard
    writers take the image bytes from here, never from the input files. (Plain reads, not a memory map:
    mapped pages the writer has touched would stay resident and make the peak RSS grow with the dataset.)"""

    def __init__(self, path: Path):
        import pyarrow as pa

        self._reader = pa.ipc.open_file(pa.OSFile(str(path), "rb"))

    def __len__(self) -> int:
        return self._reader.num_record_batches

    def cell(self, index: int) -> ImageCell:
        """The cell of staged image ``index`` (IndexError naming it past the end)."""
        if not 0 <= index < len(self):
            raise IndexError(f"staged image {index} not in 0..{len(self) - 1}")
        batch = self._reader.get_batch(index)
        return ImageCell(batch.column(0)[0].as_py(), batch.column(1)[0].as_py())


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _plain(obj: Any) -> Any:
    """``dataclasses.asdict`` for JSON (the same dict up to tuples, which JSON writes as lists), without
    its deep copies: a tenth of the cost per staged result."""
    kind = type(obj)
    if kind in (str, int, float, bool) or obj is None:
        return obj
    if kind in (list, tuple):
        return [_plain(v) for v in obj]
    if kind is dict:
        return {k: _plain(v) for k, v in obj.items()}
    names = _FIELD_NAMES.get(kind)
    if names is None and is_dataclass(obj):
        names = _FIELD_NAMES[kind] = tuple(f.name for f in fields(obj))
    if names is not None:
        return {name: _plain(getattr(obj, name)) for name in names}
    return obj


@dataclass
class PlannedImage:
    """One staged image, as planning hands it to the writers: the MpGI result, the index of its cell in
    the staged :class:`StagedImages` and the size of the source image in bytes."""

    result: MpGIResult
    index: int
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "size": self.size, "result": _plain(self.result)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlannedImage:
        return cls(MpGIResult.from_dict(data["result"]), int(data["index"]), int(data["size"]))


def iter_planned(files: Iterable[str]) -> Iterator[PlannedImage]:
    """The :class:`PlannedImage` of staged shard files (:meth:`Plan.shard_files`), in order."""
    for file in files:
        with open(file, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield PlannedImage.from_dict(json.loads(line))


@dataclass
class SplitPlan:
    """One split of a plan: its image count, the bytes of its source images and its staged shard files
    (names in ``staging/<split>/``, each a JSON-lines list of :class:`PlannedImage`)."""

    num_examples: int
    num_bytes_images: int
    shards: list[str]


@dataclass
class Plan:
    """The staged, split and sharded build input (``plan.json`` in the staging folder)."""

    fingerprint: str
    splits: dict[str, SplitPlan]  # only the splits that got images, in SPLITS order
    stats: dict[str, Any]  # what build_report.json shows of the planning (near-duplicates, contamination)
    skips: list[dict[str, str]]  # every item skipped while reading the input and staging it
    records: dict[str, int] = field(default_factory=dict)  # records read per source
    version: int = PLAN_VERSION

    def shard_files(self, staging: Path, split: str) -> list[str]:
        return [str(staging / split / name) for name in self.splits[split].shards]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """The plan of ``plan.json`` (TypeError / KeyError when it is not one)."""
        data = dict(data)
        data["splits"] = {name: SplitPlan(**split) for name, split in data["splits"].items()}
        return cls(**data)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def load_plan(staging: Path, fingerprint: str) -> Plan | None:
    path = staging / "plan.json"
    if not path.is_file():
        return None
    try:
        plan = Plan.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError, KeyError, AttributeError):
        return None
    if plan.fingerprint != fingerprint or plan.version != PLAN_VERSION:
        return None
    if not (staging / IMAGES_FILE).is_file():
        return None
    for split in plan.splits:
        if not all(Path(f).is_file() for f in plan.shard_files(staging, split)):
            return None
    return plan


def make_plan(
    results: Iterable[MpGIResult],
    settings: SplitSettings,
    staging: Path,
    fingerprint: str,
    report: SkipReport | None = None,
    progress: bool = False,
    *,
    pool=None,
    keep_original: bool = False,
    images: ImageStaging | None = None,
) -> Plan:
    """Stage ``results`` (streaming) and plan splits and shards; reuses a finished plan with the same
    fingerprint (which must cover ``keep_original``). ``report`` receives the skipped results.

    A result whose image the build's source analysis already staged in ``images`` (same content id and
    file) is taken from there (its path checked again, its file not read); every other result's image
    file is read here once (:func:`stage_image`: verified; decoded only for a missing perceptual hash,
    in ``pool``'s workers for TIFF / BMP when given) and its bytes staged. The cells end in
    ``images.arrow``; the writers read them from there (TIFF / BMP read here are staged as read: the
    writer makes their PNG)."""
    with contextlib.ExitStack() as stack:
        if images is None:
            images = stack.enter_context(ImageStaging(staging, keep_original))
        existing = load_plan(staging, fingerprint)
        if existing is not None:
            images.close()  # the results are not read: the analysis (if any) staged nothing planned
            logger.info("reusing the staged plan in %s", staging)
            if report is not None:  # what reading the input reported when the plan was made
                report.items.extend(existing.skips)
                report.records.update(existing.records)
            return existing
        return _make_plan(
            results, settings, staging, fingerprint, report, progress, pool, keep_original, images
        )


def _make_plan(
    results: Iterable[MpGIResult],
    settings: SplitSettings,
    staging: Path,
    fingerprint: str,
    report: SkipReport | None,
    progress: bool,
    pool,
    keep_original: bool,
    images: ImageStaging,
) -> Plan:
    report = report if report is not None else SkipReport()
    items_before, records_before = len(report.items), Counter(report.records)
    report_local = SkipReport()
    staging.mkdir(parents=True, exist_ok=True)
    (staging / "plan.json").unlink(missing_ok=True)  # an interrupted re-plan leaves no stale plan
    (staging / IMAGES_FILE).unlink(missing_ok=True)  # nor the old cells next to the new ones
    all_path = staging / "all.jsonl"
    ids: list[str] = []
    hashes: list[int | None] = []
    sizes: list[int] = []
    seen: dict[str, str] = {}

    def candidates() -> Iterator[MpGIResult]:
        for result in tqdm(results, desc="staging results", unit=" images", disable=not progress):
            record = result.record
            if result.status != "ok":
                report_local.skip(
                    record.image,
                    f"MpGI failed: {result.error or 'no error message'}",
                    kind="result",
                    source=record.source,
                )
            elif not [c for c in result.captions if c.text.strip()]:
                report_local.skip(
                    record.image, "MpGI result has no caption", kind="result", source=record.source
                )
            elif record.image_id in seen:  # a known duplicate is not read again
                report_local.skip(
                    record.image,
                    duplicate_reason(seen[record.image_id], record.image_id),
                    kind="image",
                    source=record.source,
                )
            else:
                yield result

    def handed(results: Iterable[MpGIResult]) -> Iterator[tuple[MpGIResult, StagedRef | None]]:
        for result in results:  # taken as results flow: the analysis may run just ahead (caption CSV)
            yield result, images.take(result.record.image_id, result.record.image)

    def job(item: tuple[MpGIResult, StagedRef | None]) -> tuple:
        record, ref = item[0].record, item[1]
        if ref is not None:
            return record.image, record.image_id, settings.allowed_roots, ref
        phash = record.meta.get("phash")
        return record.image, record.image_id, settings.allowed_roots, keep_original, phash

    def remote(item: tuple[MpGIResult, StagedRef | None]) -> bool:
        record = item[0].record
        return (
            item[1] is None
            and needs_encoding(record.image, keep_original)
            and not _valid_phash(record.meta.get("phash"))
        )

    staged = bounded_map(_stage, handed(candidates()), pool, remote=remote, arg=job)
    with open(all_path, "wb") as out:
        for (result, _), got in staged:
            record = result.record
            if record.image_id in seen:  # a duplicate of an image accepted while this one was read
                report_local.skip(
                    record.image,
                    duplicate_reason(seen[record.image_id], record.image_id),
                    kind="image",
                    source=record.source,
                )
                continue
            if isinstance(got, str):
                report_local.skip(
                    record.image, f"image refused at build time: {got}", kind="result", source=record.source
                )
                continue
            index = got.index if isinstance(got, StagedRef) else images.writer.count  # the next cell
            doc = PlannedImage(result, index, got.size).to_dict()
            try:  # a lone surrogate cannot be written as UTF-8: a skip with the place named
                line = json.dumps(doc, ensure_ascii=False, default=_json_default).encode("utf-8")
            except UnicodeEncodeError:
                bad = bad_text(doc["result"]) or "the result holds text that is not valid Unicode"
                report_local.skip(record.image, bad, kind="result", source=record.source)
                continue
            if not isinstance(got, StagedRef):
                images.append(got.cell)
            seen[record.image_id] = record.image
            ids.append(record.image_id)
            hashes.append(int(got.phash, 16))
            sizes.append(got.size)
            out.write(line + b"\n")
    images.commit()

    groups = near_duplicate_groups(hashes, settings.near_dup_distance)
    group_key: dict[int, str] = {}
    for pos, g in enumerate(groups):
        if g not in group_key or ids[pos] < group_key[g]:
            group_key[g] = ids[pos]
    assignment = [split_of(group_key[g], settings.ratios, settings.seed) for g in groups]

    # the evaluation sets' own unreadable files are listed with the contamination stats, not as build skips
    eval_report = SkipReport()
    eval_set = load_eval_sets(settings.contamination, eval_report) if settings.contamination else EvalSet()
    removed: list[dict[str, str]] = []
    matched_total = 0
    if settings.contamination:
        index = PhashIndex(max(settings.contamination_distance, 0))
        if settings.contamination_distance >= 0:
            for h in eval_set.phashes:
                index.add(h)
        for pos, image_id in enumerate(ids):
            how = None
            if image_id in eval_set.content_ids:
                how = "content"
            elif settings.contamination_distance >= 0 and hashes[pos] is not None and index.near(hashes[pos]):
                how = "phash"
            if how:
                matched_total += 1
                if assignment[pos] == "train":
                    assignment[pos] = None
                    removed.append({"image_id": image_id, "match": how})

    kind, limit = parse_size(settings.shard_size)
    counts = {s: 0 for s in SPLITS}
    nbytes = {s: 0 for s in SPLITS}
    # Shards are filled in order: a new one starts when the next record would pass the limit (rows, or
    # image bytes; a record larger than the byte limit gets a shard of its own). Numbers stay contiguous.
    chunk = {s: 0 for s in SPLITS}
    chunk_rows = {s: 0 for s in SPLITS}
    chunk_bytes = {s: 0 for s in SPLITS}
    chunk_of: list[int | None] = []
    for pos, split in enumerate(assignment):
        if split is None:
            chunk_of.append(None)
            continue
        if kind == "rows":
            full = chunk_rows[split] >= limit
        else:
            full = chunk_rows[split] > 0 and chunk_bytes[split] + sizes[pos] > limit
        if full:
            chunk[split] += 1
            chunk_rows[split] = chunk_bytes[split] = 0
        chunk_of.append(chunk[split])
        chunk_rows[split] += 1
        chunk_bytes[split] += sizes[pos]
        counts[split] += 1
        nbytes[split] += sizes[pos]
    n_chunks = {s: chunk[s] + 1 if counts[s] else 0 for s in SPLITS}

    handles: dict[str, tuple[int, Any]] = {}
    for split in SPLITS:
        (staging / split).mkdir(exist_ok=True)
        for old in (staging / split).glob("*.jsonl"):
            old.unlink()
    with open(all_path, encoding="utf-8") as src:
        for pos, line in enumerate(src):
            split = assignment[pos]
            if split is None:
                continue
            current = handles.get(split)
            if current is None or current[0] != chunk_of[pos]:
                if current is not None:
                    current[1].close()
                handles[split] = (
                    chunk_of[pos],
                    open(staging / split / f"{chunk_of[pos]:05d}.jsonl", "w", encoding="utf-8"),
                )
            handles[split][1].write(line)
    for _, f in handles.values():
        f.close()
    all_path.unlink()

    multi = {}
    for g in groups:
        multi[g] = multi.get(g, 0) + 1
    stats = {
        "images": len(ids),
        "split_ratios": list(settings.ratios),
        "seed": settings.seed,
        "near_duplicates": {
            "distance": settings.near_dup_distance,
            "groups_with_more_than_one_image": sum(1 for v in multi.values() if v > 1),
            "images_in_such_groups": sum(v for v in multi.values() if v > 1),
        },
        "contamination": {
            "sets": list(settings.contamination),
            "reference_images": len(eval_set.content_ids),
            "distance": settings.contamination_distance,
            "matched": matched_total,
            "removed_from_train": len(removed),
            "removed": removed,
            "reference_skipped": eval_report.items,
        },
        "shard_size": settings.shard_size,
    }
    splits = {
        s: SplitPlan(counts[s], nbytes[s], [f"{k:05d}.jsonl" for k in range(n_chunks[s])])
        for s in SPLITS
        if counts[s]
    }
    report.extend(report_local)
    plan = Plan(
        fingerprint=fingerprint,
        splits=splits,
        stats=stats,
        skips=report.items[items_before:],
        records=dict(Counter(report.records) - records_before),
    )
    atomic_write_bytes(
        staging / "plan.json", json.dumps(asdict(plan), indent=1, default=_json_default).encode()
    )
    return plan


__all__ = [
    "IMAGES_FILE",
    "SPLITS",
    "EvalSet",
    "ImageStaging",
    "Plan",
    "PhashIndex",
    "PlannedImage",
    "SplitPlan",
    "SplitSettings",
    "StagedCell",
    "StagedImages",
    "StagedRef",
    "hamming",
    "load_eval_sets",
    "make_plan",
    "near_duplicate_groups",
    "parse_ratios",
    "iter_planned",
    "parse_size",
    "read_verified",
    "split_of",
    "stage_image",
    "verify_image",
]
