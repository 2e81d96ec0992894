"""The ``mask`` source: segmentation masks, class-colour (iSAID) or class-index (LoveDA), one per image."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from ..records import MaskSummary, ObjectAnnotation
from .base import AnnotatedImage, SkipReport, Source, is_int, option, parse_list
from .images import SkipItem, pixel_limit

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


def _palette(value: Any) -> dict[str, Any]:
    """The ``palette=`` option: a preset name, a YAML / JSON file, or (in a mapping spec) a mapping."""
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


@dataclass(frozen=True)
class MaskOptions:
    """Options of the ``mask`` source (see :class:`MaskSource`); ``None``: the palette preset's value."""

    palette: dict[str, Any] = option({"preset": "isaid"}, _palette)
    mode: str | None = option(None, str)
    suffix: str | None = option(None, str)
    instances_suffix: str | None = option(None, str)
    ignore: list[str] | None = option(None, parse_list)


class MaskSource(Source):
    """Segmentation masks: class-colour (iSAID) or class-index (LoveDA) images, one per image.

    Options: ``palette`` (``isaid`` | ``loveda`` | a YAML/JSON file mapping class → ``[r, g, b]`` or →
    index), ``mode`` (``color`` | ``index``, default from the preset / palette), ``suffix`` (mask file
    = image stem + suffix), ``instances_suffix`` (iSAID's instance-id masks: gives instance counts and
    one box per instance), ``ignore`` (classes left out of the summary). A mask colour or index not in
    the palette is reported (``pixels``) and left out. The palette classes are exhaustive.
    """

    # each annotated image holds its decoded mask while queued for a worker: analyse here instead
    pooled = False
    kind = "mask"
    Options = MaskOptions

    def _setup(self) -> None:
        pal = self.options.palette
        preset = MASK_PRESETS.get(pal.get("preset", ""), {})
        classes = pal.get("classes") or preset.get("palette")
        mode = (
            self.options.mode
            or preset.get("mode")
            or ("index" if all(isinstance(v, int) for v in classes.values()) else "color")
        )
        if mode not in ("color", "index"):
            raise ValueError(f"mask source: mode must be 'color' or 'index', got {mode!r}")
        self.mode = mode
        self.classes = list(classes)

        def byte(v: Any) -> bool:
            return is_int(v) and 0 <= v <= 255

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
                if not (is_int(value) and value >= 0):
                    raise ValueError(
                        f"mask source: index palette value of {name!r} must be a non-negative integer, "
                        f"got {value!r}"
                    )
                keys.append(value)
        self.lookup = dict(zip(keys, range(len(self.classes))))
        self.suffix = self.options.suffix or preset.get("suffix") or ".png"
        inst = self.options.instances_suffix
        self.instances_suffix = preset.get("instances_suffix", "") if inst is None else inst
        ignore = self.options.ignore
        self.ignore = set(preset.get("ignore", ()) if ignore is None else ignore)

    def read(self, report: SkipReport) -> Iterator[AnnotatedImage]:
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
