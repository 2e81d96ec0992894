"""The source adapters, one class per ``KIND`` (see :data:`SOURCE_KINDS`)."""

from __future__ import annotations

import csv
import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import defusedxml.ElementTree as SafeET
import numpy as np
import yaml
from defusedxml import DefusedXmlException
from PIL import Image

from ..records import ImageRecord, MaskSummary, ObjectAnnotation
from .base import SkipReport, Source, _missing, parse_bool, parse_list
from .images import IMAGE_EXTENSIONS, SkipItem, pixel_limit

# Class lists of the detection datasets (their annotations are exhaustive for these classes).
DOTA_CLASSES = (
    "plane",
    "ship",
    "storage-tank",
    "baseball-diamond",
    "tennis-court",
    "basketball-court",
    "ground-track-field",
    "harbor",
    "bridge",
    "large-vehicle",
    "small-vehicle",
    "helicopter",
    "roundabout",
    "soccer-ball-field",
    "swimming-pool",
    "container-crane",
    "airport",
    "helipad",
)  # DOTA v2.0 (a superset of v1.0 and v1.5)
DIOR_CLASSES = (
    "airplane",
    "airport",
    "baseballfield",
    "basketballcourt",
    "bridge",
    "chimney",
    "dam",
    "Expressway-Service-area",
    "Expressway-toll-station",
    "golffield",
    "groundtrackfield",
    "harbor",
    "overpass",
    "ship",
    "stadium",
    "storagetank",
    "tenniscourt",
    "trainstation",
    "vehicle",
    "windmill",
)
CLASS_PRESETS = {"dota": DOTA_CLASSES, "dior": DIOR_CLASSES}

# Mask palettes: class → RGB colour (mode "color") or class → index (mode "index").
ISAID_PALETTE = {
    "ship": (0, 0, 63),
    "storage-tank": (0, 63, 63),
    "baseball-diamond": (0, 63, 0),
    "tennis-court": (0, 63, 127),
    "basketball-court": (0, 63, 191),
    "ground-track-field": (0, 63, 255),
    "bridge": (0, 127, 63),
    "large-vehicle": (0, 127, 127),
    "small-vehicle": (0, 0, 127),
    "helicopter": (0, 0, 191),
    "swimming-pool": (0, 0, 255),
    "roundabout": (0, 191, 127),
    "soccer-ball-field": (0, 127, 191),
    "plane": (0, 127, 255),
    "harbor": (0, 100, 155),
    "background": (0, 0, 0),
}
LOVEDA_CLASSES = {
    "no-data": 0,
    "background": 1,
    "building": 2,
    "road": 3,
    "water": 4,
    "barren": 5,
    "forest": 6,
    "agriculture": 7,
}
MASK_PRESETS: dict[str, dict[str, Any]] = {
    "isaid": {
        "mode": "color",
        "palette": ISAID_PALETTE,
        "suffix": "_instance_color_RGB.png",
        "instances_suffix": "_instance_id_RGB.png",
        "ignore": ("background",),
    },
    "loveda": {
        "mode": "index",
        "palette": LOVEDA_CLASSES,
        "suffix": ".png",
        "instances_suffix": "",
        "ignore": ("no-data",),
    },
}


def _classes(value: Any) -> tuple[str, ...] | None:
    """``any`` → no class check; a preset name; or a comma-separated list."""
    if value in (None, "", "any"):
        return None
    if isinstance(value, str) and value.lower() in CLASS_PRESETS:
        return CLASS_PRESETS[value.lower()]
    return tuple(parse_list(value))


def _read_text(report: SkipReport, source: Source, path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        source.skip(report, path, f"cannot read annotation file ({exc})", kind="file")
        return None


def _files(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(p for p in root.iterdir() if p.is_file() and p.name.lower().endswith(suffixes))


# ------------------------------------------------------------------------------------------ folder


class FolderSource(Source):
    """Scene classification layout ``PATH/<label>/**/<image>``: the label is the top sub-folder.

    Files directly in ``PATH`` (``labels.csv``, a readme) and dot-files are not images of any class and
    are ignored; every other file under a class folder is either a record or a skip with a reason.
    """

    kind = "folder"

    def _records(self, report: SkipReport) -> Iterator[ImageRecord]:
        if not self.path.is_dir():
            raise ValueError(f"folder source: PATH {str(self.path)!r} must be a directory of class folders")
        for entry in sorted(self.path.iterdir()):
            if entry.is_symlink() and not entry.exists() and not entry.name.startswith("."):
                self.skip(report, entry, f"image not found ({_missing(entry)})")
        for class_dir in sorted(p for p in self.path.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for file in sorted(class_dir.rglob("*")):
                if file.name.startswith("."):
                    continue
                if not file.is_file():
                    if file.is_symlink():  # dangling or looping: counted, not dropped unseen
                        self.skip(report, file, f"image not found ({_missing(file)})")
                    continue
                if file.suffix.lower() not in IMAGE_EXTENSIONS:
                    self.skip(report, file, f"not an image file extension ({file.suffix or 'none'})")
                    continue
                yield from self.emit(
                    report,
                    file,
                    labels=[class_dir.name],
                    meta={"file": str(file.relative_to(self.path))},
                )


class ImagesSource(Source):
    """A plain folder of images without annotations: the image files directly inside ``PATH`` (no label).

    Other files and dot-files there are skipped with a reason; sub-folders are not read.
    """

    kind = "images"

    def _records(self, report: SkipReport) -> Iterator[ImageRecord]:
        if not self.path.is_dir():
            raise ValueError(f"images source: PATH {str(self.path)!r} must be a directory of image files")
        for file in sorted(p for p in self.path.iterdir() if not p.name.startswith(".")):
            if not file.is_file():
                if file.is_symlink():  # dangling or looping: counted, not dropped unseen
                    self.skip(report, file, f"image not found ({_missing(file)})")
                continue
            if file.suffix.lower() not in IMAGE_EXTENSIONS:
                self.skip(report, file, f"not an image file extension ({file.suffix or 'none'})")
                continue
            yield from self.emit(report, file, meta={"file": file.name})


# ---------------------------------------------------------------------------------------- karpathy


class KarpathySource(Source):
    """Karpathy caption JSON ``{"images": [{"filename", "split", "sentences": [{"raw"}]}]}``.

    Human sentences become ``references``; the source split is kept. Options: ``labels=CSV`` with a
    ``filename`` column and ``label_column`` (default ``label``) for datasets whose JSON has no labels
    (UCM-Captions); ``label_from_filename=true`` takes the label from ``<label>_<n>.<ext>`` (RSICD).
    """

    kind = "karpathy"
    default_images = "images"
    OPTIONS: ClassVar = {
        "labels": (str, None),
        "label_column": (str, "label"),
        "label_from_filename": (parse_bool, False),
    }

    def _records(self, report: SkipReport) -> Iterator[ImageRecord]:
        text = _read_text(report, self, self.path)
        if text is None:
            return
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            self.skip(report, self.path, f"malformed JSON ({exc})", kind="file")
            return
        entries = data.get("images") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            self.skip(
                report,
                self.path,
                "no 'images' list at the top level (not a Karpathy caption file)",
                kind="file",
            )
            return
        if not self.name and isinstance(data.get("dataset"), str):
            self.name = data["dataset"].lower()
        labels = self._label_table(report)
        root = self.images_root()
        for index, entry in enumerate(entries):
            where = f"{self.path}#images[{index}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
                self.skip(report, where, "entry has no 'filename' string", kind="row")
                continue
            sentences = entry.get("sentences", [])
            if not isinstance(sentences, list):
                self.skip(report, where, "'sentences' is not a list", kind="row")
                continue
            refs = []
            for s in sentences:
                raw = s.get("raw") if isinstance(s, dict) else None
                if isinstance(raw, str) and raw.strip():
                    refs.append(raw.strip())
                else:
                    self.skip(report, where, f"sentence without a 'raw' string: {s!r}"[:200], kind="row")
            filename = entry["filename"]
            label = entry.get("label") if isinstance(entry.get("label"), str) else labels.get(filename)
            if label is None and self.options["label_from_filename"]:
                stem = Path(filename).stem
                label = stem.rsplit("_", 1)[0] if "_" in stem else None
            sub = entry.get("filepath") if isinstance(entry.get("filepath"), str) else ""
            image = root / sub / filename
            yield from self.emit(
                report,
                image,
                annotation_file=where,
                references=refs,
                labels=[label] if label else [],
                split=entry.get("split") if isinstance(entry.get("split"), str) else None,
                meta={"file": filename, **({"imgid": entry["imgid"]} if "imgid" in entry else {})},
            )

    def _label_table(self, report: SkipReport) -> dict[str, str]:
        path = self.options["labels"]
        if not path:
            return {}
        path = self._resolve(path, self.path.parent)
        column = self.options["label_column"]
        if not path.is_file():
            raise ValueError(
                f"karpathy labels={str(path)!r} is not a file (a CSV with 'filename' and {column!r})"
            )
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if "filename" not in (reader.fieldnames or []) or column not in (reader.fieldnames or []):
                raise ValueError(
                    f"karpathy labels={str(path)!r} needs columns 'filename' and {column!r} "
                    f"(label_column), has {reader.fieldnames}"
                )
            return {row["filename"]: row[column] for row in reader if row.get("filename") and row.get(column)}


# -------------------------------------------------------------------------------------------- dota


def _detection_fields(classes: tuple[str, ...] | None) -> dict[str, Any]:
    return {"exhaustive_classes": list(classes) if classes else []}


class DotaSource(Source):
    """DOTA ``labelTxt``: ``imagesource:`` / ``gsd:`` header, then ``x1 y1 … x4 y4 class difficult``.

    PATH is the ``labelTxt`` folder (or one file); images default to the sibling ``images`` folder.
    ``classes`` (default ``dota``: the DOTA v2.0 list; ``any`` accepts every class) decides which
    classes are known; objects of other classes are skipped with a reason.
    """

    kind = "dota"
    default_images = "images"
    OPTIONS: ClassVar = {"classes": (_classes, CLASS_PRESETS["dota"])}

    def _records(self, report: SkipReport) -> Iterator[ImageRecord]:
        classes = self.options["classes"]
        label_files = _files(self.path, (".txt",))
        annotated = set()
        for file in label_files:
            annotated.add(file.stem)
            text = _read_text(report, self, file)
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
                **_detection_fields(classes),
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


# --------------------------------------------------------------------------------------------- voc


_ROBNDBOX_CORNERS = ("left_top", "right_top", "right_bottom", "left_bottom")


class VocSource(Source):
    """Pascal-VOC XML: ``<object><name>`` with ``<bndbox>`` (horizontal) and/or an oriented box.

    Oriented boxes: DIOR-R's ``<robndbox>`` with ``x_left_top`` … ``y_left_bottom`` corners, or
    roLabelImg's ``<robndbox>`` with ``cx cy w h angle`` (radians). PATH is the annotation folder (or
    one XML file); images default to a ``JPEGImages`` folder next to it. ``classes`` as for ``dota``
    (``dior`` preset; default ``any``).
    """

    kind = "voc"
    default_images = "JPEGImages"
    OPTIONS: ClassVar = {"classes": (_classes, None)}

    def _records(self, report: SkipReport) -> Iterator[ImageRecord]:
        classes = self.options["classes"]
        for file in _files(self.path, (".xml",)):
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
                **_detection_fields(classes),
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


# -------------------------------------------------------------------------------------------- coco


class CocoSource(Source):
    """COCO detection / instance JSON (``images``, ``annotations`` with ``bbox=[x, y, w, h]``,
    ``categories``); ``images=DIR`` holds the ``file_name`` files. The category list is exhaustive."""

    kind = "coco"
    OPTIONS: ClassVar = {"include_crowd": (parse_bool, True)}

    def _records(self, report: SkipReport) -> Iterator[ImageRecord]:
        text = _read_text(report, self, self.path)
        if text is None:
            return
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError(f"the top level is a {type(data).__name__}, not an object")
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
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
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
            if ann.get("iscrowd") and not self.options["include_crowd"]:
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
                expected_size=size if all(_is_int(v) and v > 0 for v in size) else None,
                exhaustive_classes=sorted(categories.values()),
                meta={"file": img["file_name"], "coco_id": img["id"]},
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value: Any) -> bool:
    """COCO ids are integers (or, in some exports, strings); lists, objects, floats, booleans are not."""
    return _is_int(value) or (isinstance(value, str) and bool(value))


def _json_type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# -------------------------------------------------------------------------------------------- mask


def _palette(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    text = str(value)
    if text.lower() in MASK_PRESETS:
        return {"preset": text.lower()}
    path = Path(text).expanduser()
    if not path.is_file():
        raise ValueError(
            f"palette {text!r} is neither a preset ({', '.join(MASK_PRESETS)}) nor a YAML/JSON file "
            "mapping class name → [r, g, b] (color masks) or → index (index masks)"
        )
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not data:
        raise ValueError(f"palette file {text!r} must hold a mapping class name → colour or index")
    return {"classes": data}


class MaskSource(Source):
    """Segmentation masks: class-colour (iSAID) or class-index (LoveDA) images, one per image.

    Options: ``palette`` (``isaid`` | ``loveda`` | a YAML/JSON file mapping class → ``[r, g, b]`` or →
    index), ``mode`` (``color`` | ``index``, default from the preset / palette), ``suffix`` (mask file
    = image stem + suffix), ``instances_suffix`` (iSAID's instance-id masks: gives instance counts and
    one box per instance), ``ignore`` (classes left out of the summary). A mask colour or index not in
    the palette is reported (``pixels``) and left out. The palette classes are exhaustive.
    """

    # each pending image would hold its decoded mask while queued for a worker: analyse here instead
    pooled: ClassVar[bool] = False
    kind = "mask"
    OPTIONS: ClassVar = {
        "palette": (_palette, {"preset": "isaid"}),
        "mode": (str, None),
        "suffix": (str, None),
        "instances_suffix": (str, None),
        "ignore": (parse_list, None),
    }

    def _setup(self) -> None:
        pal = self.options["palette"]
        preset = MASK_PRESETS.get(pal.get("preset", ""), {})
        classes = pal.get("classes") or preset.get("palette")
        mode = (
            self.options["mode"]
            or preset.get("mode")
            or ("index" if all(isinstance(v, int) for v in classes.values()) else "color")
        )
        if mode not in ("color", "index"):
            raise ValueError(f"mask source: mode must be 'color' or 'index', got {mode!r}")
        self.mode = mode
        self.classes = list(classes)

        def byte(v: Any) -> bool:
            return _is_int(v) and 0 <= v <= 255

        keys = []
        for name, value in classes.items():
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"mask source: palette class names must be non-empty strings, got {name!r}")
            if mode == "color":
                if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(map(byte, value))):
                    raise ValueError(
                        f"mask source: color palette value of {name!r} must be [r, g, b] with integers "
                        f"0-255, got {value!r}"
                    )
                keys.append(value[0] << 16 | value[1] << 8 | value[2])
            else:
                if not (_is_int(value) and value >= 0):
                    raise ValueError(
                        f"mask source: index palette value of {name!r} must be a non-negative integer, "
                        f"got {value!r}"
                    )
                keys.append(value)
        self.lookup = dict(zip(keys, range(len(self.classes))))
        self.suffix = self.options["suffix"] or preset.get("suffix") or ".png"
        inst = self.options["instances_suffix"]
        self.instances_suffix = preset.get("instances_suffix", "") if inst is None else inst
        ignore = self.options["ignore"]
        self.ignore = set(preset.get("ignore", ()) if ignore is None else ignore)

    def _records(self, report: SkipReport) -> Iterator[ImageRecord]:
        self._setup()
        masks = (
            [self.path]
            if self.path.is_file()
            else sorted(
                p
                for p in self.path.iterdir()
                if p.is_file()
                and p.name.endswith(self.suffix)
                and not (self.instances_suffix and p.name.endswith(self.instances_suffix))
            )
        )
        images_root = self.images_dir or (self.path.parent if self.path.is_file() else self.path)
        for mask_file in masks:
            stem = (
                mask_file.name[: -len(self.suffix)]
                if mask_file.name.endswith(self.suffix)
                else mask_file.stem
            )
            image = self.find_image(stem, images_root)
            if image is not None and image.resolve() == mask_file.resolve():
                image = None
            try:
                class_map, unknown = self._class_map(mask_file)
                instances = self._instances(mask_file, stem)
            except SkipItem as exc:
                self.skip(report, mask_file, exc.reason, kind="file")
                continue
            if unknown:
                self.skip(
                    report,
                    mask_file,
                    f"mask values not in the palette, left out: {unknown}"[:400],
                    kind="pixels",
                )
            if instances is not None and instances.shape != class_map.shape:
                self.skip(
                    report,
                    mask_file,
                    "instance mask size differs from the class mask; instances ignored",
                    kind="file",
                )
                instances = None

            def mask_fn(rect, scale, class_map=class_map, instances=instances, where=mask_file):
                return self._summary(class_map, instances, rect, scale)

            yield from self.emit(
                report,
                image,
                annotation_file=mask_file,
                mask_fn=mask_fn,
                expected_size=class_map.shape[::-1],
                exhaustive_classes=[c for c in self.classes if c not in self.ignore],
                meta={"file": image.name if image else stem, "mask": mask_file.name},
            )

    def _open(self, path: Path) -> np.ndarray:
        try:
            with pixel_limit(self.image_settings.max_pixels), Image.open(path) as im:
                # index masks: the stored values (palette images: their indices) are the class indices
                return np.asarray(im.convert("RGB")) if self.mode == "color" else np.asarray(im)
        except (OSError, Image.DecompressionBombError) as exc:
            raise SkipItem(f"unreadable mask ({exc})") from None

    def _class_map(self, path: Path) -> tuple[np.ndarray, dict[str, int]]:
        array = self._open(path)
        if self.mode == "color":
            if array.ndim != 3:
                raise SkipItem("colour mask is not an RGB image")
            keys = (
                (array[..., 0].astype(np.int32) << 16) | (array[..., 1].astype(np.int32) << 8) | array[..., 2]
            )
        else:
            if array.ndim != 2:
                raise SkipItem(f"index mask must have one band, has shape {array.shape}")
            keys = array.astype(np.int64)
        values, inverse = np.unique(keys, return_inverse=True)
        index = np.array([self.lookup.get(int(v), -1) for v in values], dtype=np.int16)
        class_map = index[inverse.reshape(keys.shape)]
        unknown = {}
        for v in values:
            if int(v) not in self.lookup:
                label = (
                    f"rgb({int(v) >> 16},{int(v) >> 8 & 255},{int(v) & 255})"
                    if self.mode == "color"
                    else str(int(v))
                )
                unknown[label] = int((keys == v).sum())
        return class_map, unknown

    def _instances(self, mask_file: Path, stem: str) -> np.ndarray | None:
        if not self.instances_suffix:
            return None
        path = mask_file.parent / f"{stem}{self.instances_suffix}"
        if not path.is_file():
            return None
        array = self._open(path)
        if array.ndim == 3:
            return (
                (array[..., 0].astype(np.int32) << 16) | (array[..., 1].astype(np.int32) << 8) | array[..., 2]
            )
        return array.astype(np.int32)

    def _summary(self, class_map, instances, rect, scale) -> tuple[MaskSummary, list[ObjectAnnotation]]:
        x0, y0, x1, y1 = rect
        region = class_map[y0:y1, x0:x1]
        counts = np.bincount(region.ravel() + 1, minlength=len(self.classes) + 1)[1:]
        total = region.size
        fractions = {
            c: round(float(counts[i]) / total, 6)
            for i, c in enumerate(self.classes)
            if counts[i] and c not in self.ignore
        }
        inst_counts: dict[str, int] = {}
        objects: list[ObjectAnnotation] = []
        if instances is not None:
            ids = instances[y0:y1, x0:x1]
            ys, xs = np.nonzero(ids)
            if ys.size:
                uniq, first, inverse = np.unique(ids[ys, xs], return_index=True, return_inverse=True)
                n = uniq.size
                mins_x = np.full(n, np.iinfo(np.int64).max)
                mins_y = mins_x.copy()
                maxs_x = np.full(n, -1)
                maxs_y = maxs_x.copy()
                np.minimum.at(mins_x, inverse, xs)
                np.minimum.at(mins_y, inverse, ys)
                np.maximum.at(maxs_x, inverse, xs)
                np.maximum.at(maxs_y, inverse, ys)
                cls = region[ys[first], xs[first]]
                for k in range(n):
                    if cls[k] < 0 or self.classes[cls[k]] in self.ignore:
                        continue
                    name = self.classes[cls[k]]
                    inst_counts[name] = inst_counts.get(name, 0) + 1
                    box = (
                        mins_x[k] * scale,
                        mins_y[k] * scale,
                        (maxs_x[k] + 1) * scale,
                        (maxs_y[k] + 1) * scale,
                    )
                    objects.append(ObjectAnnotation(name, bbox=tuple(float(v) for v in box)))
        return MaskSummary(class_fractions=fractions, instance_counts=inst_counts), objects


# ------------------------------------------------------------------------------------ openclip-csv


def _separator(value: Any) -> str:
    text = str(value)
    text = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}.get(text, text)
    if len(text) != 1:
        raise ValueError(f"sep must be one character (or tab/comma/semicolon/pipe), got {value!r}")
    return text


_SEPARATORS = (",", "\t", ";", "|")


def _sniff_separator(header_line: str, keys: tuple[str, ...]) -> str | None:
    """The separator that splits ``header_line`` into fields holding every name in ``keys``."""
    for sep in _SEPARATORS:
        fields_ = next(csv.reader([header_line], delimiter=sep), [])
        if all(k in fields_ for k in keys):
            return sep
    return None


class OpenClipCsvSource(Source):
    """open_clip CSV / TSV: one row per (image, caption), rows of one image grouped into one record.

    Options: ``sep`` (default: detected from the header line among ``,`` tab ``;`` ``|``, so the
    tab-separated files ``hqrs build --format open_clip-csv`` writes read back as they are; ``tab`` for
    open_clip's own default), ``img_key`` (default ``filepath``), ``caption_key`` (default ``caption``;
    open_clip's default is ``title``), ``label_key`` (optional). Relative file paths are resolved against
    ``images=DIR``, else the CSV's folder; absolute paths, or paths that leave that folder, need
    ``allow_outside_root=true``. The captions become the record's ``references``.

    A quote that opens a field and never closes makes the csv module read every following line into
    that one field: such a row (a quoted field running over lines that hold the separator) is reported
    as damaged, one ``row`` skip per physical line it swallowed, with the line numbers.
    """

    kind = "openclip-csv"
    OPTIONS: ClassVar = {
        "sep": (_separator, None),
        "img_key": (str, "filepath"),
        "caption_key": (str, "caption"),
        "label_key": (str, ""),
    }

    def _records(self, report: SkipReport) -> Iterator[ImageRecord]:
        img_key, cap_key, label_key = (self.options[k] for k in ("img_key", "caption_key", "label_key"))
        groups: dict[str, tuple[list[str], str, int]] = {}
        try:
            f = open(self.path, newline="", encoding="utf-8-sig")
        except OSError as exc:
            self.skip(report, self.path, f"cannot read CSV ({exc})", kind="file")
            return
        with f:
            try:
                header_line = f.readline()
            except UnicodeDecodeError as exc:
                self.skip(
                    report, self.path, f"not UTF-8 text ({exc}); re-encode the CSV as UTF-8", kind="file"
                )
                return
            sep = self.options["sep"] or _sniff_separator(header_line, (img_key, cap_key)) or ","
            header = next(csv.reader([header_line], delimiter=sep), [])
            missing = [k for k in (img_key, cap_key) if k not in header]
            if missing:
                self.skip(
                    report,
                    self.path,
                    f"CSV header {header} lacks column(s) {missing} (set img_key / caption_key / sep)",
                    kind="file",
                )
                return
            reader = csv.reader(f, delimiter=sep)
            last_line = 1  # the header's; physical line numbers, blank lines and multi-line rows included
            while True:
                try:
                    fields_ = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:
                    self.skip(
                        report, f"{self.path}:{last_line + 1}", f"malformed CSV row ({exc})", kind="row"
                    )
                    last_line = reader.line_num + 1
                    continue
                except UnicodeDecodeError as exc:
                    self.skip(
                        report,
                        f"{self.path}:{last_line}",
                        f"not UTF-8 text ({exc}); rows after this line were not read: re-encode the CSV as UTF-8",
                        kind="file",
                    )
                    break
                first, last_line = last_line + 1, reader.line_num + 1  # reader counts from the body
                where = f"{self.path}:{first}"
                if not fields_:
                    continue  # a blank line
                if self._swallowed(fields_, sep):
                    for line in range(first, last_line + 1):
                        self.skip(
                            report,
                            f"{self.path}:{line}",
                            f"damaged row: a quote opened on line {first} does not close before line "
                            f"{last_line}, so lines {first}-{last_line} were read as one field; close or "
                            'escape the quote ("")',
                            kind="row",
                        )
                    continue
                if len(fields_) != len(header):
                    self.skip(
                        report,
                        where,
                        f"row has {len(fields_)} field(s) where the header has {len(header)}"
                        + (" (too few)" if len(fields_) < len(header) else ""),
                        kind="row",
                    )
                    continue
                row = dict(zip(header, fields_))
                path, caption = (row[img_key] or "").strip(), (row[cap_key] or "").strip()
                if not path or not caption:
                    self.skip(report, where, f"empty {img_key if not path else cap_key!r}", kind="row")
                    continue
                captions, label, line = groups.setdefault(
                    path, ([], (row.get(label_key) or "").strip() if label_key else "", first)
                )
                captions.append(caption)
        root = self.images_dir or self.path.parent
        for path, (captions, label, line) in groups.items():
            image = Path(path) if Path(path).is_absolute() else root / path
            yield from self.emit(
                report,
                image,
                annotation_file=f"{self.path}:{line}",
                references=captions,
                labels=[label] if label else [],
                meta={"file": path},
            )

    @staticmethod
    def _swallowed(fields_: list[str], sep: str) -> bool:
        """A field spanning lines whose continuation lines look like rows (hold the separator), or one
        that runs to the end of the file."""
        for value in fields_:
            if "\n" not in value and "\r" not in value:
                continue
            lines = value.splitlines()[1:]
            if any(sep in line for line in lines) or value.endswith(("\n", "\r")):
                return True
        return False


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
