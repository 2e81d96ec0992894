"""Evaluation inputs: Karpathy caption files, class-folder and ``datasets`` classification sets.

Example:
    >>> import json, tempfile, pathlib
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (tmp / "k.json").write_text(json.dumps({"images": [
    ...     {"filename": "1.tif", "split": "test", "sentences": [{"raw": "a farm ."}]}]}))
    >>> [e.filename for e in load_karpathy(tmp / "k.json", split="test")]
    ['1.tif']
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from hqrs.dataset_builder.build_folder import BuildFolder, check_parquet_files
from hqrs.dataset_builder.imaging import decode_image
from hqrs.dataset_builder.io import load_json_utf8
from hqrs.dataset_builder.sources import SkipReport, load_source, parse_spec


@dataclass
class KarpathyEntry:
    """One image of a Karpathy-style caption file and its raw captions."""

    filename: str
    captions: list[str]
    split: str | None


def karpathy_entries(
    data: Mapping[str, Any], split: str | None = "test", where: str = "Karpathy file"
) -> list[KarpathyEntry]:
    """Entries of a parsed ``{"images": [{"filename", "split", "sentences": [{"raw"}]}]}`` file.

    ``split=None`` keeps every image. ``filepath`` (COCO Karpathy) is joined in front of ``filename``.
    """
    images = data.get("images") if isinstance(data, Mapping) else None
    if not isinstance(images, list):
        raise ValueError(f"{where}: expected a JSON object with an 'images' list (Karpathy format)")
    out: list[KarpathyEntry] = []
    splits: set[str] = set()
    for i, img in enumerate(images):
        if not isinstance(img, Mapping) or "filename" not in img or "sentences" not in img:
            raise ValueError(f"{where}: images[{i}] needs 'filename' and 'sentences'")
        splits.add(str(img.get("split")))
        if split is not None and img.get("split") != split:
            continue
        name = str(img["filename"])
        if img.get("filepath"):
            name = f"{img['filepath']}/{name}"
        caps = []
        for j, s in enumerate(img["sentences"]):
            raw = s.get("raw") if isinstance(s, Mapping) else None
            if not isinstance(raw, str) or not raw.strip():
                raise ValueError(f"{where}: images[{i}] ({name}) sentences[{j}] has no 'raw' caption text")
            caps.append(raw)
        if not caps:
            raise ValueError(f"{where}: images[{i}] ({name}) has no sentences")
        out.append(KarpathyEntry(name, caps, img.get("split")))
    if not out:
        raise ValueError(f"{where}: no image in split {split!r}; splits present: {sorted(splits)}")
    return out


def load_karpathy(path: str | Path, split: str | None = "test") -> list[KarpathyEntry]:
    return karpathy_entries(load_json_utf8(path, "Karpathy"), split, where=f"Karpathy file {str(path)!r}")


def resolve_images(entries: Sequence[KarpathyEntry], images_dir: str | Path) -> list[Path]:
    """Paths of the entries' images under ``images_dir``; error lists the missing ones."""
    root = Path(images_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"images folder {str(root)!r} does not exist")
    paths = [root / e.filename for e in entries]
    missing = [str(p.relative_to(root)) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(paths)} images are missing under {str(root)!r}, e.g. {missing[:5]}; "
            "check --images points at the folder the Karpathy 'filename's are relative to"
        )
    return paths


# ------------------------------------------------------------------------------- classification


_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
# Concatenated lower-case class names of common RS scene datasets (UC Merced, NWPU-RESISC45, ...).
_COMPOUNDS = {
    "baseballdiamond": "baseball diamond",
    "baseballfield": "baseball field",
    "basketballcourt": "basketball court",
    "denseresidential": "dense residential",
    "mediumresidential": "medium residential",
    "sparseresidential": "sparse residential",
    "mobilehomepark": "mobile home park",
    "storagetanks": "storage tanks",
    "tenniscourt": "tennis court",
    "golfcourse": "golf course",
    "parkinglot": "parking lot",
    "groundtrackfield": "ground track field",
    "railwaystation": "railway station",
    "trainstation": "train station",
    "bareland": "bare land",
    "chaparral": "chaparral",
    "overpass": "overpass",
    "freeway": "freeway",
    "harbor": "harbor",
    "intersection": "intersection",
    "runway": "runway",
    "agricultural": "agricultural",
    "beach": "beach",
    "buildings": "buildings",
    "forest": "forest",
    "river": "river",
    "airplane": "airplane",
    "seaice": "sea ice",
    "snowberg": "snowberg",
    "cloud": "cloud",
    "circularfarmland": "circular farmland",
    "rectangularfarmland": "rectangular farmland",
    "thermalpowerstation": "thermal power station",
    "industrialarea": "industrial area",
    "commercialarea": "commercial area",
    "terrace": "terrace",
    "wetland": "wetland",
    "palace": "palace",
    "roundabout": "roundabout",
    "ship": "ship",
    "stadium": "stadium",
    "storagetank": "storage tank",
    "swimmingpool": "swimming pool",
    "oiltank": "oil tank",
    "oilgasfield": "oil gas field",
    "closedroad": "closed road",
    "ferryterminal": "ferry terminal",
    "footbridge": "footbridge",
    "nursinghome": "nursing home",
    "solarpanel": "solar panel",
    "wastewaterplant": "wastewater plant",
    "windturbine": "wind turbine",
    "coastalmansion": "coastal mansion",
    "christmastreefarm": "christmas tree farm",
    "transformerstation": "transformer station",
    "crosswalk": "crosswalk",
    "annualcrop": "annual crop",
    "herbaceousvegetation": "herbaceous vegetation",
    "permanentcrop": "permanent crop",
    "sealake": "sea or lake",
    "highway": "highway",
    "pasture": "pasture",
    "residential": "residential",
}


def normalize_classname(name: str) -> str:
    """Readable class name for prompts: ``baseballdiamond`` / ``BaseballField`` / ``storage_tanks`` →
    ``baseball diamond`` / ``baseball field`` / ``storage tanks``.

    >>> [normalize_classname(n) for n in ["baseballdiamond", "DenseResidential", "storage_tanks", "SeaLake"]]
    ['baseball diamond', 'dense residential', 'storage tanks', 'sea or lake']
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"class name must be a non-empty string, got {name!r}")
    text = re.sub(r"^\d+[_\-. ]+", "", name.strip())  # "01_airport" → "airport"
    text = _CAMEL.sub(" ", text)
    text = re.sub(r"[_\-.]+", " ", text)
    words = text.lower().split()
    key = "".join(words)
    if key in _COMPOUNDS:
        return _COMPOUNDS[key]
    return " ".join(words)


@dataclass
class ClassificationData:
    """A labelled image set: ``images[i]`` is a path or a PIL image, ``labels[i]`` an index into
    ``classnames`` (as stored; :func:`normalize_classname` gives prompt text); ``skipped`` lists the
    files that were left out, each with its reason."""

    name: str
    images: Sequence[Any]
    labels: list[int]
    classnames: list[str]
    skipped: list[dict[str, str]] = field(default_factory=list)  # files the reader could not use, with why
    split: str | None = None  # the split actually read (None: the input has no splits)
    config: str | None = None  # the config actually read (None: the input has no configs)

    def __len__(self) -> int:
        return len(self.labels)


def load_image(item: Any):
    """RGB PIL image from a path, a PIL image, raw bytes or a ``datasets.Image(decode=False)`` cell."""
    try:
        return decode_image(item)
    except (OSError, Image.DecompressionBombError) as exc:
        where = item.get("path") if isinstance(item, dict) else item
        where = where if isinstance(where, (str, Path)) else f"<{type(item).__name__} image>"
        raise OSError(f"cannot read image {str(where)!r}: {exc}") from None


def load_class_folder(spec: str | Path) -> ClassificationData:
    """``DIR`` or ``folder:DIR[?opt=val&...]`` → labelled image paths (classes sorted by folder name).

    Read by the dataset builder's ``folder`` source (:class:`hqrs.dataset_builder.sources.adapters.FolderSource`):
    ``DIR/<class>/**/<image>``, with the same image guards and conversions (multi-band / 16-bit TIFFs
    become 8-bit PNGs in the image cache). Files it cannot use are skipped and listed in ``skipped``.
    Every image is decoded once up front (``verify``), so a truncated file is a skip here rather than an
    error in the middle of encoding (``folder:DIR?verify=false`` turns that off); the perceptual hash is
    not computed. Any other source option works as in ``hqrs build``.
    """
    text = str(spec)
    kind, path, options = parse_spec(text if text.startswith("folder:") else f"folder:{text}")
    if not Path(path).is_dir():
        raise FileNotFoundError(f"class folder {path!r} does not exist")
    source = load_source({"kind": "folder", "path": path, "phash": False, **options})
    report = SkipReport()
    records = list(source.records(report))
    classes = sorted({r.labels[0] for r in records})
    if len(classes) < 2:
        raise ValueError(
            f"{path!r} is not a class-folder dataset: expected at least two sub-folders of images "
            f"(found {len(classes)} class(es) with images, {len(records)} image(s), "
            f"{len(report)} file(s) skipped)"
        )
    index = {c: i for i, c in enumerate(classes)}
    return ClassificationData(
        Path(path).name,
        [Path(r.image) for r in records],
        [index[r.labels[0]] for r in records],
        classes,
        skipped=report.items,
    )


def _readme_configs(folder: Path) -> list[str]:
    """Config names declared in ``folder/README.md``'s YAML (``configs: [{config_name, data_files}]``)."""
    return BuildFolder(folder).card_configs()


def open_dataset(
    spec: str | Path, config: str | None = None, split: str | None = None, default_split: str | None = "test"
):
    """See :func:`_open_dataset`; returns ``(dataset, split, config)``."""
    return _open_dataset(spec, config, split, default_split)[:3]


def _open_dataset(
    spec: str | Path, config: str | None = None, split: str | None = None, default_split: str | None = "test"
):
    """One split of a ``datasets`` folder, a folder written by ``hqrs build`` or parquet file(s).

    Returns ``(dataset, split, config, every_split)`` where ``every_split`` lists the datasets of all
    splits (class names are taken over all of them) and ``split``/``config`` are the ones actually read (``None``
    when the input has none). A folder whose ``README.md`` declares ``configs`` (what ``hqrs build``
    writes: ``default``, ``full``, ``pairs``) is read one config at a time (``config``, default
    ``"default"``); its splits come from the card. ``split=None`` picks ``default_split`` when present,
    the only split when there is one, and otherwise fails listing the splits. ``split="all"`` joins
    every split.

    Raises:
        ValueError: unknown config or split (the message lists the ones present), a config asked of an
            input without configs, or a split asked of a single parquet file.
    """
    import datasets

    path = Path(spec)
    path = BuildFolder(path).meant_build().root  # a build's data/ folder means the build
    build = BuildFolder(path).require_parquet("hqrs eval") if path.is_dir() else None
    configs = _readme_configs(path) if path.is_dir() else []
    if build is not None:  # read through its format: the parquet configs (the card's, else data/'s)
        return _open_build(spec, build, configs or build.configs(), config, split, default_split)
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        if config is not None:
            raise ValueError(f"{str(spec)!r} is a save_to_disk folder without configs; drop --config")
        ds = datasets.load_from_disk(str(path))
    elif configs:
        config = config or ("default" if "default" in configs else configs[0])
        if config not in configs:
            raise ValueError(f"{str(spec)!r} has no config {config!r}; configs: {configs} (use --config)")
        ds = datasets.load_dataset(str(path), config)
    elif path.is_file() and path.suffix == ".parquet":
        if config is not None:
            raise ValueError(f"{str(spec)!r} is one parquet file without configs; drop --config")
        if split not in (None, "all"):
            raise ValueError(
                f"{str(spec)!r} is one parquet file and has no splits; drop --split {split!r} (or give the "
                "folder of a split-named layout such as data/test-00000-of-00001.parquet)"
            )
        check_parquet_files([path])
        ds = datasets.load_dataset("parquet", data_files=[str(path)], split="train")
        return ds, None, None, [ds]
    elif path.is_dir() and any(path.rglob("*.parquet")):
        if config is not None:
            raise ValueError(f"{str(spec)!r} has no README.md declaring configs; drop --config")
        check_parquet_files(sorted(path.rglob("*.parquet")))
        try:  # the datasets layout rules: split names from file / folder names
            ds = datasets.load_dataset(str(path))
        except (datasets.exceptions.DatasetGenerationError, datasets.table.CastError) as exc:
            raise ValueError(
                f"{str(spec)!r}: its parquet files do not form one table ({type(exc).__name__}); give the "
                "folder of one config (e.g. DIR/data/default) or a folder with a README.md declaring configs"
            ) from None
    else:
        raise ValueError(
            f"--dataset {str(spec)!r} is neither a class folder, a datasets folder (save_to_disk), a folder "
            "written by hqrs build nor parquet"
        )
    return _pick(spec, ds, config, split, default_split)


def _open_build(spec, build: BuildFolder, configs: list[str], config, split, default_split):
    """One config of a parquet ``hqrs build`` folder; every shard's footer is checked first, so a
    truncated shard is a ``ValueError`` naming it rather than an error deep inside ``datasets``."""
    import datasets

    config = config or ("default" if "default" in configs else configs[0])
    if config not in configs:
        raise ValueError(f"{str(spec)!r} has no config {config!r}; configs: {configs} (use --config)")
    files = build.shard_files(config)
    if not files:
        raise ValueError(
            f"{str(spec)!r}: config {config!r} has no parquet shards under data/{config}/; rebuild the folder "
            "with `hqrs build --format parquet`"
        )
    check_parquet_files([f for split_files in files.values() for f in split_files])
    if build.card_configs():
        ds = datasets.load_dataset(str(build.root), config)
    else:  # shards without a card: the split names come from the file names
        ds = datasets.load_dataset("parquet", data_files=files)
    return _pick(spec, ds, config, split, default_split)


def _pick(spec, ds, config, split, default_split):
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        names = list(ds)
        if split == "all":
            every = [ds[n] for n in names]
            return datasets.concatenate_datasets(every), "all", config, every
        pick = split or (default_split if default_split in ds else names[0] if len(names) == 1 else None)
        if pick not in ds:
            raise ValueError(
                f"{str(spec)!r} has splits {names}"
                + (f", not {split!r}" if split else "")
                + "; choose one with --split (or 'all')"
            )
        return ds[pick], pick, config, [ds[n] for n in names]
    if split not in (None, "all"):
        raise ValueError(f"{str(spec)!r} has no splits (one table); drop --split {split!r}")
    return ds, None, config, [ds]


def load_hf_classification(
    spec: str | Path,
    image_column: str = "image",
    label_column: str | None = None,
    split: str | None = None,
    config: str | None = None,
) -> ClassificationData:
    """A ``datasets`` folder (``save_to_disk``), a folder written by ``hqrs build``, a parquet file or
    a folder of parquet files (see :func:`open_dataset` for ``split`` / ``config``). Rows whose label
    is empty or missing are skipped and listed in ``skipped``."""
    import datasets

    path = Path(spec)
    ds, split, config, every_split = _open_dataset(path, config, split)
    cols = ds.column_names
    if image_column not in cols:
        raise ValueError(
            f"{str(spec)!r} has no image column {image_column!r} (columns: {cols}); use --image-column"
        )
    if label_column is None:
        label_column = next((c for c in ("label", "labels", "class", "category") if c in cols), None)
        if label_column is None:
            raise ValueError(f"{str(spec)!r}: no label column found among {cols}; use --label-column")
    elif label_column not in cols:
        raise ValueError(f"{str(spec)!r} has no label column {label_column!r} (columns: {cols})")
    feature = ds.features[label_column]
    raw = ds[label_column]
    skipped: list[dict[str, str]] = []
    ids = ds["image_id"] if "image_id" in cols else None
    keep = []
    for i, x in enumerate(raw):
        if x is None or (isinstance(x, str) and not x.strip()) or isinstance(x, (list, dict)):
            what = "a list of labels" if isinstance(x, (list, dict)) else "no label"
            skipped.append({"file": f"row {i}" + (f" (image_id {ids[i]})" if ids else ""), "reason": what})
        else:
            keep.append(i)
    if not keep:
        raise ValueError(
            f"{str(spec)!r}"
            + (f" split {split!r}" if split else "")
            + f": none of its {len(raw)} rows has a "
            f"single label in column {label_column!r}; zero-shot classification needs labelled images "
            "(e.g. a build from a class folder or a labelled source)"
        )
    if len(keep) < len(raw):
        ds, raw = ds.select(keep), [raw[i] for i in keep]
    if isinstance(feature, datasets.ClassLabel):
        classnames, labels = list(feature.names), [int(x) for x in raw]
    else:  # the classes of every split: a test split without some class still ranks against all of them
        seen = {
            str(x)
            for part in every_split
            for x in part[label_column]
            if isinstance(x, (str, int)) and str(x).strip()
        }
        classnames = sorted(seen | {str(x) for x in raw})
        index = {c: i for i, c in enumerate(classnames)}
        labels = [index[str(x)] for x in raw]
    ds = (
        ds.cast_column(image_column, datasets.Image())
        if not isinstance(ds.features[image_column], datasets.Image)
        else ds
    )
    return ClassificationData(
        path.stem if path.is_file() else path.name,
        _Column(ds, image_column),
        labels,
        classnames,
        skipped=skipped,
        split=split,
        config=config,
    )


class _Column(Sequence):
    """Lazy view of one (decoded image) column of a ``datasets.Dataset``."""

    def __init__(self, ds, column: str) -> None:
        self.ds, self.column = ds, column

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):  # type: ignore[override]
        return self.ds[int(i)][self.column]


def load_classification(
    spec: str | Path,
    image_column: str = "image",
    label_column: str | None = None,
    split: str | None = None,
    config: str | None = None,
) -> ClassificationData:
    """``--dataset SPEC``: ``folder:DIR`` or a class-folder DIR, a ``datasets`` folder, a folder written
    by ``hqrs build`` (its ``default`` config unless ``config``), or parquet.

    A class folder has no splits or configs: ``split``/``config`` other than ``None`` are errors there
    (so a result never claims a split it did not read)."""
    text = str(spec)
    path = Path(text.removeprefix("folder:").split("?")[0])
    if not path.exists():
        raise FileNotFoundError(f"--dataset {text!r} does not exist")
    if BuildFolder(path).is_hqrs_build():  # read only through its format (never as a class folder)
        if text.startswith("folder:"):
            raise ValueError(
                f"--dataset {text!r} is a folder written by hqrs build, not a class folder; drop 'folder:'"
            )
        return load_hf_classification(path, image_column, label_column, split, config)
    is_class_folder = text.startswith("folder:") or (
        path.is_dir()
        and not (path / "state.json").is_file()
        and not (path / "dataset_dict.json").is_file()
        and not any(path.rglob("*.parquet"))
    )
    if is_class_folder:
        for flag, value in (("--split", split), ("--config", config)):
            if value not in (None, "all"):
                raise ValueError(
                    f"--dataset {text!r} is a class folder: it has no {flag[2:]}s; drop {flag} {value!r} "
                    "(or give a folder per split)"
                )
        return load_class_folder(text)
    return load_hf_classification(path, image_column, label_column, split, config)
