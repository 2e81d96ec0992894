"""The ``voc`` source: Pascal-VOC XML with horizontal and oriented boxes (DIOR, DIOR-R, roLabelImg)."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from .base import AnnotatedImage, SkipReport, Source, annotation_files, option
from .detection import detection_fields, parse_classes

_ROBNDBOX_CORNERS = ("left_top", "right_top", "right_bottom", "left_bottom")


@dataclass(frozen=True)
class VocOptions:
    """Options of the ``voc`` source: ``classes`` (default ``any``: no class check; ``dior`` preset)."""

    classes: tuple[str, ...] | None = option(None, parse_classes)


class VocSource(Source):
    """Pascal-VOC XML: ``<object><name>`` with ``<bndbox>`` (horizontal) and/or an oriented box.

    Oriented boxes: DIOR-R's ``<robndbox>`` with ``x_left_top`` … ``y_left_bottom`` corners, or
    roLabelImg's ``<robndbox>`` with ``cx cy w h angle`` (radians). PATH is the annotation folder (or
    one XML file); images default to a ``JPEGImages`` folder next to it. ``classes`` as for ``dota``
    (``dior`` preset; default ``any``).
    """

    kind = "voc"
    default_images = "JPEGImages"
    Options = VocOptions

    def read(self, report: SkipReport) -> Iterator[AnnotatedImage]:
        classes = self.options.classes
        for file in annotation_files(self.path, (".xml",)):
            try:
                # defusedxml: entity declarations (billion laughs) and external entities are refused
                root = SafeET.parse(file).getroot()
            except DefusedXmlException as exc:  # (a ValueError: caught first)
                self.skip(
                    report,
                    file,
                    f"XML refused: {exc!r} (entity declarations and external entities are not read)",
                    kind="file",
                )
                continue
            except (ET.ParseError, OSError, ValueError) as exc:
                self.skip(report, file, f"malformed XML ({exc})", kind="file")
                continue
            objects = []
            for index, node in enumerate(root.iter("object")):
                where = f"{file}#object[{index}]"
                name = (node.findtext("name") or "").strip()
                if not name:
                    self.skip(report, where, "object without <name>", kind="object")
                    continue
                try:
                    bbox, obox = self._boxes(node)
                except ValueError as exc:
                    self.skip(report, where, f"bad box: {exc}", kind="object")
                    continue
                difficult = (node.findtext("difficult") or "0").strip() == "1"
                obj = self.make_object(
                    report, where, name, bbox=bbox, obox=obox, difficult=difficult, known=classes
                )
                if obj is not None:
                    objects.append(obj)
            filename = (root.findtext("filename") or "").strip()
            image = None
            if filename:
                candidate = self.images_root() / filename
                image = candidate if candidate.is_file() else self.find_image(Path(filename).stem)
            image = image or self.find_image(file.stem)
            size = None
            try:
                w, h = (
                    int(float(root.findtext("size/width") or 0)),
                    int(float(root.findtext("size/height") or 0)),
                )
                size = (w, h) if w > 0 and h > 0 else None
            except (ValueError, OverflowError):  # not a number, or inf: the image's own size is used
                size = None
            yield from self.emit(
                report,
                image,
                annotation_file=file,
                objects=objects,
                expected_size=size,
                meta={"file": file.name},
                **detection_fields(classes),
            )

    @staticmethod
    def _boxes(node) -> tuple[tuple | None, tuple | None]:
        def num(parent, key: str) -> float:
            text = parent.findtext(key)
            if text is None:
                raise ValueError(f"<{parent.tag}> has no <{key}>")
            return float(text)

        bbox = obox = None
        b = node.find("bndbox")
        if b is not None:
            bbox = tuple(num(b, k) for k in ("xmin", "ymin", "xmax", "ymax"))
        r = node.find("robndbox")
        if r is not None:
            if r.find("x_left_top") is not None:
                obox = tuple(num(r, f"{axis}_{c}") for c in _ROBNDBOX_CORNERS for axis in ("x", "y"))
            else:
                cx, cy, w, h, a = (num(r, k) for k in ("cx", "cy", "w", "h", "angle"))
                ca, sa = math.cos(a), math.sin(a)
                pts = [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
                obox = tuple(v for x, y in pts for v in (cx + x * ca - y * sa, cy + x * sa + y * ca))
        if bbox is None and obox is None:
            raise ValueError("neither <bndbox> nor <robndbox>")
        return bbox, obox
