"""The ``karpathy`` source: Karpathy-style caption JSON (UCM-Captions, RSICD, Sydney-Captions, RSITMD)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .base import AnnotatedImage, SkipReport, Source, option, parse_bool


@dataclass(frozen=True)
class KarpathyOptions:
    """Options of the ``karpathy`` source (see :class:`KarpathySource`)."""

    labels: str | None = option(None, str)  # a CSV with 'filename' and label_column, relative to the JSON
    label_column: str = option("label", str)
    label_from_filename: bool = option(False, parse_bool)


class KarpathySource(Source):
    """Karpathy caption JSON ``{"images": [{"filename", "split", "sentences": [{"raw"}]}]}``.

    Human sentences become ``references``; the source split is kept. Options: ``labels=CSV`` with a
    ``filename`` column and ``label_column`` (default ``label``) for datasets whose JSON has no labels
    (UCM-Captions); ``label_from_filename=true`` takes the label from ``<label>_<n>.<ext>`` (RSICD).
    """

    kind = "karpathy"
    default_images = "images"
    Options = KarpathyOptions

    def read(self, report: SkipReport) -> Iterator[AnnotatedImage]:
        data = self.read_json_object(report, self.path)
        if data is None:
            return
        entries = data.get("images")
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
            if label is None and self.options.label_from_filename:
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
        path = self.options.labels
        if not path:
            return {}
        path = self._resolve(path, self.path.parent)
        column = self.options.label_column
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
