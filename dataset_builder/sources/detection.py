"""What the detection formats (:mod:`.dota`, :mod:`.voc`) share: class lists and the ``classes=`` option.

>>> parse_classes("dior")[:2]
('airplane', 'airport')
>>> parse_classes("ship,plane")
('ship', 'plane')
>>> parse_classes("any") is None
True
"""

from __future__ import annotations

from typing import Any

from .base import parse_list

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


def parse_classes(value: Any) -> tuple[str, ...] | None:
    """The ``classes=`` option: ``any`` → no class check; a preset name (``dota``, ``dior``); or a
    comma-separated list."""
    if value in (None, "", "any"):
        return None
    if isinstance(value, str) and value.lower() in CLASS_PRESETS:
        return CLASS_PRESETS[value.lower()]
    return tuple(parse_list(value))


def detection_fields(classes: tuple[str, ...] | None) -> dict[str, Any]:
    """The record fields of a detection annotation checked against ``classes``: they are exhaustive."""
    return {"exhaustive_classes": list(classes) if classes else []}
