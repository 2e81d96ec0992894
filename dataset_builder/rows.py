"""The rows of HQRS-IT: the three configs' features and the one function that makes their rows.

Every writer (parquet shards, webdataset, open_clip CSV) and :class:`~hqrs.dataset_builder.builder.HQRSIT`
read rows made here, from a :class:`~hqrs.dataset_builder.planning.PlannedImage` (a staged MpGI result)
and its :class:`~hqrs.dataset_builder.sources.images.ImageCell` (the image bytes that are embedded).

Configs:

* ``default``: ``image``, ``image_id``, ``source``, ``captions`` (list), ``label`` ("" if none),
  ``width``, ``height``, ``gsd`` (null if unknown).
* ``full``: ``default`` plus ``labels``, ``source_split``, ``rule_text``, ``perspectives`` (every
  generated description with generator / perspective / model / prompt id), ``caption_provenance``
  (each caption's length and the perspectives it integrates), ``references`` (human captions from the
  source) and ``objects``.
* ``pairs``: one row per (image, caption): ``image``, ``image_id``, ``caption``, ``caption_index``,
  ``length``, ``source`` — CLIP-ready.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from datasets import Features, Image, List, Value

from .records import Caption, MpGIResult
from .sources.images import ImageCell

if TYPE_CHECKING:
    import pyarrow as pa

CONFIG_NAMES = ("default", "full", "pairs")

_DEFAULT = {
    "image": Image(),
    "image_id": Value("string"),
    "source": Value("string"),
    "captions": List(Value("string")),
    "label": Value("string"),
    "width": Value("int32"),
    "height": Value("int32"),
    "gsd": Value("float32"),
}
FEATURES: dict[str, Features] = {
    "default": Features(_DEFAULT),
    "full": Features(
        {
            **_DEFAULT,
            "labels": List(Value("string")),
            "source_split": Value("string"),
            "rule_text": Value("string"),
            "perspectives": List(
                {
                    "generator": Value("string"),
                    "perspective": Value("string"),
                    "model": Value("string"),
                    "prompt_id": Value("string"),
                    "text": Value("string"),
                }
            ),
            "caption_provenance": List(
                {"text": Value("string"), "length": Value("string"), "sources": List(Value("string"))}
            ),
            "references": List(Value("string")),
            "objects": List(
                {
                    "category": Value("string"),
                    "bbox": List(Value("float32"), length=4),
                    "obox": List(Value("float32")),
                    "difficult": Value("bool"),
                }
            ),
        }
    ),
    "pairs": Features(
        {
            "image": Image(),
            "image_id": Value("string"),
            "caption": Value("string"),
            "caption_index": Value("int32"),
            "length": Value("string"),
            "source": Value("string"),
        }
    ),
}


def caption_length(text: str) -> str:
    """Length bucket of a caption without one (released CSVs): ≤ 15 words short, ≤ 40 medium, else long."""
    n = len(text.split())
    return "short" if n <= 15 else "medium" if n <= 40 else "long"


def label_text(labels: list[str]) -> str:
    return "; ".join(labels)


def nonempty_captions(result: MpGIResult) -> list[Caption]:
    """The captions of a result that have text (every export format writes only these)."""
    return [c for c in result.captions if c.text.strip()]


def rows_for(config: str, result: MpGIResult, cell: ImageCell) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(key, row)`` of one staged result in config ``config``, in the features' storage form (the
    image is ``{"bytes", "path"}``; see :func:`encode_rows`). ``pairs`` gives one row per caption,
    the other configs one row per image."""
    record = result.record
    image_id = record.image_id
    captions = nonempty_captions(result)
    image = cell.storage()
    if config == "pairs":
        for i, cap in enumerate(captions):
            yield (
                f"{image_id}-{i}",
                {
                    "image": image,
                    "image_id": image_id,
                    "caption": cap.text,
                    "caption_index": i,
                    "length": cap.length,
                    "source": record.source,
                },
            )
        return
    row = {
        "image": image,
        "image_id": image_id,
        "source": record.source,
        "captions": [c.text for c in captions],
        "label": label_text(record.labels or []),
        "width": record.width,
        "height": record.height,
        "gsd": record.gsd,
    }
    if config == "full":
        row.update(
            labels=list(record.labels or []),
            source_split=record.split or "",
            rule_text=result.rule_text or "",
            perspectives=[
                {
                    "generator": p.generator,
                    "perspective": p.perspective,
                    "model": p.model,
                    "prompt_id": p.prompt_id,
                    "text": p.text,
                }
                for p in result.perspectives
            ],
            caption_provenance=[
                {"text": c.text, "length": c.length, "sources": list(c.sources or [])} for c in captions
            ],
            references=list(record.references or []),
            objects=[
                {
                    "category": o.category,
                    "bbox": list(o.bbox),
                    "obox": list(o.obox) if o.obox is not None else [],
                    "difficult": bool(o.difficult),
                }
                for o in record.objects
            ],
        )
    yield image_id, row


def encode_rows(features: Features, rows: list[dict[str, Any]]) -> pa.Table:
    """A pyarrow table (the features' schema, HF metadata included) of rows from :func:`rows_for`.

    Those rows are already in storage form, so they go to arrow directly; ``Features.encode_example``
    per row would only rebuild the same dicts.
    """
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=features.arrow_schema)


__all__ = [
    "CONFIG_NAMES",
    "FEATURES",
    "caption_length",
    "encode_rows",
    "label_text",
    "nonempty_captions",
    "rows_for",
]
