"""The ``dota`` source: DOTA ``labelTxt`` files (8-point oriented boxes, ``imagesource:`` / ``gsd:`` header)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..records import ObjectAnnotation
from .base import AnnotatedImage, SkipReport, Source, annotation_files, option
from .detection import DOTA_CLASSES, detection_fields, parse_classes
from .images import IMAGE_EXTENSIONS


@dataclass(frozen=True)
class DotaOptions:
    """Options of the ``dota`` source: ``classes`` (default the DOTA v2.0 list)."""

    classes: tuple[str, ...] | None = option(DOTA_CLASSES, parse_classes)


class DotaSource(Source):
    """DOTA ``labelTxt``: ``imagesource:`` / ``gsd:`` header, then ``x1 y1 … x4 y4 class difficult``.

    PATH is the ``labelTxt`` folder (or one file); images default to the sibling ``images`` folder.
    ``classes`` (default ``dota``: the DOTA v2.0 list; ``any`` accepts every class) decides which
    classes are known; objects of other classes are skipped with a reason.
    """

    kind = "dota"
    default_images = "images"
    Options = DotaOptions

    def read(self, report: SkipReport) -> Iterator[AnnotatedImage]:
        classes = self.options.classes
        label_files = annotation_files(self.path, (".txt",))
        annotated = set()
        for file in label_files:
            annotated.add(file.stem)
            text = self.read_text(report, file)
            if text is None:
                continue
            header: dict[str, str] = {}
            objects: list[ObjectAnnotation] = []
            for lineno, line in enumerate(text.splitlines(), 1):
                line = line.strip()
                if not line:
                    continue
                key, sep, value = line.partition(":")
                if sep and " " not in key:
                    header[key.strip().lower()] = value.strip()
                    continue
                parts = line.split()
                where = f"{file}:{lineno}"
                try:
                    if len(parts) not in (9, 10):
                        raise ValueError
                    coords = [float(v) for v in parts[:8]]
                    difficult = parts[9] == "1" if len(parts) == 10 else False
                except ValueError:
                    self.skip(
                        report,
                        where,
                        f"expected 'x1 y1 x2 y2 x3 y3 x4 y4 class [difficult]', got {line!r}"[:300],
                        kind="row",
                    )
                    continue
                obj = self.make_object(
                    report, where, parts[8], obox=coords, difficult=difficult, known=classes
                )
                if obj is not None:
                    objects.append(obj)
            gsd = _positive_float(header.get("gsd"))
            if header.get("gsd") not in (None, "", "None", "null") and gsd is None:
                self.skip(
                    report,
                    file,
                    f"gsd header {header['gsd']!r} is not a positive number; gsd left unknown",
                    kind="row",
                )
            meta = {"file": file.name}
            if header.get("imagesource"):
                meta["imagesource"] = header["imagesource"]
            yield from self.emit(
                report,
                self.find_image(file.stem),
                annotation_file=file,
                objects=objects,
                gsd=gsd,
                meta=meta,
                **detection_fields(classes),
            )
        self._unannotated(report, annotated)

    def _unannotated(self, report: SkipReport, annotated: set[str]) -> None:
        root = self.images_root()
        if self.path.is_file() or not root.is_dir() or root == self.path:
            return
        for image in sorted(root.iterdir()):
            if image.suffix.lower() in IMAGE_EXTENSIONS and image.stem not in annotated:
                self.skip(report, image, "image has no annotation file")


def _positive_float(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None
