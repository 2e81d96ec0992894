"""The ``images`` source: a plain folder of image files without annotations (what ``hqrs mpgi run
--source DIR`` reads).
"""

from __future__ import annotations

from collections.abc import Iterator

from .base import AnnotatedImage, SkipReport, Source


class ImagesSource(Source):
    """A plain folder of images without annotations: the image files directly inside ``PATH`` (no label).

    Other files and dot-files there are skipped with a reason; sub-folders are not read.
    """

    kind = "images"

    def read(self, report: SkipReport) -> Iterator[AnnotatedImage]:
        if not self.path.is_dir():
            raise ValueError(f"images source: PATH {str(self.path)!r} must be a directory of image files")
        for file in sorted(p for p in self.path.iterdir() if not p.name.startswith(".")):
            if not self.image_file(report, file):
                continue
            yield from self.emit(report, file, meta={"file": file.name})
