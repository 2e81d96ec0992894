"""The image step after a format's reader: from :class:`AnnotatedImage` to :class:`ImageRecord`.

A source is read in three explicit steps (:meth:`~.base.Source.records` chains them lazily, so the
records and the skip report come out in input order, one image at a time):

1. the format's reader (:meth:`~.base.Source.read`) parses the annotation files and yields one
   :class:`AnnotatedImage` per image: the image file and what the annotation says about it. It never
   opens the image;
2. :func:`analyse` reads each image once through :func:`~.images.load_image` (content id, guards,
   8-bit conversion, decode check, perceptual hash), in a process pool's workers when one is given,
   and yields ``Analysed(item, image)`` in input order, ``image`` being the :class:`LoadedImage` or
   the :class:`SkipItem` that says why the file cannot be used;
3. :func:`to_records` turns each analysed image into its record(s): boxes outside the image are
   dropped and the others clipped to it, a size that differs from the annotation's is reported, and
   a large scene is resized or cut into tiles (:mod:`.geometry`). Every skip goes to the report.

>>> from hqrs.dataset_builder.sources import SkipReport, load_source
>>> source = load_source("folder:scenes")  # doctest: +SKIP
>>> report = SkipReport()
>>> analysed = analyse(source.read(report), source.image_settings)  # doctest: +SKIP
>>> records = list(to_records(analysed, source.image_settings, report))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from ..parallel import bounded_map
from ..records import ImageRecord, MaskSummary, ObjectAnnotation
from .geometry import clip_object, resized, scale_factor, tile_origins
from .images import (
    ImageCell,
    ImageSettings,
    LoadedImage,
    SkipItem,
    load_image,
    perceptual_hash,
    store_converted,
)
from .report import SkipReport

#: ``mask_fn(rect, scale) -> (summary, objects)``: a segmentation mask summarised over ``rect``
#: (pixels of the stored image), its instance boxes scaled by ``scale``.
MaskFn = Callable[[tuple[int, int, int, int], float], tuple[MaskSummary | None, list[ObjectAnnotation]]]


@dataclass
class AnnotatedImage:
    """What a format's reader yields: one image file and what its annotation says, before it is read.

    Attributes:
        image: the image file (it exists, is a regular file and lies inside the source's roots).
        where: the annotation it comes from, for skip reasons (``file``, ``file:line``, ``file#images[3]``).
        source: the ``source`` value of its records.
        objects: its boxes, in pixels of the stored image.
        fields: further :class:`ImageRecord` fields (``labels``, ``references``, ``split``, ``gsd``,
            ``exhaustive_classes``, ``meta``).
        expected_size: ``(width, height)`` the annotation states, checked against the image.
        mask_fn: the summary of its segmentation mask (mask sources).
    """

    image: Path
    where: str
    source: str
    objects: list[ObjectAnnotation] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)
    expected_size: tuple[int, int] | None = None
    mask_fn: MaskFn | None = None


class CellSink(Protocol):
    """Where the analysis hands each image's embedded cell over (a build's image staging, so that the
    plan does not read the file again): ``keep_original`` says how the cells are made (see
    :func:`~.images.cell_from_bytes`), :meth:`add` receives them in the main process, in input order."""

    keep_original: bool

    def add(self, record: ImageRecord, cell: ImageCell, size: int, phash: str | None) -> None:
        """``cell`` of ``record``'s image file (``size`` bytes), with its perceptual hash."""


class Analysed(NamedTuple):
    """An annotated image and the result of reading it: the loaded image, or why it cannot be used."""

    item: AnnotatedImage
    image: LoadedImage | SkipItem


def _load(job: tuple[Path, ImageSettings, bool | None]) -> LoadedImage | SkipItem:
    """:func:`load_image` with its skip returned (a pool worker's job: a picklable path, settings and
    ``keep_original`` of the cell to make, ``None`` for no cell)."""
    path, settings, keep_original = job
    try:
        return load_image(path, settings, cell=keep_original is not None, keep_original=bool(keep_original))
    except SkipItem as exc:
        return exc


def _is_large(image: LoadedImage, settings: ImageSettings) -> bool:
    return max(image.width, image.height) > settings.max_side and settings.large != "keep"


def analyse(
    items: Iterable[AnnotatedImage], settings: ImageSettings, pool=None, *, cells: bool | None = None
) -> Iterator[Analysed]:
    """Read every item's image once (:func:`~.images.load_image` with ``settings``), in input order.

    Args:
        items: what a reader yields; consumed lazily (at most a bounded window ahead with a pool).
        settings: the source's image settings.
        pool: a process pool (:func:`hqrs.dataset_builder.parallel.make_pool`) whose workers read the
            images; ``None`` reads them here, one at a time, as the records are consumed.
        cells: ``None``: no embedded cell; otherwise each image's :class:`~.images.ImageCell` is made
            from the same read (``LoadedImage.cell``), ``cells`` being its ``keep_original``.

    Yields:
        ``Analysed(item, image)``: ``image`` is a :class:`LoadedImage` (its ``pixels`` kept for a
        large scene that is tiled or resized) or the :class:`SkipItem` with the reason.
    """
    jobs = bounded_map(_load, items, pool, arg=lambda item: (item.image, settings, cells))
    for item, image in jobs:
        if isinstance(image, LoadedImage) and _is_large(image, settings) and image.pixels is None:
            image = _load((item.image, settings, None))  # without pixels: tiling / resizing needs them
        yield Analysed(item, image)


def to_records(
    analysed: Iterable[Analysed], settings: ImageSettings, report: SkipReport, cells: CellSink | None = None
) -> Iterator[ImageRecord]:
    """The record(s) of each analysed image; everything left out goes to ``report`` with its reason.

    An unusable image is an ``image`` skip; a size that differs from the annotation's a ``row`` skip
    (the image's own size is used); a box outside the image an ``object`` skip. A scene whose longer
    side exceeds ``settings.max_side`` becomes one resized record (``large="resize"``) or one record
    per tile (``large="tile"``), unless ``large="keep"``. An image analysed with its cell hands it to
    ``cells`` (:meth:`CellSink.add`) just before its record is yielded.
    """
    for item, image in analysed:
        yield from _item_records(item, image, settings, report, cells)


def _item_records(
    item: AnnotatedImage,
    loaded: LoadedImage | SkipItem,
    settings: ImageSettings,
    report: SkipReport,
    cells: CellSink | None = None,
) -> Iterator[ImageRecord]:
    where, source = item.where, item.source
    if isinstance(loaded, SkipItem):
        report.skip(item.image, loaded.reason, kind="image", source=source)
        return
    expected = item.expected_size
    if expected is not None and tuple(expected) != (loaded.width, loaded.height):
        report.skip(
            where,
            f"annotation says the image is {expected[0]}×{expected[1]} but {item.image} is "
            f"{loaded.width}×{loaded.height}; using the image's size",
            kind="row",
            source=source,
        )
    objects = _inside(report, source, where, item.objects, loaded.width, loaded.height)
    fields_ = dict(item.fields)
    meta = dict(fields_.pop("meta", {}) or {})
    if loaded.converted:
        meta.update(original=str(item.image), converted=loaded.converted)
    if loaded.phash:
        meta["phash"] = loaded.phash
    fields_.setdefault("source", source)
    mask_fn = item.mask_fn
    if not _is_large(loaded, settings):
        mask, extra = mask_fn((0, 0, loaded.width, loaded.height), 1.0) if mask_fn else (None, [])
        record = _record(loaded, objects + extra, mask, meta, fields_)
        if cells is not None and loaded.cell is not None:
            cells.add(record, loaded.cell, loaded.file_size, loaded.phash)
        yield record
    elif settings.large == "resize":
        yield _resize(loaded, objects, mask_fn, meta, fields_, settings, report, source, where)
    else:
        yield from _tile(loaded, objects, mask_fn, meta, fields_, settings)


def _record(loaded: LoadedImage, objects, mask, meta, fields_) -> ImageRecord:
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


def _inside(
    report: SkipReport, source: str, where: str, objects: list[ObjectAnnotation], width: int, height: int
) -> list[ObjectAnnotation]:
    """Drop boxes entirely outside the image, clip the others to it."""
    kept = []
    for obj in objects:
        x0, y0, x1, y1 = obj.bbox
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            report.skip(
                where,
                f"{obj.category!r} box {obj.bbox!r} lies outside the {width}×{height} image",
                kind="object",
                source=source,
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
                report.skip(where, f"after clipping to the image: {exc}", kind="object", source=source)
                continue
        kept.append(obj)
    return kept


def _resize(loaded, objects, mask_fn, meta, fields_, settings, report, source, where) -> ImageRecord:
    scale = scale_factor(loaded.width, loaded.height, settings.max_side)
    small = resized(loaded.pixels, scale)
    path, image_id = store_converted(
        small, settings, Path(meta.get("original", loaded.path)).stem + "-resized"
    )
    scaled = []
    for obj in objects:
        bbox = tuple(v * scale for v in obj.bbox)
        obox = tuple(v * scale for v in obj.obox) if obj.obox is not None else None
        try:
            scaled.append(ObjectAnnotation(obj.category, bbox=bbox, obox=obox, difficult=bool(obj.difficult)))
        except (ValueError, TypeError) as exc:
            report.skip(where, str(exc), kind="object", source=source)
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
    return _record(out, scaled + extra, mask, meta, fields_)


def _tile(loaded, objects, mask_fn, meta, fields_, settings) -> Iterator[ImageRecord]:
    size, overlap = settings.tile_size, settings.tile_overlap
    stem = Path(meta.get("original", loaded.path)).stem
    for ty in tile_origins(loaded.height, size, overlap):
        for tx in tile_origins(loaded.width, size, overlap):
            rect = (tx, ty, min(tx + size, loaded.width), min(ty + size, loaded.height))
            crop = loaded.pixels.crop(rect)
            path, image_id = store_converted(crop, settings, f"{stem}-tile{tx}_{ty}")
            tile_objects = []
            for obj in objects:
                clipped = clip_object(obj, rect, settings.min_clip_fraction)
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
            yield _record(out, tile_objects + extra, mask, tile_meta, fields_)
