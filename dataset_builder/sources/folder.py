"""The ``folder`` source: scene classification folders ``PATH/<label>/**/<image>`` (UC Merced, AID,
NWPU-RESISC45).

``folder:data/AID`` reads ``data/AID/Airport/airport_1.jpg`` as an image labelled ``Airport``.
"""

from __future__ import annotations

from collections.abc import Iterator

from .base import AnnotatedImage, SkipReport, Source, why_missing


class FolderSource(Source):
    """Scene classification layout ``PATH/<label>/**/<image>``: the label is the top sub-folder.

    Files directly in ``PATH`` (``labels.csv``, a readme) and dot-files are not images of any class and
    are ignored; every other file under a class folder is either a record or a skip with a reason.
    """

    kind = "folder"

    def read(self, report: SkipReport) -> Iterator[AnnotatedImage]:
        if not self.path.is_dir():
            raise ValueError(f"folder source: PATH {str(self.path)!r} must be a directory of class folders")
        for entry in sorted(self.path.iterdir()):
            if entry.is_symlink() and not entry.exists() and not entry.name.startswith("."):
                self.skip(report, entry, f"image not found ({why_missing(entry)})")
        for class_dir in sorted(p for p in self.path.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for file in sorted(class_dir.rglob("*")):
                if file.name.startswith("."):
                    continue
                if not self.image_file(report, file):
                    continue
                yield from self.emit(
                    report,
                    file,
                    labels=[class_dir.name],
                    meta={"file": str(file.relative_to(self.path))},
                )
