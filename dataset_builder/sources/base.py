"""The source adapter base class, the source spec syntax and the skip report.

A source is written ``KIND:PATH?opt=val&opt=val``; ``images=DIR`` names the image folder where the
format keeps images apart from annotations. Options common to every kind:

``images``, ``name`` (the ``source`` value of the records; default the kind or the dataset's own name),
``splits`` (keep only records whose source split is listed, e.g. ``splits=test``),
``allow_outside_root`` (default ``false``: an image file must resolve, after following symbolic links,
inside the source's root, i.e. the ``images`` folder or the folder of ``PATH``; anything else is a
skip with the reason; ``true`` lets e.g. an open_clip CSV name absolute paths anywhere), and the
:class:`~.images.ImageSettings` fields ``max_pixels``, ``verify``, ``large``, ``max_side``,
``tile_size``, ``tile_overlap``, ``min_clip_fraction``, ``bands``, ``stretch``, ``cache_dir``, ``phash``,
``max_memory``.
Anything else must be an option of that kind, or it is an error that lists the known ones.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qsl

from ..parallel import bounded_map
from ..records import ImageRecord, MaskSummary, ObjectAnnotation
from .images import (
    IMAGE_EXTENSIONS,
    ImageSettings,
    LoadedImage,
    SkipItem,
    clip_polygon,
    load_image,
    perceptual_hash,
    polygon_area,
    resized,
    scale_factor,
    store_converted,
    tile_origins,
)

logger = logging.getLogger("hqrs.sources")

MaskFn = Callable[[tuple[int, int, int, int], float], tuple[MaskSummary | None, list[ObjectAnnotation]]]


class SkipReport:
    """Counts of records produced and every item skipped, with its file and reason.

    ``kind`` says what was skipped: ``image`` (no record), ``object`` (one box dropped from a record
    that was kept), ``row`` (one CSV row / JSON entry / label line), ``file`` (a whole annotation
    file), ``pixels`` (mask pixels of an unknown class), ``result`` (an MpGI result).
    """

    def __init__(self) -> None:
        self.records: Counter[str] = Counter()
        self.items: list[dict[str, str]] = []

    def ok(self, source: str, n: int = 1) -> None:
        self.records[source] += n

    def skip(self, file: str | Path, reason: str, *, kind: str = "image", source: str = "") -> None:
        # file names and text from the input may hold lone surrogates: escaped so the report is valid UTF-8
        item = {"file": _printable(str(file)), "reason": _printable(reason), "kind": kind, "source": source}
        self.items.append(item)
        logger.debug("skipped %s %s: %s", kind, file, reason)

    def count(self, prefix: str) -> int:
        """How many skipped items have a reason starting with ``prefix``."""
        return sum(1 for i in self.items if i["reason"].startswith(prefix))

    def extend(self, other: SkipReport) -> None:
        self.records.update(other.records)
        self.items.extend(other.items)

    def __len__(self) -> int:
        return len(self.items)

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": dict(self.records),
            "skipped": len(self.items),
            "skipped_by_kind": dict(Counter(i["kind"] for i in self.items)),
            "items": list(self.items),
        }


def _printable(text: str) -> str:
    """``text`` with characters UTF-8 cannot hold (lone surrogates, e.g. from non-UTF-8 file names)
    written as ``\\udcXX`` escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


# ------------------------------------------------------------------------------------ option parsing


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean (true/false), got {value!r}")


def parse_list(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _parse_int_tuple(value: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in parse_list(value))


def _parse_float_tuple(value: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in parse_list(value))


_IMAGE_OPTION_PARSERS: dict[str, Callable[[Any], Any]] = {
    "max_pixels": lambda v: int(float(v)),
    "verify": parse_bool,
    "large": str,
    "max_side": int,
    "tile_size": int,
    "tile_overlap": int,
    "min_clip_fraction": float,
    "bands": _parse_int_tuple,
    "stretch": _parse_float_tuple,
    "cache_dir": str,
    "phash": parse_bool,
    "max_memory": lambda v: int(float(v)),
}
assert set(_IMAGE_OPTION_PARSERS) == {f.name for f in fields(ImageSettings)}


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """``KIND:PATH?opt=val&...`` → ``(kind, path, options)``."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(
            f"source spec {spec!r} must look like KIND:PATH[?images=DIR&opt=val], e.g. 'dota:data/labelTxt?images=data/images'"
        )
    kind, rest = spec.split(":", 1)
    path, _, query = rest.partition("?")
    options: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key in options:
            raise ValueError(f"source spec {spec!r}: option {key!r} given twice")
        options[key] = value
    if not path:
        raise ValueError(f"source spec {spec!r} has an empty PATH")
    return kind.strip().lower(), path, options


# ------------------------------------------------------------------------------------ the base class


@dataclass
class _Pending:
    """An image whose analysis is deferred to a worker (see :meth:`Source.records`)."""

    image_path: Path
    settings: ImageSettings
    where: str
    objects: list[ObjectAnnotation]
    mask_fn: MaskFn | None
    expected_size: tuple[int, int] | None
    fields: dict[str, Any]


def _missing(image_path: Path | str | None) -> str:
    """Why ``image_path`` is not a readable file, for the skip reason."""
    if image_path is None:
        return "no matching file"
    path = Path(image_path)
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:
            return f"{path} is a symbolic link loop"
        except OSError:
            return f"{path} is a dangling symbolic link to {os.readlink(path)}"
    if path.exists():
        return f"{path} is not a regular file"
    return str(path)


def bad_text(value: Any, where: str = "") -> str | None:
    """Why ``value`` (strings in nested lists / dicts) cannot be stored as UTF-8 text, or ``None``.

    A lone surrogate (``"\\ud800"``, from a JSON escape) is valid in a Python string but not in UTF-8:
    it would abort the JSON / parquet writers later, so the record is skipped with this reason.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return (
                f"{where or 'text'} {value[max(exc.start - 20, 0) : exc.end + 20]!r} holds an invalid "
                f"Unicode character (lone surrogate {value[exc.start]!r} at position {exc.start}); fix the text"
            )
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            bad = bad_text(k, where) or bad_text(v, f"{where}.{k}" if where else str(k))
            if bad:
                return bad
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            bad = bad_text(v, f"{where}[{i}]")
            if bad:
                return bad
    elif isinstance(value, ObjectAnnotation):
        return bad_text(value.category, f"{where}.category")
    return None


def _remote(item: Any) -> bool:
    # mask summaries close over the decoded mask: those images are analysed here, not pickled out
    return isinstance(item, _Pending) and item.mask_fn is None


def _analyse(item: Any) -> LoadedImage | SkipItem | None:
    if not _remote(item):
        return None
    try:
        return load_image(item.image_path, item.settings)
    except SkipItem as exc:
        return exc


class Source:
    """A source adapter: reads one dataset's files and yields :class:`ImageRecord` objects.

    Subclasses set ``kind``, ``OPTIONS`` (their own option parsers and defaults) and implement
    :meth:`_records`. Use :meth:`records`, which counts what was produced into the skip report.
    """

    kind: ClassVar[str] = ""
    default_images: ClassVar[str | None] = None  # images folder relative to PATH's parent, when not given
    pooled: ClassVar[bool] = True  # False: records() analyses in this process even when given a pool
    OPTIONS: ClassVar[dict[str, tuple[Callable[[Any], Any], Any]]] = {}

    def __init__(
        self, path: str | Path, options: dict[str, Any] | None = None, *, base_dir: Path | None = None
    ):
        options = dict(options or {})
        self.path = self._resolve(path, base_dir)
        images = options.pop("images", None)
        self.images_dir = self._resolve(images, base_dir) if images else None
        self.name = str(options.pop("name", "") or "")
        splits = options.pop("splits", None)
        self.splits = set(parse_list(splits)) if splits else None
        self.allow_outside_root = self._parse(
            "allow_outside_root", options.pop("allow_outside_root", False), parse_bool
        )
        image_kwargs = {}
        own: dict[str, Any] = {key: default for key, (_, default) in self.OPTIONS.items()}
        for key, value in options.items():
            if key in _IMAGE_OPTION_PARSERS:
                image_kwargs[key] = self._parse(key, value, _IMAGE_OPTION_PARSERS[key])
            elif key in self.OPTIONS:
                own[key] = self._parse(key, value, self.OPTIONS[key][0])
            else:
                known = sorted(
                    {"images", "name", "splits", "allow_outside_root", *_IMAGE_OPTION_PARSERS, *self.OPTIONS}
                )
                raise ValueError(
                    f"source '{self.kind}:{path}': unknown option {key!r}; known: {', '.join(known)}"
                )
        self.image_settings = ImageSettings(**image_kwargs)
        self.options = own
        if not self.path.exists():
            raise ValueError(f"source '{self.kind}': PATH {str(self.path)!r} does not exist")

    def _parse(self, key: str, value: Any, parser: Callable[[Any], Any]) -> Any:
        try:
            return parser(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"source '{self.kind}:{self.path}': bad value for option {key!r}: {exc}"
            ) from None

    @staticmethod
    def _resolve(path: str | Path, base_dir: Path | None) -> Path:
        p = Path(path).expanduser()
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        return p

    @property
    def source_name(self) -> str:
        return self.name or self.kind

    def spec(self) -> str:
        return f"{self.kind}:{self.path}"

    def skip(self, report: SkipReport, file: str | Path, reason: str, *, kind: str = "image") -> None:
        """Record a skipped ``file`` (an image, or with ``kind="object"`` an annotation) of this source."""
        report.skip(file, reason, kind=kind, source=self.source_name)

    def records(self, report: SkipReport | None = None, pool=None) -> Iterator[ImageRecord]:
        """Yield every usable record; everything else goes to ``report`` with its file and reason.

        With ``pool`` (:func:`hqrs.dataset_builder.parallel.make_pool`) the per-image analysis (read,
        decode-verify, perceptual hash) runs in its workers; records come out in the same order.
        """
        report = report if report is not None else SkipReport()
        pool = pool if self.pooled else None
        for record in self._records(report) if pool is None else self._pooled(report, pool):
            report.ok(record.source)
            yield record

    def _pooled(self, report: SkipReport, pool) -> Iterator[ImageRecord]:
        self._deferred = True
        try:
            for item, loaded in bounded_map(_analyse, self._records(report), pool, remote=_remote):
                if isinstance(item, _Pending):
                    yield from self._finish(report, item, loaded)
                else:
                    yield item
        finally:
            self._deferred = False

    def _records(self, report: SkipReport) -> Iterator[ImageRecord]:  # pragma: no cover - abstract
        raise NotImplementedError

    # ----------------------------------------------------------------------------- helpers

    def images_root(self) -> Path:
        if self.images_dir is not None:
            return self.images_dir
        if self.default_images:
            for base in (self.path.parent, self.path.parent.parent):
                if (base / self.default_images).is_dir():
                    return base / self.default_images
        return self.path if self.path.is_dir() else self.path.parent

    def roots(self) -> list[Path]:
        """The folders this source's image files must resolve inside (see ``allow_outside_root``)."""
        roots = [self.images_root(), self.path if self.path.is_dir() else self.path.parent]
        if self.images_dir is not None:
            roots.append(self.images_dir)
        out: list[Path] = []
        for root in roots:
            try:
                real = root.resolve(strict=False)
            except (OSError, RuntimeError):  # a symlink loop in the root itself
                continue
            if real not in out:
                out.append(real)
        return out

    def _escape(self, image_path: Path) -> str | None:
        """Why ``image_path`` may not be read (resolves outside the roots), or ``None``."""
        if self.allow_outside_root:
            return None
        real = image_path.resolve()
        roots = self.roots()
        if any(real == root or real.is_relative_to(root) for root in roots):
            return None
        plain = Path(os.path.normpath(image_path.absolute()))
        how = f" (resolves to {real})" if real != plain else ""
        return (
            f"image {str(image_path)!r}{how} resolves outside the source root "
            f"{' / '.join(str(r) for r in roots)}; move it inside, or set allow_outside_root=true"
        )

    def find_image(self, stem: str, root: Path | None = None) -> Path | None:
        """An image file named ``stem`` plus any known extension (case-insensitive) under ``root``."""
        root = root or self.images_root()
        for ext in IMAGE_EXTENSIONS:
            for candidate in (root / f"{stem}{ext}", root / f"{stem}{ext.upper()}"):
                if candidate.is_file():
                    return candidate
        return None

    def make_object(
        self,
        report: SkipReport,
        file: str,
        category: str,
        *,
        bbox=None,
        obox=None,
        difficult=False,
        known: Iterable[str] | None = None,
    ) -> ObjectAnnotation | None:
        """One object, or ``None`` (skipped with a reason) if its class is unknown or its box degenerate."""
        if known is not None and category not in known:
            self.skip(report, file, f"unknown class {category!r}", kind="object")
            return None
        try:
            return ObjectAnnotation(category=category, bbox=bbox, obox=obox, difficult=bool(difficult))
        except (ValueError, TypeError) as exc:
            self.skip(report, file, str(exc), kind="object")
            return None

    def emit(
        self,
        report: SkipReport,
        image_path: Path | None,
        *,
        annotation_file: str | Path | None = None,
        objects: Iterable[ObjectAnnotation] = (),
        mask_fn: MaskFn | None = None,
        expected_size: tuple[int, int] | None = None,
        **fields_: Any,
    ) -> Iterator[ImageRecord]:
        """Guard, convert and (for large scenes) tile or resize one image; yield its record(s).

        Inside :meth:`records` with a pool the image analysis is deferred: a pending item is yielded,
        analysed in a worker, and finished here in input order."""
        if self.splits is not None and fields_.get("split") not in self.splits:
            return  # another split (splits=...): not read, not analysed, not reported
        where = str(annotation_file or image_path)
        if image_path is None or not Path(image_path).is_file():
            self.skip(report, where, f"image not found ({_missing(image_path)})")
            return
        image_path = Path(image_path)
        escape = self._escape(image_path)
        if escape:
            self.skip(report, where, escape)
            return
        objects = list(objects)
        bad = bad_text({**fields_, "objects": objects})
        if bad:
            self.skip(report, where, bad, kind="image")
            return
        pending = _Pending(image_path, self.image_settings, where, objects, mask_fn, expected_size, fields_)
        if getattr(self, "_deferred", False):
            yield pending  # type: ignore[misc]
        else:
            yield from self._finish(report, pending, None)

    def _finish(
        self, report: SkipReport, pending: _Pending, loaded: LoadedImage | SkipItem | None
    ) -> Iterator[ImageRecord]:
        image_path, where, settings = pending.image_path, pending.where, self.image_settings
        fields_, mask_fn, expected_size = dict(pending.fields), pending.mask_fn, pending.expected_size
        if isinstance(loaded, LoadedImage):
            large = max(loaded.width, loaded.height) > settings.max_side and settings.large != "keep"
            if large and loaded.pixels is None:
                loaded = None  # analysed without pixels in a worker; tiling / resizing needs them here
        if loaded is None:
            try:
                loaded = load_image(image_path, settings)
            except SkipItem as exc:
                loaded = exc
        if isinstance(loaded, SkipItem):
            self.skip(report, image_path, loaded.reason)
            return
        if expected_size is not None and tuple(expected_size) != (loaded.width, loaded.height):
            self.skip(
                report,
                where,
                f"annotation says the image is {expected_size[0]}×{expected_size[1]} but {image_path} is "
                f"{loaded.width}×{loaded.height}; using the image's size",
                kind="row",
            )
        objects = self._inside(report, where, pending.objects, loaded.width, loaded.height)
        meta = dict(fields_.pop("meta", {}) or {})
        if loaded.converted:
            meta.update(original=str(image_path), converted=loaded.converted)
        if loaded.phash:
            meta["phash"] = loaded.phash
        fields_.setdefault("source", self.source_name)
        large = max(loaded.width, loaded.height) > settings.max_side and settings.large != "keep"
        if not large:
            mask, extra = mask_fn((0, 0, loaded.width, loaded.height), 1.0) if mask_fn else (None, [])
            yield self._record(loaded, objects + extra, mask, meta, fields_, report, where)
        elif settings.large == "resize":
            yield from self._resize(loaded, objects, mask_fn, meta, fields_, report, where)
        else:
            yield from self._tile(loaded, objects, mask_fn, meta, fields_, report, where)

    def _record(self, loaded: LoadedImage, objects, mask, meta, fields_, report, where) -> ImageRecord | None:
        return ImageRecord(
            image_id=loaded.image_id,
            image=str(loaded.path),
            width=loaded.width,
            height=loaded.height,
            objects=objects,
            mask=mask,
            meta=meta,
            **fields_,
        )

    def _inside(self, report, where, objects: list[ObjectAnnotation], width: int, height: int):
        """Drop boxes entirely outside the image, clip the others to it."""
        kept = []
        for obj in objects:
            x0, y0, x1, y1 = obj.bbox
            if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
                self.skip(
                    report,
                    where,
                    f"{obj.category!r} box {obj.bbox!r} lies outside the {width}×{height} image",
                    kind="object",
                )
                continue
            if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
                try:
                    obox = None
                    if obj.obox is not None:
                        xs = [min(max(v, 0.0), width) for v in obj.obox[0::2]]
                        ys = [min(max(v, 0.0), height) for v in obj.obox[1::2]]
                        obox = tuple(v for pair in zip(xs, ys) for v in pair)
                    bbox = (max(x0, 0.0), max(y0, 0.0), min(x1, width), min(y1, height))
                    obj = ObjectAnnotation(obj.category, bbox=bbox, obox=obox, difficult=obj.difficult)
                except ValueError as exc:
                    self.skip(report, where, f"after clipping to the image: {exc}", kind="object")
                    continue
            kept.append(obj)
        return kept

    def _resize(self, loaded, objects, mask_fn, meta, fields_, report, where):
        settings = self.image_settings
        scale = scale_factor(loaded.width, loaded.height, settings.max_side)
        small = resized(loaded.pixels, scale)
        path, image_id = store_converted(
            small, settings, Path(meta.get("original", loaded.path)).stem + "-resized"
        )
        scaled = []
        for obj in objects:
            bbox = tuple(v * scale for v in obj.bbox)
            obox = tuple(v * scale for v in obj.obox) if obj.obox is not None else None
            o = self.make_object(report, where, obj.category, bbox=bbox, obox=obox, difficult=obj.difficult)
            if o is not None:
                scaled.append(o)
        mask, extra = mask_fn((0, 0, loaded.width, loaded.height), scale) if mask_fn else (None, [])
        fields_ = dict(fields_)
        if fields_.get("gsd") is not None:
            fields_["gsd"] = fields_["gsd"] / scale
        meta = {
            **meta,
            "scene": str(meta.get("original", loaded.path)),
            "scene_id": loaded.image_id,
            "resized_from": [loaded.width, loaded.height],
        }
        meta["phash"] = perceptual_hash(small)
        out = LoadedImage(path, image_id, small.size[0], small.size[1])
        yield self._record(out, scaled + extra, mask, meta, fields_, report, where)

    def _tile(self, loaded, objects, mask_fn, meta, fields_, report, where):
        settings = self.image_settings
        size, overlap = settings.tile_size, settings.tile_overlap
        stem = Path(meta.get("original", loaded.path)).stem
        for ty in tile_origins(loaded.height, size, overlap):
            for tx in tile_origins(loaded.width, size, overlap):
                rect = (tx, ty, min(tx + size, loaded.width), min(ty + size, loaded.height))
                crop = loaded.pixels.crop(rect)
                path, image_id = store_converted(crop, settings, f"{stem}-tile{tx}_{ty}")
                tile_objects = []
                for obj in objects:
                    clipped = self._clip(obj, rect)
                    if clipped is not None:
                        tile_objects.append(clipped)
                mask, extra = mask_fn(rect, 1.0) if mask_fn else (None, [])
                tile_meta = {
                    **meta,
                    "scene": str(meta.get("original", loaded.path)),
                    "scene_id": loaded.image_id,
                    "tile": list(rect),
                    "phash": perceptual_hash(crop),
                }
                out = LoadedImage(path, image_id, crop.size[0], crop.size[1])
                yield self._record(out, tile_objects + extra, mask, tile_meta, fields_, report, where)

    def _clip(self, obj: ObjectAnnotation, rect) -> ObjectAnnotation | None:
        x0, y0, x1, y1 = rect
        if obj.obox is not None:
            poly = list(zip(obj.obox[0::2], obj.obox[1::2]))
        else:
            bx0, by0, bx1, by1 = obj.bbox
            poly = [(bx0, by0), (bx1, by0), (bx1, by1), (bx0, by1)]
        area = polygon_area(poly)
        clipped = clip_polygon(poly, rect)
        inside = polygon_area(clipped)
        if area <= 0 or inside / area < self.image_settings.min_clip_fraction:
            return None
        try:
            if inside / area > 0.999:
                obox = (
                    tuple(v - (x0 if i % 2 == 0 else y0) for i, v in enumerate(obj.obox))
                    if obj.obox is not None
                    else None
                )
                bbox = (obj.bbox[0] - x0, obj.bbox[1] - y0, obj.bbox[2] - x0, obj.bbox[3] - y0)
                bbox = (max(bbox[0], 0.0), max(bbox[1], 0.0), min(bbox[2], x1 - x0), min(bbox[3], y1 - y0))
                return ObjectAnnotation(obj.category, bbox=bbox, obox=obox, difficult=obj.difficult)
            xs, ys = [p[0] - x0 for p in clipped], [p[1] - y0 for p in clipped]
            return ObjectAnnotation(
                obj.category, bbox=(min(xs), min(ys), max(xs), max(ys)), difficult=obj.difficult
            )
        except ValueError:
            return None
