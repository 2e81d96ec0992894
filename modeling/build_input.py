"""Which folders are ``hqrs build`` output, and whether their parquet shards can be read: the checks
``hqrs train`` and ``hqrs eval`` run before handing a folder to ``datasets`` (light: no torch).

A folder written by ``hqrs build`` is read only as a build, through its format
(:meth:`~hqrs.dataset_builder.build_folder.BuildFolder.format`): the parquet configs, or one ``ValueError``
naming the ``--format`` and the fix for an ``open_clip-csv`` / ``webdataset`` build. It is never read as a
class folder of its sub-folders (``images/``, ``demo_scenes/``) nor through its internal files
(``.staging/``).

Example:
    >>> import tempfile
    >>> is_hqrs_build(tempfile.mkdtemp())
    False
"""

from __future__ import annotations

import os
from pathlib import Path

from hqrs.dataset_builder.build_folder import BuildFolder

__all__ = ["check_parquet_files", "is_hqrs_build", "require_parquet_build"]


def is_hqrs_build(root: str | os.PathLike) -> bool:
    """Whether ``root`` is a folder written by ``hqrs build`` (any ``--format``): it holds parquet shards in
    the build layout, a ``build_report.json`` or the export stamp. Such a folder is read only as a build
    (through its format), never as a class folder or a generic ``datasets`` folder."""
    folder = BuildFolder(root)
    if not Path(root).is_dir():
        return False
    if folder.is_build():
        return True
    try:
        return folder.report.is_file() or folder.stamp.is_file()
    except ValueError:  # a link planted in the folder that leads out of it
        return True


def require_parquet_build(root: str | os.PathLike, reader: str) -> BuildFolder | None:
    """The :class:`BuildFolder` of ``root`` when it is a parquet ``hqrs build`` folder, ``None`` when it is
    no build at all (see :func:`is_hqrs_build`).

    Raises:
        ValueError: ``root`` is a build in another ``--format`` (``open_clip-csv``, ``webdataset``:
            ``reader`` reads only parquet builds) or a build without shards; the message names the folder,
            its format and the fix (rebuild with ``--format parquet``).
    """
    if not is_hqrs_build(root):
        return None
    folder = BuildFolder(root)
    fmt = folder.format()
    if fmt == "parquet":
        return folder
    fix = f"rebuild with `hqrs build ... --format parquet --out DIR` and give {reader} that folder"
    if fmt is None:
        raise ValueError(
            f"{str(root)!r} is an hqrs build folder without shards (no data/<config>/*.parquet, .tar or "
            f".csv; an unfinished build?); {fix}"
        )
    raise ValueError(
        f"{str(root)!r} is an hqrs build in --format {fmt}, which {reader} does not read (it reads the "
        f"parquet configs of a build); {fix}"
    )


def check_parquet_files(files: list[str] | list[Path]) -> None:
    """Open the footer of every parquet file (cheap: no row is read).

    Raises:
        ValueError: a file is not readable parquet (truncated or damaged shard); the message names the
            file and the fix (rebuild).
    """
    import pyarrow.parquet as pq

    for file in files:
        try:
            pq.ParquetFile(file).close()
        except Exception as exc:  # ArrowInvalid / OSError: truncated, damaged or not parquet
            raise ValueError(
                f"{str(file)!r} is not a readable parquet shard ({type(exc).__name__}: {exc}); it is "
                "truncated or damaged: rebuild the folder with `hqrs build` (or restore the file)"
            ) from None
