"""Compatibility re-exports: the format classes and presets that lived here, one module per format now.

New code imports a format from its module (:mod:`.dota`, :mod:`.voc`, ...) or the registry from
:mod:`hqrs.dataset_builder.sources`.
"""

from __future__ import annotations

from . import KIND_ALIASES, SOURCE_KINDS
from .coco import CocoSource
from .detection import CLASS_PRESETS, DIOR_CLASSES, DOTA_CLASSES
from .dota import DotaSource
from .folder import FolderSource
from .karpathy import KarpathySource
from .mask import ISAID_PALETTE, LOVEDA_CLASSES, MASK_PRESETS, MaskSource
from .openclip_csv import OpenClipCsvSource
from .plain_images import ImagesSource
from .voc import VocSource

__all__ = [
    "CLASS_PRESETS",
    "DIOR_CLASSES",
    "DOTA_CLASSES",
    "ISAID_PALETTE",
    "KIND_ALIASES",
    "LOVEDA_CLASSES",
    "MASK_PRESETS",
    "SOURCE_KINDS",
    "CocoSource",
    "DotaSource",
    "FolderSource",
    "ImagesSource",
    "KarpathySource",
    "MaskSource",
    "OpenClipCsvSource",
    "VocSource",
]
