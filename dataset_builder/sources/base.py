"""The small base every source format builds on: spec syntax, typed options, root confinement.

A source is written ``KIND:PATH?opt=val&opt=val``; ``images=DIR`` names the image folder where the
format keeps images apart from annotations. Options common to every kind (:class:`CommonOptions`):

``images``, ``name`` (the ``source`` value of the records; default the kind or the dataset's own name),
``splits`` (keep only records whose source split is listed, e.g. ``splits=test``),
``allow_outside_root`` (default ``false``: an image file must resolve, after following symbolic links,
inside the source's root, i.e. the ``images`` folder or the folder of ``PATH``; anything else is a
skip with the reason; ``true`` lets e.g. an open_clip CSV name absolute paths anywhere), and the
:class:`~.images.ImageSettings` fields ``max_pixels``, ``verify``, ``large``, ``max_side``,
``tile_size``, ``tile_overlap``, ``min_clip_fraction``, ``bands``, ``stretch``, ``cache_dir``, ``phash``,
``max_memory``.
Anything else must be a field of that kind's options dataclass (``Source.Options``), or it is an
error that lists the known ones.

Contract of a format (one module per format, e.g. :mod:`.dota`):

* a :class:`Source` subclass with ``kind`` (its name in ``KIND:PATH``), optionally ``Options`` (a
  frozen dataclass whose fields are declared with :func:`option`: default and parser),
  ``default_images`` and ``pooled``;
* its :meth:`Source.read` parses the annotation files and yields one
  :class:`~.analysis.AnnotatedImage` per image through :meth:`Source.emit` (which applies the
  ``splits`` filter, the missing-file and root-confinement checks); it never opens an image and
  reports what it cannot use with :meth:`Source.skip`;
* one line in ``SOURCE_KINDS`` (:mod:`hqrs.dataset_builder.sources`).

:meth:`Source.records` then runs the shared image steps of :mod:`.analysis` on what ``read`` yields.
"""

from __future__ import annotations

import copy
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qsl

from ..records import ImageRecord, ObjectAnnotation
from .analysis import AnnotatedImage, CellSink, MaskFn, analyse, to_records
from .images import IMAGE_EXTENSIONS, LARGE_MODES, ImageSettings
from .report import SkipReport

__all__ = [
    "AnnotatedImage",
    "CommonOptions",
    "MaskFn",
    "NoOptions",
    "SkipReport",
    "Source",
    "annotation_files",
    "bad_text",
    "checked",
    "is_int",
    "option",
    "parse_bool",
    "parse_list",
    "parse_spec",
    "why_missing",
]

# ------------------------------------------------------------------------------------ option parsing


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean (true/false), got {value!r}")


def parse_list(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [v.strip() for v in str(value).split(",") if v.strip()]


def checked(parse: Callable[[Any], Any], expected: str, ok: Callable[[Any], bool] | None = None) -> Callable:
    """A parser that applies ``parse`` and then ``ok`` to the result; a value either rejects (or a YAML
    bool given for a number or a list) raises ``ValueError("expected {expected}, got VALUE")``.

    Use it for an option's ``parse`` (:func:`option`) so the error says what the option takes.
    """

    def parser(value: Any) -> Any:
        try:
            if isinstance(value, bool) and parse is not parse_bool:
                raise TypeError("a bool")
            out = parse(value)
            good = ok is None or ok(out)
        except (TypeError, ValueError, OverflowError):
            good = False
        if not good:
            raise ValueError(f"expected {expected}, got {value!r}")
        return out

    return parser


def _int_tuple(value: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in parse_list(value))


def _float_tuple(value: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in parse_list(value))


def _number(value: Any) -> int:
    return int(float(value))  # 4e8 and 400000000 alike


def _at_least(n: int) -> Callable[[Any], bool]:
    return lambda v: v >= n


_IMAGE_OPTION_PARSERS: dict[str, Callable[[Any], Any]] = {
    "max_pixels": checked(_number, "a positive number of pixels (e.g. 4e8)", _at_least(1)),
    "verify": parse_bool,
    "large": checked(str, f"one of {', '.join(LARGE_MODES)}", lambda v: v in LARGE_MODES),
    "max_side": checked(int, "an integer of at least 16 (pixels)", _at_least(16)),
    "tile_size": checked(int, "an integer of at least 16 (pixels)", _at_least(16)),
    "tile_overlap": checked(int, "an integer >= 0 and below tile_size (pixels)", _at_least(0)),
    "min_clip_fraction": checked(float, "a fraction in (0, 1]", lambda v: 0.0 < v <= 1.0),
    "bands": checked(
        _int_tuple,
        "1 or 3 one-based band indices, e.g. 4,3,2",
        lambda v: len(v) in (1, 3) and min(v) >= 1,
    ),
    "stretch": checked(
        _float_tuple,
        "two percentiles LOW,HIGH with 0 <= LOW < HIGH <= 100, e.g. 2,98",
        lambda v: len(v) == 2 and 0.0 <= v[0] < v[1] <= 100.0,
    ),
    "cache_dir": str,
    "phash": parse_bool,
    "max_memory": checked(_number, "a positive number of bytes (e.g. 8e9)", _at_least(1)),
}
# the plain Python types as option parsers: what a bad value should have been
_EXPECTED = {int: "an integer", float: "a number", str: "text"}
assert set(_IMAGE_OPTION_PARSERS) == {f.name for f in fields(ImageSettings)}


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """``KIND:PATH?opt=val&...`` → ``(kind, path, options)``."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(
            f"source spec {spec!r} must look like KIND:PATH[?images=DIR&opt=val], e.g. 'dota:data/labelTxt?images=data/images'"
        )
    kind, rest = spec.split(":", 1)
    path, _, query = rest.partition("?")
    options: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key in options:
            raise ValueError(f"source spec {spec!r}: option {key!r} given twice")
        options[key] = value
    if not path:
        raise ValueError(f"source spec {spec!r} has an empty PATH")
    return kind.strip().lower(), path, options


def option(default: Any, parse: Callable[[Any], Any]) -> Any:
    """A field of an options dataclass: its ``default`` and the ``parse`` function that turns a given
    value (a string from ``KIND:PATH?key=value``, or a YAML / mapping value) into the field's type.

    ``parse`` raises ``ValueError`` / ``TypeError`` for a bad value; :class:`Source` reports it with the
    source and the option's name. A mutable default (a dict) is copied for every source."""
    if isinstance(default, (dict, list, set)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"parse": parse})
    return field(default=default, metadata={"parse": parse})


def _parsers(options_class: type) -> dict[str, Callable[[Any], Any]]:
    return {f.name: f.metadata["parse"] for f in fields(options_class)}


@dataclass(frozen=True)
class NoOptions:
    """The options of a format that has none of its own."""


@dataclass(frozen=True)
class CommonOptions:
    """The options of every kind, besides the :class:`~.images.ImageSettings` fields."""

    images: str | None = option(None, lambda v: str(v) if v else None)
    name: str = option("", lambda v: str(v or ""))
    splits: frozenset[str] | None = option(None, lambda v: frozenset(parse_list(v)) if v else None)
    allow_outside_root: bool = option(False, parse_bool)


# ------------------------------------------------------------------------------------ input checks


def why_missing(image_path: Path | str | None) -> str:
    """Why ``image_path`` is not a readable file, for the skip reason."""
    if image_path is None:
        return "no matching file"
    path = Path(image_path)
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:
            return f"{path} is a symbolic link loop"
        except OSError:
            return f"{path} is a dangling symbolic link to {os.readlink(path)}"
    if path.exists():
        return f"{path} is not a regular file"
    return str(path)


def bad_text(value: Any, where: str = "") -> str | None:
    """Why ``value`` (strings in nested lists / dicts) cannot be stored as UTF-8 text, or ``None``.

    A lone surrogate (``"\\ud800"``, from a JSON escape) is valid in a Python string but not in UTF-8:
    it would abort the JSON / parquet writers later, so the record is skipped with this reason.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return (
                f"{where or 'text'} {value[max(exc.start - 20, 0) : exc.end + 20]!r} holds an invalid "
                f"Unicode character (lone surrogate {value[exc.start]!r} at position {exc.start}); fix the text"
            )
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            bad = bad_text(k, where) or bad_text(v, f"{where}.{k}" if where else str(k))
            if bad:
                return bad
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            bad = bad_text(v, f"{where}[{i}]")
            if bad:
                return bad
    elif isinstance(value, ObjectAnnotation):
        return bad_text(value.category, f"{where}.category")
    return None


def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool`` (JSON / YAML integers)."""
    return isinstance(value, int) and not isinstance(value, bool)


def annotation_files(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """``[root]`` for a file, else the files directly in ``root`` whose names end with ``suffixes``
    (case-insensitive), sorted."""
    if root.is_file():
        return [root]
    return sorted(p for p in root.iterdir() if p.is_file() and p.name.lower().endswith(suffixes))


# ------------------------------------------------------------------------------------ the base class


class Source:
    """A source: reads one dataset's files and yields :class:`ImageRecord` objects.

    Subclasses set ``kind`` and ``Options`` and implement :meth:`read` (see the module docstring for
    the contract). Use :meth:`records`, which counts what was produced into the skip report.

    Attributes:
        path: PATH of the spec (resolved against ``base_dir``).
        images_dir: the ``images=`` folder, or ``None``.
        name, splits, allow_outside_root: the :class:`CommonOptions`.
        image_settings: the :class:`~.images.ImageSettings` options.
        options: this kind's ``Options`` instance.

    Raises:
        ValueError: an unknown option (the message lists the known ones), a bad option value, or a
            PATH that does not exist.
    """

    kind: ClassVar[str] = ""
    default_images: ClassVar[str | None] = None  # images folder relative to PATH's parent, when not given
    pooled: ClassVar[bool] = True  # False: records() analyses in this process even when given a pool
    Options: ClassVar[type] = NoOptions

    def __init__(
        self, path: str | Path, options: dict[str, Any] | None = None, *, base_dir: Path | None = None
    ):
        self.path = self._resolve(path, base_dir)
        self._given = f"{self.kind}:{path}"  # the source as the user wrote it, for messages
        groups = (_parsers(CommonOptions), _IMAGE_OPTION_PARSERS, _parsers(self.Options))
        parsed: tuple[dict[str, Any], ...] = ({}, {}, {})
        for key, value in dict(options or {}).items():
            for parsers, out in zip(groups, parsed):
                if key in parsers:
                    out[key] = self._parse(key, value, parsers[key])
                    break
            else:
                known = sorted({k for parsers in groups for k in parsers})
                raise ValueError(f"source '{self._given}': unknown option {key!r}; known: {', '.join(known)}")
        # checks across options (tile_overlap below tile_size), named with the source too
        common, self.image_settings, self.options = (
            self._make(cls, values)
            for cls, values in zip((CommonOptions, ImageSettings, self.Options), parsed)
        )
        self.images_dir = self._resolve(common.images, base_dir) if common.images else None
        self.name = common.name
        self.splits = common.splits
        self.allow_outside_root = common.allow_outside_root
        if not self.path.exists():
            raise ValueError(f"source '{self.kind}': PATH {str(self.path)!r} does not exist")

    def _parse(self, key: str, value: Any, parser: Callable[[Any], Any]) -> Any:
        """``parser(value)``; a bad value is a ``ValueError`` naming the source, the option, the value and
        what the option takes (every option of every kind goes through here)."""
        try:
            if parser in _EXPECTED and isinstance(value, bool):
                raise ValueError("a bool")
            return parser(value)
        except (TypeError, ValueError, OverflowError) as exc:
            why = f"expected {_EXPECTED[parser]}, got {value!r}" if parser in _EXPECTED else str(exc)
            if repr(value) not in why:
                why = f"{why} (got {value!r})"
            raise ValueError(f"source '{self._given}': bad value for option {key!r}: {why}") from None

    def _make(self, cls: type, values: dict[str, Any]) -> Any:
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"source '{self._given}': {exc}") from None

    @staticmethod
    def _resolve(path: str | Path, base_dir: Path | None) -> Path:
        p = Path(path).expanduser()
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        return p

    @property
    def source_name(self) -> str:
        return self.name or self.kind

    def spec(self) -> str:
        return f"{self.kind}:{self.path}"

    def skip(self, report: SkipReport, file: str | Path, reason: str, *, kind: str = "image") -> None:
        """Record a skipped ``file`` (an image, or with ``kind="object"`` an annotation) of this source."""
        report.skip(file, reason, kind=kind, source=self.source_name)

    def records(
        self, report: SkipReport | None = None, pool=None, cells: CellSink | None = None
    ) -> Iterator[ImageRecord]:
        """Yield every usable record; everything else goes to ``report`` with its file and reason.

        :meth:`read`, then :func:`~.analysis.analyse` and :func:`~.analysis.to_records`, lazily. With
        ``pool`` (:func:`hqrs.dataset_builder.parallel.make_pool`) the per-image analysis (read,
        decode-verify, perceptual hash) runs in its workers; records come out in the same order. With
        ``cells`` (a build's image staging) each image's embedded cell is made from that same read and
        handed to ``cells.add`` before its record is yielded.
        """
        report = report if report is not None else SkipReport()
        keep = None if cells is None else cells.keep_original
        analysed = analyse(self._read(report), self.image_settings, pool if self.pooled else None, cells=keep)
        for record in to_records(analysed, self.image_settings, report, cells):
            report.ok(record.source)
            yield record

    def _read(self, report: SkipReport) -> Iterator[AnnotatedImage]:
        """:meth:`read`, then the check that every ``splits=`` value matched an entry (:meth:`emit` counts
        the splits it sees)."""
        self.__dict__["_splits_seen"] = Counter()
        yield from self.read(report)
        self._check_splits(report)

    def _check_splits(self, report: SkipReport) -> None:
        """A ``splits=`` value no entry has is a typo or the wrong file: an error when nothing matched
        (the build would read nothing), else a ``file`` skip; both list the splits the source holds."""
        seen: Counter = self.__dict__.get("_splits_seen") or Counter()
        if self.splits is None or not seen:
            return
        missing = sorted(self.splits - set(seen))
        if not missing:
            return
        held = sorted(str(s) for s in seen if s is not None)
        found = (
            f"the splits in it: {', '.join(f'{s} ({seen[s]})' for s in held)}"
            if held
            else "its entries carry no split"
        )
        if None in seen and held:
            found += f", and {seen[None]} entr(ies) without one"
        what = " or ".join(repr(s) for s in missing)
        message = f"splits={','.join(sorted(self.splits))}: no entry has split {what}; {found}"
        if len(missing) == len(self.splits):
            raise ValueError(f"source '{self._given}': {message}")
        self.skip(report, self.path, message, kind="file")

    def read(self, report: SkipReport) -> Iterator[AnnotatedImage]:  # pragma: no cover - abstract
        """The format's reader: one :class:`~.analysis.AnnotatedImage` per image (through :meth:`emit`);
        what cannot be used goes to ``report`` (:meth:`skip`)."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------- reader helpers

    def images_root(self) -> Path:
        if self.images_dir is not None:
            return self.images_dir
        if self.default_images:
            for base in (self.path.parent, self.path.parent.parent):
                if (base / self.default_images).is_dir():
                    return base / self.default_images
        return self.path if self.path.is_dir() else self.path.parent

    def roots(self) -> list[Path]:
        """The folders this source's image files must resolve inside (see ``allow_outside_root``)."""
        roots = [self.images_root(), self.path if self.path.is_dir() else self.path.parent]
        if self.images_dir is not None:
            roots.append(self.images_dir)
        out: list[Path] = []
        for root in roots:
            try:
                real = root.resolve(strict=False)
            except (OSError, RuntimeError):  # a symlink loop in the root itself
                continue
            if real not in out:
                out.append(real)
        return out

    def outside_root(self, image_path: Path) -> str | None:
        """Why ``image_path`` may not be read (it resolves outside :meth:`roots`), or ``None``."""
        if self.allow_outside_root:
            return None
        real = image_path.resolve()
        roots = self.__dict__.get("_roots")
        if roots is None:  # resolved once per source, not once per image
            roots = self.__dict__["_roots"] = self.roots()
        if any(real == root or real.is_relative_to(root) for root in roots):
            return None
        plain = Path(os.path.normpath(image_path.absolute()))
        how = f" (resolves to {real})" if real != plain else ""
        return (
            f"image {str(image_path)!r}{how} resolves outside the source root "
            f"{' / '.join(str(r) for r in roots)}; move it inside, or set allow_outside_root=true"
        )

    def find_image(self, stem: str, root: Path | None = None) -> Path | None:
        """An image file named ``stem`` plus any known extension (case-insensitive) under ``root``."""
        root = root or self.images_root()
        for ext in IMAGE_EXTENSIONS:
            for candidate in (root / f"{stem}{ext}", root / f"{stem}{ext.upper()}"):
                if candidate.is_file():
                    return candidate
        return None

    def read_text(self, report: SkipReport, path: Path) -> str | None:
        """The UTF-8 text of an annotation file, or ``None`` (a ``file`` skip) if it cannot be read."""
        try:
            return path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            self.skip(report, path, f"cannot read annotation file ({exc})", kind="file")
            return None

    def read_json_object(self, report: SkipReport, path: Path, what: str = "JSON") -> dict[str, Any] | None:
        """The JSON object (a dict) an annotation file holds, or ``None`` after a ``file`` skip: unreadable or
        not UTF-8 (:meth:`read_text`), not JSON, or JSON whose top level is not an object (reason
        ``malformed {what} (...)``, e.g. ``what="COCO JSON"``)."""
        text = self.read_text(report, path)
        if text is None:
            return None
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError(f"the top level is a {type(data).__name__}, not an object")
        except (json.JSONDecodeError, RecursionError, TypeError) as exc:  # RecursionError: nested too deep
            self.skip(report, path, f"malformed {what} ({type(exc).__name__}: {exc})", kind="file")
            return None
        return data

    def image_file(self, report: SkipReport, file: Path) -> bool:
        """Whether ``file`` (a directory entry) is an image file to read. A dangling or looping symbolic
        link and a file without an image extension are skips with the reason (counted, not dropped unseen);
        anything else that is not a file (a folder) is passed over."""
        if not file.is_file():
            if file.is_symlink():
                self.skip(report, file, f"image not found ({why_missing(file)})")
            return False
        if file.suffix.lower() not in IMAGE_EXTENSIONS:
            self.skip(report, file, f"not an image file extension ({file.suffix or 'none'})")
            return False
        return True

    def make_object(
        self,
        report: SkipReport,
        file: str,
        category: str,
        *,
        bbox=None,
        obox=None,
        difficult=False,
        known: Iterable[str] | None = None,
    ) -> ObjectAnnotation | None:
        """One object, or ``None`` (skipped with a reason) if its class is unknown or its box degenerate."""
        if known is not None and category not in known:
            self.skip(report, file, f"unknown class {category!r}", kind="object")
            return None
        try:
            return ObjectAnnotation(category=category, bbox=bbox, obox=obox, difficult=bool(difficult))
        except (ValueError, TypeError) as exc:
            self.skip(report, file, str(exc), kind="object")
            return None

    def emit(
        self,
        report: SkipReport,
        image_path: Path | None,
        *,
        annotation_file: str | Path | None = None,
        objects: Iterable[ObjectAnnotation] = (),
        mask_fn: MaskFn | None = None,
        expected_size: tuple[int, int] | None = None,
        **fields_: Any,
    ) -> Iterator[AnnotatedImage]:
        """Yield the :class:`~.analysis.AnnotatedImage` of one image, or nothing.

        Nothing for an image of a split not in ``splits`` (not read, not reported); a skip with the
        reason for a missing or non-regular file, one outside :meth:`roots`, or text UTF-8 cannot
        hold (:func:`bad_text`). ``fields_`` are further :class:`ImageRecord` fields.
        """
        if self.splits is not None:
            split = fields_.get("split")
            seen = self.__dict__.setdefault("_splits_seen", Counter())
            seen[split] += 1
            if split not in self.splits:
                return  # another split (splits=...): not read, not analysed; a typo: _check_splits
        where = str(annotation_file or image_path)
        if image_path is None or not Path(image_path).is_file():
            self.skip(report, where, f"image not found ({why_missing(image_path)})")
            return
        image_path = Path(image_path)
        escape = self.outside_root(image_path)
        if escape:
            self.skip(report, where, escape)
            return
        objects = list(objects)
        bad = bad_text({**fields_, "objects": objects})
        if bad:
            self.skip(report, where, bad, kind="image")
            return
        yield AnnotatedImage(
            image=image_path,
            where=where,
            source=self.source_name,
            objects=objects,
            fields=fields_,
            expected_size=expected_size,
            mask_fn=mask_fn,
        )
