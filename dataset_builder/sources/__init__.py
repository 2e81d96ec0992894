"""Source formats: every supported annotation format becomes :class:`~hqrs.dataset_builder.records.ImageRecord`.

>>> from hqrs.dataset_builder.sources import SkipReport, load_source
>>> report = SkipReport()
>>> src = load_source("dota:data/labelTxt?images=data/images&large=tile")  # doctest: +SKIP
>>> for record in src.records(report): ...  # doctest: +SKIP

A source is written ``KIND:PATH?opt=val&...`` (see :mod:`.base` for the common options and each
format's module for its own), or given as a mapping ``{kind, path, images, ...}``;
:func:`load_sources` also reads a YAML list of them.

One module per format, on the small base of :mod:`.base` (spec syntax, typed options, root
confinement), as ``datasets``' packaged modules: :mod:`.folder`, :mod:`.plain_images` (kind
``images``), :mod:`.karpathy`, :mod:`.dota`, :mod:`.voc`, :mod:`.coco`, :mod:`.mask`,
:mod:`.openclip_csv`; :data:`SOURCE_KINDS` maps each kind to its class. A format's reader yields
:class:`~.analysis.AnnotatedImage` objects; the image steps shared by all of them (read / guard /
hash each image, clip, tile, resize) are :mod:`.analysis`, their plane geometry :mod:`.geometry`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from ..records import ImageRecord
from .analysis import AnnotatedImage, CellSink, analyse, to_records
from .base import SkipReport, Source, parse_spec
from .coco import CocoSource
from .dota import DotaSource
from .folder import FolderSource
from .images import (
    IMAGE_EXTENSIONS,
    ImageSettings,
    SkipItem,
    file_perceptual_hash,
    load_image,
    perceptual_hash,
)
from .karpathy import KarpathySource
from .mask import MaskSource
from .openclip_csv import OpenClipCsvSource
from .plain_images import ImagesSource
from .voc import VocSource

__all__ = [
    "DUPLICATE_REASON",
    "IMAGE_EXTENSIONS",
    "KIND_ALIASES",
    "SOURCE_KINDS",
    "AnnotatedImage",
    "CellSink",
    "ImageSettings",
    "SkipItem",
    "SkipReport",
    "Source",
    "analyse",
    "captions_csv_spec",
    "duplicate_reason",
    "file_perceptual_hash",
    "iter_records",
    "load_image",
    "load_source",
    "load_sources",
    "parse_spec",
    "perceptual_hash",
    "to_records",
]

#: kind → format class (a new format: one module on :class:`~.base.Source`, one line here).
SOURCE_KINDS: dict[str, type[Source]] = {
    "folder": FolderSource,
    "images": ImagesSource,
    "karpathy": KarpathySource,
    "dota": DotaSource,
    "voc": VocSource,
    "coco": CocoSource,
    "mask": MaskSource,
    "openclip-csv": OpenClipCsvSource,
}
KIND_ALIASES = {"open_clip-csv": "openclip-csv", "csv": "openclip-csv"}


def _kind_class(kind: str) -> type[Source]:
    kind = KIND_ALIASES.get(kind, kind)
    if kind not in SOURCE_KINDS:
        raise ValueError(f"unknown source kind {kind!r}; known: {', '.join(SOURCE_KINDS)}")
    return SOURCE_KINDS[kind]


def load_source(spec: str | dict[str, Any] | Source, *, base_dir: str | Path | None = None) -> Source:
    """A :class:`Source` from ``"KIND:PATH?images=DIR&opt=val"`` or ``{"kind", "path", "images", ...}``.

    Relative paths are taken from ``base_dir`` (a YAML list's folder) or the working directory.
    """
    if isinstance(spec, Source):
        return spec
    base = Path(base_dir) if base_dir is not None else None
    if isinstance(spec, str):
        kind, path, options = parse_spec(spec)
    elif isinstance(spec, dict):
        options = {k: v for k, v in spec.items() if k not in ("kind", "path")}
        if "kind" not in spec or "path" not in spec:
            raise ValueError(f"source mapping {spec!r} needs 'kind' and 'path' keys")
        kind, path = str(spec["kind"]).lower(), spec["path"]
    else:
        raise ValueError(
            f"a source is a 'KIND:PATH?...' string or a mapping, got {type(spec).__name__}: {spec!r}"
        )
    return _kind_class(kind)(path, options, base_dir=base)


def load_sources(specs: str | Path | Iterable[str | dict[str, Any]]) -> list[Source]:
    """Sources from spec strings / mappings, or from a YAML file holding a list of them
    (top-level list, or ``{"sources": [...]}``); YAML-relative paths are taken from the YAML's folder."""
    if isinstance(specs, (str, Path)):
        text = str(specs)
        if text.endswith((".yaml", ".yml")) and ":" not in text.split("?", 1)[0].replace(":\\", ""):
            return _from_yaml(Path(text))
        specs = [text]
    out: list[Source] = []
    for spec in specs:
        if isinstance(spec, (str, Path)) and str(spec).endswith((".yaml", ".yml")) and Path(spec).is_file():
            out.extend(_from_yaml(Path(spec)))
        else:
            out.append(load_source(spec))
    return out


def _from_yaml(path: Path) -> list[Source]:
    if not path.is_file():
        raise ValueError(f"sources file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"sources file {str(path)!r} is not valid YAML: {exc}") from None
    if isinstance(data, dict) and "sources" in data:
        data = data["sources"]
    if not isinstance(data, list) or not data:
        raise ValueError(
            f"sources file {str(path)!r} must hold a non-empty list of sources (or a 'sources:' key with one)"
        )
    return [load_source(item, base_dir=path.parent) for item in data]


DUPLICATE_REASON = "same image bytes as"  # start of the skip reason of an exact duplicate image


def duplicate_reason(first: str, image_id: str) -> str:
    """The skip reason of an image whose bytes equal those of ``first`` (the same on every build path)."""
    return f"{DUPLICATE_REASON} {first} (image_id {image_id}); kept the first"


def iter_records(
    sources: Iterable[Source], report: SkipReport, pool=None, cells: CellSink | None = None
) -> Iterator[ImageRecord]:
    """All records of several sources, in order (image analysis in ``pool``'s workers if given; each
    image's embedded cell handed to ``cells`` when given, see :meth:`Source.records`).

    Exact duplicates (a second image with the same bytes, i.e. the same ``image_id``, in any of the
    sources) are skipped with :func:`duplicate_reason`, counted in ``report`` like every other skip."""
    seen: dict[str, str] = {}
    for source in sources:
        for record in source.records(report, pool, cells):
            first = seen.get(record.image_id)
            if first is not None:
                report.records[record.source] -= 1  # counted as read by the source; a skip instead
                report.skip(
                    record.image, duplicate_reason(first, record.image_id), kind="image", source=record.source
                )
                continue
            seen[record.image_id] = record.image
            yield record


def captions_csv_spec(value: str) -> tuple[str, Path]:
    """A ``--captions-csv`` value as a source spec and the CSV file it reads.

    ``PATH`` (relative or absolute) becomes ``openclip-csv:PATH``; ``KIND:PATH[?opt=val]`` (any source kind,
    relative or absolute PATH) is kept. Raises ``ValueError`` for an unknown kind."""
    text = str(value)
    head = text.split("?", 1)[0]
    kind = head.split(":", 1)[0].strip().lower() if ":" in head else ""
    # "C:\\data\\x.csv" (a drive letter) and plain paths are files, not KIND:PATH specs
    if kind and len(kind) > 1 and (kind in SOURCE_KINDS or kind in KIND_ALIASES or not os.path.exists(head)):
        _kind_class(kind)
        _, path, _ = parse_spec(text)
        return text, Path(path).expanduser()
    return f"openclip-csv:{text}", Path(head).expanduser()
