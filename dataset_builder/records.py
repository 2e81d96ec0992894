"""The record types MpGI works on: one :class:`ImageRecord` per image in, one :class:`MpGIResult` out.

Source adapters (``hqrs.dataset_builder.sources``) fill :class:`ImageRecord`; the MpGI engine
(``hqrs.dataset_builder.mpgi``) turns each into an :class:`MpGIResult`; the ``datasets`` builder reads
those. Both types round-trip through plain JSON (``to_dict`` / ``from_dict``), which is how they are
stored in run directories (one JSON object per line).

Coordinates are pixels of the stored image, origin at the top-left corner, x to the right, y down.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

ID_LENGTH = 16  # hex characters of the content hash kept in image ids


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename: readers see
    the old file or the whole new one, never a partial write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600: give the mode open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_HEX = frozenset("0123456789abcdef")


def check_image_id(value: Any, where: str = "") -> str:
    """``value`` if it is an image id as :func:`content_id` makes them (16 lowercase hex characters).

    Image ids name output files and archive members; ids read back from run directories, staged files or
    CSVs are input, and anything else (``../../tmp/x``, ``/tmp/x``) is refused here.

    Raises:
        ValueError: not a 16-character lowercase hex string; the message quotes the value.
    """
    if not (isinstance(value, str) and len(value) == ID_LENGTH and set(value) <= _HEX):
        raise ValueError(
            f"{where + ': ' if where else ''}image_id {value!r:.80} is not an image id "
            f"({ID_LENGTH} lowercase hex characters of the image's SHA-256); the file was not written by hqrs "
            "or was altered"
        )
    return value


def inside(root: str | os.PathLike, *parts: str) -> Path:
    """``root / parts`` after checking it resolves (symbolic links followed) inside ``root``.

    Every writer builds its output paths through this, so no name read from input (an image id, a file
    name) can place a file outside the output folder.

    Raises:
        ValueError: the path leaves ``root``; the message names both.
    """
    base = Path(root).resolve()
    target = Path(root, *parts)
    real = target.resolve()
    if any(Path(p).is_absolute() for p in parts) or not (real == base or real.is_relative_to(base)):
        raise ValueError(
            f"refusing to write {str(target)!r}: it resolves to {str(real)!r}, outside the output folder "
            f"{str(base)!r}"
        )
    return target


def content_id(data: bytes) -> str:
    """Stable image id: the first 16 hex characters of the SHA-256 of the image file's bytes."""
    return hashlib.sha256(data).hexdigest()[:ID_LENGTH]


def file_content_id(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """:func:`content_id` of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()[:ID_LENGTH]


def _finite(name: str, values, n: int, where: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) != n:
        raise ValueError(f"{where}: {name} needs {n} numbers, got {len(values)}: {values!r}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{where}: {name} has a non-finite value: {values!r}")
    return values


@dataclass
class ObjectAnnotation:
    """One annotated object: a class and a horizontal box and/or an oriented box.

    Args:
        category: class name as the source spells it (``small-vehicle``); rules normalise it.
        bbox: horizontal box ``(x_min, y_min, x_max, y_max)``; derived from ``obox`` when omitted.
        obox: oriented box as four corners ``(x1, y1, x2, y2, x3, y3, x4, y4)`` (DOTA order).
        difficult: the source marks the object as difficult.
    """

    category: str
    bbox: tuple[float, float, float, float] | None = None
    obox: tuple[float, float, float, float, float, float, float, float] | None = None
    difficult: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.category, str) or not self.category.strip():
            raise ValueError(f"object category must be a non-empty string, got {self.category!r}")
        if self.obox is not None:
            self.obox = _finite("obox", self.obox, 8, f"object {self.category!r}")
        if self.bbox is not None:
            self.bbox = _finite("bbox", self.bbox, 4, f"object {self.category!r}")
        elif self.obox is not None:
            xs, ys = self.obox[0::2], self.obox[1::2]
            self.bbox = (min(xs), min(ys), max(xs), max(ys))
        if self.bbox is None:
            raise ValueError(f"object {self.category!r} has neither bbox nor obox")
        x0, y0, x1, y1 = self.bbox
        if not (x1 > x0 and y1 > y0):
            raise ValueError(
                f"object {self.category!r}: degenerate bbox {self.bbox!r} (needs x_max > x_min, y_max > y_min)"
            )

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.bbox
        return ((x0 + x1) / 2, (y0 + y1) / 2)

    @property
    def area(self) -> float:
        """Pixel area: the oriented polygon's (shoelace) when present, else the box's."""
        if self.obox is not None:
            xs, ys = self.obox[0::2], self.obox[1::2]
            return abs(sum(xs[i] * ys[(i + 1) % 4] - xs[(i + 1) % 4] * ys[i] for i in range(4))) / 2
        x0, y0, x1, y1 = self.bbox
        return (x1 - x0) * (y1 - y0)


@dataclass
class MaskSummary:
    """What a segmentation mask says, summarised: class area fractions and instance counts."""

    class_fractions: dict[str, float] = field(default_factory=dict)
    instance_counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, frac in self.class_fractions.items():
            if not (0.0 <= float(frac) <= 1.0 + 1e-6):
                raise ValueError(f"mask class fraction for {name!r} must be in [0, 1], got {frac!r}")
        total = sum(self.class_fractions.values())
        if total > 1.0 + 1e-3:
            raise ValueError(f"mask class fractions add up to {total:.4f} > 1: {self.class_fractions!r}")
        for name, count in self.instance_counts.items():
            if int(count) != count or count < 0:
                raise ValueError(
                    f"mask instance count for {name!r} must be a non-negative integer, got {count!r}"
                )


@dataclass
class ImageRecord:
    """One image and everything its source says about it.

    Args:
        image_id: stable id, :func:`content_id` of the image bytes.
        image: where the image is: a local path (or any URI the reader understands).
        source: source dataset / adapter name (``dota``, ``ucm-captions``, ...).
        width, height: size in pixels of the image as stored.
        gsd: ground sample distance in metres per pixel, ``None`` if unknown.
        labels: scene class label(s).
        objects: annotated objects.
        exhaustive_classes: classes whose instances are all annotated (a detection dataset's class
            list); a caption claiming one of them that has no annotated instance contradicts the facts.
            Empty when the annotations are not exhaustive.
        mask: summary of a segmentation mask, if any.
        references: human reference captions from the source, if any.
        split: the source's own split (``train`` / ``val`` / ``test``), if it defines one.
        meta: anything else worth keeping (original file name, source-specific header fields).
    """

    image_id: str
    image: str
    source: str
    width: int
    height: int
    gsd: float | None = None
    labels: list[str] = field(default_factory=list)
    objects: list[ObjectAnnotation] = field(default_factory=list)
    exhaustive_classes: list[str] = field(default_factory=list)
    mask: MaskSummary | None = None
    references: list[str] = field(default_factory=list)
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"image {self.image!r}"
        if not self.image_id:
            raise ValueError(f"{where}: empty image_id")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"{where}: size must be positive, got {self.width!r}×{self.height!r}")
        self.width, self.height = int(self.width), int(self.height)
        if self.gsd is not None:
            self.gsd = float(self.gsd)
            if not (math.isfinite(self.gsd) and self.gsd > 0):
                raise ValueError(
                    f"{where}: gsd must be a positive number of metres per pixel, got {self.gsd!r}"
                )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (tuples become lists)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageRecord:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"ImageRecord: unknown field(s) {sorted(unknown)}")
        data = dict(data)
        data["objects"] = [
            o if isinstance(o, ObjectAnnotation) else ObjectAnnotation(**o) for o in data.get("objects", [])
        ]
        mask = data.get("mask")
        if mask is not None and not isinstance(mask, MaskSummary):
            data["mask"] = MaskSummary(**mask)
        return cls(**data)


@dataclass
class Perspective:
    """One generated description and where it came from."""

    generator: str  # generator name in the recipe ("rule" for the rule perspective)
    perspective: str  # "rule", "relay", "scene", "objects", "spatial", "land-cover", ...
    model: str | None  # model id; None for the rule perspective
    prompt_id: str | None  # hash of the rendered prompt template; None for the rule perspective
    text: str


@dataclass
class Caption:
    """One final, integrated caption with its provenance."""

    text: str
    length: str  # "short" | "medium" | "long"
    sources: list[str] = field(default_factory=list)  # Perspective.generator names it integrates


@dataclass
class MpGIResult:
    """The MpGI outcome for one image, as stored in a run directory (one JSON object per line)."""

    record: ImageRecord
    rule_text: str
    perspectives: list[Perspective] = field(default_factory=list)
    captions: list[Caption] = field(default_factory=list)
    status: str = "ok"  # "ok" | "failed"
    error: str | None = None  # why it failed, when status == "failed"
    stats: dict[str, Any] = field(default_factory=dict)  # tokens, retries, filtered captions, ...

    @property
    def image_id(self) -> str:
        return self.record.image_id

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MpGIResult:
        data = dict(data)
        data["record"] = ImageRecord.from_dict(data["record"])
        data["perspectives"] = [Perspective(**p) for p in data.get("perspectives", [])]
        data["captions"] = [Caption(**c) for c in data.get("captions", [])]
        return cls(**data)
