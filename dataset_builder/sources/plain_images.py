"""The ``images`` source: a plain folder of image files without annotations (what ``hqrs mpgi run
--source DIR`` reads).
"""

from __future__ import annotations

from collections.abc import Iterator

from .base import AnnotatedImage, SkipReport, Source, why_missing
from .images import IMAGE_EXTENSIONS


class ImagesSource(Source):
    """A plain folder of images without annotations: the image files directly inside ``PATH`` (no label).

    Other files and dot-files there are skipped with a reason; sub-folders are not read.
    """

    kind = "images"

    def read(self, report: SkipReport) -> Iterator[AnnotatedImage]:
        if not self.path.is_dir():
            raise ValueError(f"images source: PATH {str(self.path)!r} must be a directory of image files")
        for file in sorted(p for p in self.path.iterdir() if not p.name.startswith(".")):
            if not file.is_file():
                if file.is_symlink():  # dangling or looping: counted, not dropped unseen
                    self.skip(report, file, f"image not found ({why_missing(file)})")
                continue
            if file.suffix.lower() not in IMAGE_EXTENSIONS:
                self.skip(report, file, f"not an image file extension ({file.suffix or 'none'})")
                continue
            yield from self.emit(report, file, meta={"file": file.name})
