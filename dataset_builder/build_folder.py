"""The layout of a build folder (what ``hqrs build`` writes), in one place.

A :class:`BuildFolder` owns every path of a folder written by
:func:`hqrs.dataset_builder.export.build` and is what the writers (export, planning), training, evaluation
and the hub code use to find things in it::

    OUT/README.md                                      card: YAML ``configs`` + ``dataset_info``
    OUT/build_report.json                              counts, skips with file and reason, splits, shards
    OUT/data/<config>/<split>-XXXXX-of-YYYYY.parquet   parquet shards, image bytes embedded
    OUT/<split>-XXXXX-of-YYYYY.tar                     webdataset shards (``--format webdataset``)
    OUT/<split>.csv + OUT/images/                      open_clip CSV (``--format open_clip-csv``)
    OUT/.parts/<split>-XXXXX-of-YYYYY.tsv              the CSV's finished parts (resume)
    OUT/.staging/                                      the staged plan and image cells (resume; about
                                                       the size of the embedded images)
    OUT/mpgi_run/                                      ``hqrs build --source``'s MpGI run (default --run-dir)
    OUT/.cache/hqrs_mpgi/                              ``build(sources=...)``'s MpGI run when none is named
    OUT/demo_scenes/                                   the generated scenes of ``hqrs build --demo``
    OUT/.hqrs_export.json                              which plan the shards in OUT were written for
    OUT/**/.NAME.PID.tmp                               a file being written (renamed when complete)

Every path a writer gets from here is confined to ``OUT`` by :func:`~hqrs.dataset_builder.records.inside`
(names read from input, or links planted in ``OUT``, cannot lead a write elsewhere). The readers
(:meth:`configs`, :meth:`splits`, :meth:`shard_files`, :meth:`config_shards`, :meth:`read_report`,
:meth:`card_configs`, :meth:`format`, :meth:`publish_files`, :meth:`run_dir`) only look. Shard names are
written by :func:`shard_name` and parsed by :func:`parse_shard` (:data:`SHARD_RE`), nowhere else; no other
module spells a layout name (tests/test_build_folder.py::test_only_build_folder_spells_the_build_layout).

Example:
    >>> folder = BuildFolder("out")
    >>> folder.parquet_shard("pairs", "train", 0, 3).as_posix()  # doctest: +SKIP
    '.../out/data/pairs/train-00000-of-00003.parquet'
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .io import load_json_utf8
from .records import inside

SPLITS = ("train", "validation", "test")  # the build's split names, in order

CARD = "README.md"
REPORT = "build_report.json"
STAMP = ".hqrs_export.json"
DATA = "data"
MPGI_RUN = "mpgi_run"
STATS = "stats"  # the plots ``hqrs push dataset --plot`` adds to the dataset repo
FORMATS = ("parquet", "open_clip-csv", "webdataset")  # what ``hqrs build --format`` writes
PUSHABLE_FORMATS = ("parquet",)  # what a Hub dataset repo gets (configs, dataset_info, the viewer)
# shards of every format, relative to OUT (a rerun deletes the ones its plan does not name)
SHARD_GLOBS = (f"{DATA}/*/*.parquet", "*-of-*.tar", ".parts/*.tsv")
# <split>-XXXXX-of-YYYYY.<ext>: the split is a plain name (no '-', so the name parses back)
SHARD_RE = re.compile(
    r"(?P<split>[A-Za-z0-9][A-Za-z0-9_]*)-(?P<index>\d+)-of-(?P<total>\d+)\.(?P<ext>[a-z]+)"
)
# what a dataset repo holds of a build folder, relative to OUT (plus the card, written at push time)
PUBLISH_GLOBS = (f"{DATA}/*/*.parquet", REPORT, "*.png", f"{STATS}/*.png")


def shard_name(split: str, index: int, total: int, ext: str) -> str:
    """``<split>-XXXXX-of-YYYYY.<ext>`` (datasets' and the Hub's shard naming; parsed by :func:`parse_shard`)."""
    return f"{split}-{index:05d}-of-{total:05d}.{ext}"


def parse_shard(name: str, ext: str | None = None) -> str | None:
    """The split of a shard file name written by :func:`shard_name` (with extension ``ext`` when given),
    ``None`` for any other name.

    Example:
        >>> parse_shard("train-00000-of-00002.parquet", "parquet")
        'train'
        >>> parse_shard("train.parquet") is None
        True
    """
    match = SHARD_RE.fullmatch(name)
    if match is None or (ext is not None and match["ext"] != ext):
        return None
    return match["split"]


def tmp_path(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place: ``.NAME.PID.tmp`` next to it."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _split_of_file(name: str) -> str:
    return parse_shard(name) or (name.split("-", 1)[0] if "-" in name else Path(name).stem)


@dataclass(frozen=True)
class BuildFolder:
    """A build folder (see the module docstring). ``root`` need not exist yet."""

    root: Path

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    # ----------------------------------------------------------------------------- writer paths

    def path(self, *parts: str) -> Path:
        """``root / parts``, confined to ``root`` (ValueError naming both when it leaves it)."""
        return inside(self.root, *parts)

    @property
    def card(self) -> Path:
        return self.path(CARD)

    @property
    def report(self) -> Path:
        return self.path(REPORT)

    @property
    def stamp(self) -> Path:
        return self.path(STAMP)

    @property
    def staging(self) -> Path:
        return self.path(".staging")

    @property
    def cache(self) -> Path:
        return self.path(".cache")

    @property
    def mpgi_cache(self) -> Path:
        """The MpGI run directory of a ``sources`` build that names none."""
        return self.path(".cache", "hqrs_mpgi")

    @property
    def mpgi_run(self) -> Path:
        """``hqrs build --source``'s MpGI run directory when ``--run-dir`` is not given."""
        return self.path(MPGI_RUN)

    @property
    def demo_scenes(self) -> Path:
        return self.path("demo_scenes")

    @property
    def data(self) -> Path:
        return self.path(DATA)

    @staticmethod
    def data_files(config: str, split: str) -> str:
        """The card's ``data_files`` pattern of one config's split (relative to the folder, and to the
        dataset repo it is pushed to): ``data/<config>/<split>-*.parquet``."""
        return f"{DATA}/{config}/{split}-*.parquet"

    def stats_file(self, name: str) -> Path:
        """``stats/<name>``: a plot ``hqrs push dataset --plot`` adds to the staged dataset repo."""
        return self.path(STATS, name)

    @property
    def images(self) -> Path:
        """``images/`` of the open_clip CSV format (a pre-planted link to elsewhere is refused)."""
        return self.path("images")

    def image_file(self, name: str) -> Path:
        return self.path("images", name)

    def parquet_shard(self, config: str, split: str, index: int, total: int) -> Path:
        return self.path(DATA, config, shard_name(split, index, total, "parquet"))

    def wds_shard(self, split: str, index: int, total: int) -> Path:
        return self.path(shard_name(split, index, total, "tar"))

    def csv_part(self, split: str, index: int, total: int) -> Path:
        return self.path(".parts", shard_name(split, index, total, "tsv"))

    def csv_file(self, split: str) -> Path:
        return self.path(f"{split}.csv")

    def relative(self, path: str | os.PathLike) -> str:
        """``path`` relative to ``root`` (as the report lists shards)."""
        return str(Path(path).relative_to(self.root))

    # ----------------------------------------------------------------------------- housekeeping

    def existing_shards(self) -> list[Path]:
        """Shard files of any format in the folder that resolve inside it (one reached through a link
        to another folder is not ours to delete, and is left out)."""
        found = []
        for pattern in SHARD_GLOBS:
            for shard in sorted(self.root.glob(pattern)):
                try:
                    inside(self.root, str(shard.relative_to(self.root)))
                except ValueError:
                    continue
                found.append(shard)
        return found

    def format_artefacts(self, fmt: str) -> list[Path]:
        """What a build of format ``fmt`` writes and no other format does, as far as it exists: parquet
        ``README.md`` (the card) and ``data/``; webdataset ``<split>-XXXXX-of-YYYYY.tar``; open_clip-csv
        ``<split>.csv``, ``images/`` and ``.parts/``. A build of another format removes them (see
        :func:`hqrs.dataset_builder.export.build`), so the folder holds one format's files only.

        Raises:
            ValueError: ``fmt`` is not one of :data:`FORMATS`.
        """
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
        if fmt == "parquet":
            names = [CARD, DATA]
        elif fmt == "webdataset":
            names = sorted(p.name for p in self.root.glob("*-of-*.tar") if parse_shard(p.name, "tar"))
        else:
            names = [f"{split}.csv" for split in SPLITS] + ["images", ".parts"]
        return [self.root / n for n in names if (self.root / n).is_symlink() or (self.root / n).exists()]

    def remove(self, path: Path) -> None:
        """Delete ``path`` (a file, or a folder with what it holds) of this folder; a link is removed
        itself, never followed (ValueError when ``path`` is not under ``root``)."""
        inside(self.root, str(Path(path).parent.relative_to(self.root)))
        if path.is_symlink() or not path.is_dir():
            path.unlink(missing_ok=True)
        else:
            shutil.rmtree(path)

    def remove_empty_config_dirs(self) -> None:
        """Remove the ``data/<config>/`` folders left without any file (a config a rerun no longer writes),
        and ``data/`` when it is left empty."""
        for config in self.config_dirs():
            folder = self.root / DATA / config
            if not folder.is_symlink() and not any(folder.iterdir()):
                folder.rmdir()
        data = self.root / DATA
        if data.is_dir() and not data.is_symlink() and not any(data.iterdir()):
            data.rmdir()

    def remove_stale_tmp(self) -> int:
        """Remove the ``.NAME.PID.tmp`` files of builds that were killed (their PID no longer runs)."""
        removed = 0
        for tmp in self.root.rglob(".*.tmp"):
            pid = tmp.name.rsplit(".", 2)[-2]
            if not pid.isdigit():
                continue
            try:
                os.kill(int(pid), 0)
                continue  # still running (or the PID was reused): leave it
            except ProcessLookupError:
                pass
            except (PermissionError, OverflowError):
                continue
            tmp.unlink(missing_ok=True)
            removed += 1
        return removed

    # ----------------------------------------------------------------------------- readers

    def is_build(self) -> bool:
        """Whether the folder holds parquet shards in the build layout (``data/<config>/*.parquet``)."""
        return bool(self.configs())

    def is_data_dir(self) -> bool:
        """Whether the folder is named like a build's ``data/`` folder and exists (then :attr:`parent` is
        the build a user who gave this path means)."""
        return self.root.name == DATA and self.root.is_dir()

    @property
    def parent(self) -> BuildFolder:
        return BuildFolder(self.root.parent)

    def meant_build(self) -> BuildFolder:
        """The build a user who gave this folder means: its parent when this is a build's ``data/`` folder,
        else the folder itself."""
        return self.parent if self.is_data_dir() and self.parent.is_hqrs_build() else self

    def has_data(self) -> bool:
        """Whether ``data/`` exists (a parquet build, or a folder laid out like one)."""
        return (self.root / DATA).is_dir()

    def configs(self) -> list[str]:
        """Configs with parquet shards under ``data/`` (sorted)."""
        return [c for c in self.config_dirs() if self.config_shards(c)]

    def config_dirs(self) -> list[str]:
        """Every folder under ``data/`` (a config, or a folder that is not one), sorted."""
        data = self.root / DATA
        return sorted(p.name for p in data.iterdir() if p.is_dir()) if data.is_dir() else []

    def config_shards(self, config: str) -> list[Path]:
        """Every ``*.parquet`` file of ``data/<config>/``, sorted (named as shards or not)."""
        return sorted((self.root / DATA / config).glob("*.parquet"))

    def shard_files(self, config: str) -> dict[str, list[str]]:
        """``{split: [parquet files]}`` of ``data/<config>/`` (split from the file name), sorted;
        ``{}`` when the config has no shards."""
        splits: dict[str, list[str]] = {}
        for path in self.config_shards(config):
            splits.setdefault(_split_of_file(path.name), []).append(str(path))
        return splits

    def format(self) -> str | None:
        """Which ``--format`` the folder's shards were written in, from the files: ``parquet``
        (``data/<config>/*.parquet``), ``webdataset`` (``<split>-XXXXX-of-YYYYY.tar``) or
        ``open_clip-csv`` (``<split>.csv`` or its ``.parts/``); ``None`` when it holds none of them."""
        if self.configs():
            return "parquet"
        if any(parse_shard(p.name, "tar") for p in self.root.glob("*.tar")):
            return "webdataset"
        if any((self.root / f"{split}.csv").is_file() for split in SPLITS) or any(
            (self.root / ".parts").glob("*.tsv")
        ):
            return "open_clip-csv"
        return None

    def is_hqrs_build(self) -> bool:
        """Whether the folder was written by ``hqrs build`` (any ``--format``): parquet shards in the build
        layout, a ``build_report.json`` or the export stamp. Such a folder is read only as a build (through
        its format), never as a class folder of its sub-folders nor through its internal files."""
        if not self.root.is_dir():
            return False
        if self.is_build():
            return True
        try:
            return self.report.is_file() or self.stamp.is_file()
        except ValueError:  # a link planted in the folder that leads out of it
            return True

    def require_parquet(self, reader: str) -> BuildFolder | None:
        """``self`` when it is a parquet build, ``None`` when it is no build at all (:meth:`is_hqrs_build`).

        Raises:
            ValueError: a build in another ``--format`` (``reader`` reads only parquet builds) or a build
                without shards; the message names the folder, its format and the fix.
        """
        if not self.is_hqrs_build():
            return None
        fmt = self.format()
        if fmt == "parquet":
            return self
        fix = f"rebuild with `hqrs build ... --format parquet --out DIR` and give {reader} that folder"
        if fmt is None:
            raise ValueError(
                f"{str(self.root)!r} is an hqrs build folder without shards (no data/<config>/*.parquet, .tar "
                f"or .csv; an unfinished build?); {fix}"
            )
        raise ValueError(
            f"{str(self.root)!r} is an hqrs build in --format {fmt}, which {reader} does not read (it reads "
            f"the parquet configs of a build); {fix}"
        )

    def publish_files(self) -> list[Path]:
        """The files of the folder a Hub dataset repo holds (:data:`PUBLISH_GLOBS`: parquet shards,
        the build report, plots), sorted; the card is rendered at push time."""
        found = {p for pattern in PUBLISH_GLOBS for p in self.root.glob(pattern) if p.is_file()}
        return sorted(found)

    def run_dir(self, report: dict[str, Any] | None = None) -> Path:
        """The MpGI run the build was made from: the report's ``input.run_dir`` (``report`` as read, or
        read here; an unreadable report counts as none), else ``mpgi_run/``. Not checked to exist."""
        if report is None:
            try:
                report = self.read_report()
            except (OSError, ValueError):
                report = {}
        run_dir = (report.get("input") or {}).get("run_dir") if isinstance(report, dict) else None
        return Path(run_dir) if isinstance(run_dir, str) and run_dir else self.root / MPGI_RUN

    def splits(self, config: str) -> list[str]:
        """Split names of ``config`` in build order (train, validation, test), then any others."""
        found = self.shard_files(config)
        return [s for s in SPLITS if s in found] + sorted(set(found) - set(SPLITS))

    def read_report(self) -> dict[str, Any]:
        """``build_report.json`` (FileNotFoundError / ValueError naming the file)."""
        return load_json_utf8(self.root / REPORT, "build report")

    def card_configs(self) -> list[str]:
        """Config names declared in ``README.md``'s YAML (``configs: [{config_name, data_files}]``);
        ``[]`` without a card.

        Raises:
            ValueError: the card's YAML header does not parse (the message names the file).
        """
        card = self.root / CARD
        if not card.is_file():
            return []
        from huggingface_hub.repocard import metadata_load

        try:
            meta = metadata_load(card) or {}
        except Exception as exc:  # yaml errors of a hand-written card
            raise ValueError(f"{str(card)!r}: cannot read its YAML header ({exc})") from None
        configs = meta.get("configs") if isinstance(meta, dict) else None
        configs = configs if isinstance(configs, list) else []
        return [str(c.get("config_name", "default")) for c in configs if isinstance(c, dict)]


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


__all__ = [
    "check_parquet_files",
    "CARD",
    "DATA",
    "FORMATS",
    "MPGI_RUN",
    "PUBLISH_GLOBS",
    "PUSHABLE_FORMATS",
    "REPORT",
    "SHARD_GLOBS",
    "SHARD_RE",
    "SPLITS",
    "STAMP",
    "BuildFolder",
    "parse_shard",
    "shard_name",
    "tmp_path",
]
