"""The ``openclip-csv`` source: open_clip CSV / TSV files (one row per image and caption).

Aliases: ``open_clip-csv``, ``csv``; it also reads back the ``<split>.csv`` that ``hqrs build --format
open_clip-csv`` writes.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import AnnotatedImage, SkipReport, Source, option


def _separator(value: Any) -> str:
    """The ``sep=`` option: one character, or ``tab`` / ``comma`` / ``semicolon`` / ``pipe``."""
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


@dataclass(frozen=True)
class OpenClipCsvOptions:
    """Options of the ``openclip-csv`` source (see :class:`OpenClipCsvSource`)."""

    sep: str | None = option(None, _separator)  # None: detected from the header line
    img_key: str = option("filepath", str)
    caption_key: str = option("caption", str)
    label_key: str = option("", str)


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
    Options = OpenClipCsvOptions

    def read(self, report: SkipReport) -> Iterator[AnnotatedImage]:
        img_key, cap_key, label_key = self.options.img_key, self.options.caption_key, self.options.label_key
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
            sep = self.options.sep or _sniff_separator(header_line, (img_key, cap_key)) or ","
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
