"""The skip report: what a build read, and every item it left out with its file and reason.

>>> report = SkipReport()
>>> report.ok("dota")
>>> report.skip("labelTxt/P0001.txt", "image not found (images/P0001.png)", source="dota")
>>> report.to_dict()["skipped_by_kind"]
{'image': 1}
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

logger = logging.getLogger("hqrs.sources")


class SkipReport:
    """Counts of records produced and every item skipped, with its file and reason.

    ``kind`` says what was skipped: ``image`` (no record), ``object`` (one box dropped from a record
    that was kept), ``row`` (one CSV row / JSON entry / label line), ``file`` (a whole annotation
    file), ``pixels`` (mask pixels of an unknown class), ``result`` (an MpGI result).
    """

    def __init__(self) -> None:
        self.records: Counter[str] = Counter()
        self.items: list[dict[str, str]] = []

    def ok(self, source: str, n: int = 1) -> None:
        self.records[source] += n

    def skip(self, file: str | Path, reason: str, *, kind: str = "image", source: str = "") -> None:
        # file names and text from the input may hold lone surrogates: escaped so the report is valid UTF-8
        item = {"file": _printable(str(file)), "reason": _printable(reason), "kind": kind, "source": source}
        self.items.append(item)
        logger.debug("skipped %s %s: %s", kind, file, reason)

    def count(self, prefix: str) -> int:
        """How many skipped items have a reason starting with ``prefix``."""
        return sum(1 for i in self.items if i["reason"].startswith(prefix))

    def extend(self, other: SkipReport) -> None:
        self.records.update(other.records)
        self.items.extend(other.items)

    def __len__(self) -> int:
        return len(self.items)

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": dict(self.records),
            "skipped": len(self.items),
            "skipped_by_kind": dict(Counter(i["kind"] for i in self.items)),
            "items": list(self.items),
        }


def _printable(text: str) -> str:
    """``text`` with characters UTF-8 cannot hold (lone surrogates, e.g. from non-UTF-8 file names)
    written as ``\\udcXX`` escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
