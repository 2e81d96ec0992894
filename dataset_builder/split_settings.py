"""The split settings of a build, in one dataclass: :class:`SplitSettings` is the single source of the
defaults (ratios, seed, near-duplicate and contamination distances, shard size) that
:func:`~hqrs.dataset_builder.export.export_dataset`, :class:`~hqrs.dataset_builder.builder.HQRSITConfig`
and ``hqrs build`` take theirs from. Light to import (the CLI reads the defaults for its help).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


def parse_size(value: int | str) -> tuple[str, int]:
    """``2000`` → ``("rows", 2000)``; ``"500MB"`` → ``("bytes", 500_000_000)`` (units as
    ``datasets.utils.py_utils.convert_file_size_to_int`` reads them: KB/MB/GB/TB/PB, KiB/MiB/GiB/TiB/PiB;
    case-insensitive, so ``"500mb"`` is 500 megabytes, not megabits)."""
    from datasets.utils.py_utils import convert_file_size_to_int

    if isinstance(value, int) or str(value).strip().isdigit():
        n = int(value)
        if n <= 0:
            raise ValueError(f"shard size must be positive, got {value!r}")
        return "rows", n
    text = str(value).strip().replace(" ", "")
    try:  # upper-case: datasets reads a lower-case "b" as bits
        n = convert_file_size_to_int(text.upper() if text[-3:].upper() != "IB" else text[:-3] + "iB")
    except ValueError:
        n = 0
    if n > 0:
        return "bytes", n
    raise ValueError(
        f"shard size must be a row count (2000) or a whole number of bytes with a unit like '500MB' or "
        f"'1GiB', got {value!r}"
    )


def parse_ratios(value: str | Iterable[float]) -> tuple[float, float, float]:
    try:
        parts = [float(v) for v in (value.split(",") if isinstance(value, str) else value)]
    except (TypeError, ValueError):
        parts = []
    if len(parts) != 3 or any(not 0 <= p < float("inf") for p in parts):
        raise ValueError(
            f"split ratios must be three non-negative numbers train,validation,test, got {value!r}"
        )
    if not 0 < sum(parts) < float("inf"):
        raise ValueError(
            f"split ratios must sum to more than 0 (e.g. 0.9,0.05,0.05), got {value!r} (sum {sum(parts):g})"
        )
    total = sum(parts)
    return tuple(p / total for p in parts)  # type: ignore[return-value]


@dataclass
class SplitSettings:
    """How images are split. See the module docstring."""

    ratios: tuple[float, float, float] = (0.9, 0.05, 0.05)
    seed: str = "hqrs-it"
    near_dup_distance: int = 4
    contamination: tuple[str, ...] = ()
    contamination_distance: int = 4
    shard_size: int | str = 2000
    allowed_roots: tuple[str, ...] = ()  # images must resolve inside one of these folders ((): anywhere)

    def __post_init__(self) -> None:
        self.ratios = parse_ratios(self.ratios)
        self.allowed_roots = tuple(str(Path(r).expanduser().resolve()) for r in self.allowed_roots)
        if not -1 <= int(self.near_dup_distance) <= 16:
            raise ValueError(
                f"near_dup_distance must be in [-1, 16] (-1 disables), got {self.near_dup_distance!r}"
            )
        if not -1 <= int(self.contamination_distance) <= 16:
            raise ValueError(
                f"contamination_distance must be in [-1, 16] (-1: exact content only), got {self.contamination_distance!r}"
            )
        self.contamination = tuple(str(c) for c in self.contamination)
        parse_size(self.shard_size)


__all__ = ["SplitSettings", "parse_ratios", "parse_size"]
