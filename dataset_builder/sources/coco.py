"""The ``coco`` source: COCO detection / instance JSON (``images``, ``annotations``, ``categories``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..records import ObjectAnnotation
from .base import AnnotatedImage, SkipReport, Source, is_int, option, parse_bool


@dataclass(frozen=True)
class CocoOptions:
    """Options of the ``coco`` source: ``include_crowd`` (default ``true``: keep ``iscrowd`` boxes)."""

    include_crowd: bool = option(True, parse_bool)


class CocoSource(Source):
    """COCO detection / instance JSON (``images``, ``annotations`` with ``bbox=[x, y, w, h]``,
    ``categories``); ``images=DIR`` holds the ``file_name`` files. The category list is exhaustive."""

    kind = "coco"
    Options = CocoOptions

    def read(self, report: SkipReport) -> Iterator[AnnotatedImage]:
        data = self.read_json_object(report, self.path, "COCO JSON")
        if data is None:
            return
        try:
            images, annotations = data["images"], data.get("annotations", [])
            for key, value in (("images", images), ("annotations", annotations)):
                if not isinstance(value, list):
                    raise TypeError(f"{key!r} must be a list, got {_json_type(value)}")
            if not isinstance(data["categories"], list):
                raise TypeError(f"'categories' must be a list, got {_json_type(data['categories'])}")
            categories = {}
            for c in data["categories"]:
                if not isinstance(c, dict) or not _is_id(c.get("id")) or not isinstance(c.get("name"), str):
                    raise TypeError(f"category {c!r} needs an integer 'id' and a 'name' string"[:300])
                categories[int(c["id"])] = c["name"]
        except (KeyError, TypeError, ValueError) as exc:
            self.skip(report, self.path, f"malformed COCO JSON ({type(exc).__name__}: {exc})", kind="file")
            return
        by_image: dict[Any, list[ObjectAnnotation]] = {}
        image_ids = {img.get("id") for img in images if isinstance(img, dict) and _is_id(img.get("id"))}
        for index, ann in enumerate(annotations):
            where = f"{self.path}#annotations[{index}]"
            try:
                if not isinstance(ann, dict):
                    raise TypeError(f"annotation is a {_json_type(ann)}, not an object")
                if not isinstance(ann["bbox"], list):
                    raise TypeError(f"'bbox' must be a list [x, y, w, h], got {_json_type(ann['bbox'])}")
                x, y, w, h = (float(v) for v in ann["bbox"])
                if not _is_id(ann["category_id"]):
                    raise TypeError(f"'category_id' must be an integer, got {ann['category_id']!r}"[:200])
                cat = int(ann["category_id"])
                img_id = ann["image_id"]
                if not _is_id(img_id):
                    raise TypeError(f"'image_id' must be an integer or a string, got {img_id!r}"[:200])
            except (KeyError, TypeError, ValueError) as exc:
                self.skip(report, where, f"malformed annotation ({type(exc).__name__}: {exc})", kind="object")
                continue
            if img_id not in image_ids:
                self.skip(
                    report,
                    where,
                    f"annotation for image_id {img_id!r} that is not in 'images'",
                    kind="object",
                )
                continue
            if cat not in categories:
                self.skip(
                    report, where, f"unknown class: category_id {cat} is not in 'categories'", kind="object"
                )
                continue
            if ann.get("iscrowd") and not self.options.include_crowd:
                continue
            obj = self.make_object(report, where, categories[cat], bbox=(x, y, x + w, y + h))
            if obj is not None:
                by_image.setdefault(img_id, []).append(obj)
        root = self.images_root()
        for index, img in enumerate(images):
            where = f"{self.path}#images[{index}]"
            if not isinstance(img, dict) or not isinstance(img.get("file_name"), str) or not img["file_name"]:
                self.skip(report, where, "image entry without a 'file_name' string", kind="row")
                continue
            if not _is_id(img.get("id")):
                self.skip(
                    report,
                    where,
                    f"image {img['file_name']!r}: 'id' must be an integer or a string, got {img.get('id')!r}"[
                        :300
                    ],
                    kind="row",
                )
                continue
            size = (img.get("width"), img.get("height"))
            yield from self.emit(
                report,
                root / img["file_name"],
                annotation_file=where,
                objects=by_image.get(img["id"], []),
                expected_size=size if all(is_int(v) and v > 0 for v in size) else None,
                exhaustive_classes=sorted(categories.values()),
                meta={"file": img["file_name"], "coco_id": img["id"]},
            )


def _is_id(value: Any) -> bool:
    """COCO ids are integers (or, in some exports, strings); lists, objects, floats, booleans are not."""
    return is_int(value) or (isinstance(value, str) and bool(value))


def _json_type(value: Any) -> str:
    return "null" if value is None else type(value).__name__
