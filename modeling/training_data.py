"""Data layer of :mod:`hqrs.modeling.training`: image–caption datasets decoded and processed on the fly.

* :func:`load_training_dataset` opens what ``hqrs train --dataset`` names: a ``datasets`` object, a
  folder written by the HQRS dataset builder (``data/<config>/<split>-*.parquet``), a folder written by
  ``save_to_disk``, any other folder ``datasets.load_dataset`` reads, or a Hub repository id.
* :class:`ImageCaptionDataset` (map-style) and :class:`StreamingImageCaptionDataset` (iterable) yield
  ``{"image": PIL.Image, "text": str, "image_ids": int}``. The caption is drawn at random among the row's
  captions (a list column such as ``captions``) with a generator seeded by ``(seed, epoch, row)``: it
  differs across epochs, is the same in every run and on every rank, and does not depend on the order
  in which rows are read, which is what makes resuming and multi-process training exact.
  ``image_ids`` is an image id (rows sharing it show the same image); the loss ignores it, the
  retrieval metrics use it to count every caption of an image as a hit.
* :class:`RSAugment` holds the remote-sensing augmentations (horizontal/vertical flips, 90° rotations,
  random resized crop), seeded the same way.
* :class:`ImageTextCollator` runs the model's processor on a batch (tokenise + resize/normalise).

Images are decoded here rather than by ``datasets`` so that a broken file is reported with its row and
path; :attr:`DataOptions.image_errors` chooses between raising and skipping (the row is replaced by the
next loadable row so batches keep their size, and the skip is counted and logged).

Example:
    >>> from datasets import Dataset
    >>> from PIL import Image
    >>> rows = {"image": [Image.new("RGB", (8, 8), c) for c in ("red", "blue")],
    ...         "captions": [["a red square", "red"], ["a blue square"]]}
    >>> ds = ImageCaptionDataset(Dataset.from_dict(rows), DataOptions(seed=0))
    >>> sample = ds[1]
    >>> sample["text"], sample["image_ids"], sample["image"].size
    ('a blue square', 1, (8, 8))
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from hqrs.dataset_builder.build_folder import BuildFolder, check_parquet_files
from hqrs.dataset_builder.imaging import decode_image

if TYPE_CHECKING:  # pragma: no cover
    from datasets import Dataset, IterableDataset

logger = logging.getLogger(__name__)

__all__ = [
    "CAPTION_COLUMNS",
    "DataOptions",
    "ImageCaptionDataset",
    "ImageLoadError",
    "ImageTextCollator",
    "RSAugment",
    "StreamingImageCaptionDataset",
    "load_training_dataset",
    "split_by_image",
]

#: Caption columns looked up, in this order, when :attr:`DataOptions.caption_column` is not set:
#: ``captions`` (list of strings, the builder's ``default`` config) then ``caption``/``text`` (one
#: string per row, the ``pairs`` config).
CAPTION_COLUMNS = ("captions", "caption", "text")
#: Columns that identify the image of a row (used as retrieval ground truth when present).
IMAGE_ID_COLUMNS = ("image_id",)
IMAGE_ERROR_POLICIES = ("skip", "raise")


class ImageLoadError(ValueError):
    """An image of the dataset could not be decoded (row and file named in the message)."""


@dataclass
class RSAugment:
    """Remote-sensing augmentations: nadir images have no "up", so flips and 90° turns are label-safe.

    Args:
        hflip: probability of a left–right flip.
        vflip: probability of a top–bottom flip.
        rot90: rotate by a uniformly drawn multiple of 90°.
        crop_scale: area fraction range of the random resized crop; ``None`` disables the crop.
        crop_ratio: aspect-ratio range of the crop (width / height).

    The crop is resized back to a square whose side is the input's shorter side, so the processor's
    resize/center-crop then sees the whole crop.

    Example:
        >>> import numpy as np
        >>> from PIL import Image
        >>> aug = RSAugment(hflip=1.0, vflip=0.0, rot90=False, crop_scale=None)
        >>> img = Image.fromarray(np.arange(4, dtype=np.uint8).reshape(1, 4))
        >>> np.asarray(aug(img, np.random.default_rng(0))).tolist()
        [[3, 2, 1, 0]]
    """

    hflip: float = 0.5
    vflip: float = 0.5
    rot90: bool = True
    crop_scale: tuple[float, float] | None = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def __post_init__(self) -> None:
        for name in ("hflip", "vflip"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"RSAugment.{name} must be a probability in [0, 1], got {value!r}")
        if self.crop_scale is not None:
            lo, hi = self.crop_scale
            if not 0.0 < lo <= hi <= 1.0:
                raise ValueError(
                    f"RSAugment.crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale!r}"
                )
            self.crop_scale = (float(lo), float(hi))
        lo, hi = self.crop_ratio
        if not 0.0 < lo <= hi:
            raise ValueError(f"RSAugment.crop_ratio must satisfy 0 < min <= max, got {self.crop_ratio!r}")
        self.crop_ratio = (float(lo), float(hi))

    def _crop_box(self, width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """torchvision's ``RandomResizedCrop.get_params`` drawn from ``rng`` (10 tries, then the whole image)."""
        area = width * height
        log_ratio = (math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]))
        for _ in range(10):
            target_area = area * rng.uniform(*self.crop_scale)
            ratio = math.exp(rng.uniform(*log_ratio))
            w = int(round(math.sqrt(target_area * ratio)))
            h = int(round(math.sqrt(target_area / ratio)))
            if 0 < w <= width and 0 < h <= height:
                left = int(rng.integers(0, width - w + 1))
                top = int(rng.integers(0, height - h + 1))
                return left, top, left + w, top + h
        return 0, 0, width, height

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        # Draw every random number whatever the settings, so one option does not shift the others.
        flip_h, flip_v = rng.random() < self.hflip, rng.random() < self.vflip
        turns = int(rng.integers(0, 4)) if self.rot90 else 0
        if self.crop_scale is not None:
            box = self._crop_box(image.width, image.height, rng)
            side = min(image.width, image.height)
            image = image.resize((side, side), resample=Image.Resampling.BICUBIC, box=box)
        if flip_h:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if flip_v:
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        if turns:
            image = image.transpose(
                (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)[turns - 1]
            )
        return image


@dataclass
class DataOptions:
    """How rows of an image–caption dataset become training samples.

    Args:
        image_column: column holding the image (``datasets.Image`` feature, bytes or a file path).
        caption_column: column holding the caption(s): a list of strings (one drawn per epoch) or a
            string. ``None``: the first of :data:`CAPTION_COLUMNS` present.
        image_id_column: column telling which rows show the same image (retrieval ground truth).
            ``None``: ``image_id`` when present, else every row is its own image.
        seed: seeds caption choice and augmentation together with the epoch and the row index.
        augment: :class:`RSAugment` settings, or ``None`` for no augmentation (always off for evaluation).
        image_errors: ``"skip"`` (log the row and file, count it, use the next loadable row) or
            ``"raise"`` (stop with an error naming the row and file).
        max_skips: with ``"skip"``, give up after this many images in a row fail to load.
    """

    image_column: str = "image"
    caption_column: str | None = None
    image_id_column: str | None = None
    seed: int = 42
    augment: RSAugment | None = None
    image_errors: str = "skip"
    max_skips: int = 100

    def __post_init__(self) -> None:
        if self.image_errors not in IMAGE_ERROR_POLICIES:
            raise ValueError(
                f"DataOptions.image_errors must be one of {IMAGE_ERROR_POLICIES}, got {self.image_errors!r}"
            )
        if isinstance(self.augment, dict):
            self.augment = RSAugment(**self.augment)
        if self.augment is not None and not isinstance(self.augment, RSAugment):
            raise ValueError(
                f"DataOptions.augment must be an RSAugment, a dict or None, got {self.augment!r}"
            )
        if not isinstance(self.seed, int):
            raise ValueError(f"DataOptions.seed must be an int, got {self.seed!r}")
        if not isinstance(self.max_skips, int) or self.max_skips < 1:
            raise ValueError(f"DataOptions.max_skips must be a positive int, got {self.max_skips!r}")


# --------------------------------------------------------------------------------------------------
# Loading


def _is_hf_dataset(obj: Any) -> bool:
    from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict

    return isinstance(obj, (Dataset, IterableDataset, DatasetDict, IterableDatasetDict))


def _pick_split(obj: Any, split: str, source: str) -> Any:
    from datasets import DatasetDict, IterableDatasetDict

    if isinstance(obj, (DatasetDict, IterableDatasetDict)):
        if split not in obj:
            raise ValueError(f"dataset {source!r} has no split {split!r}; its splits are {sorted(obj)}")
        return obj[split]
    return obj


def _builder_layout_files(root: Path, config: str) -> dict[str, list[str]] | None:
    """``{split: [files]}`` of the builder's hub layout ``data/<config>/<split>-*.parquet``, or ``None``."""
    return BuildFolder(root).shard_files(config) or None


def load_training_dataset(
    source: Any, *, config: str | None = "pairs", split: str = "train", streaming: bool = False
) -> Dataset | IterableDataset:
    """Open one split of an image–caption dataset.

    Args:
        source: a ``datasets.Dataset``/``IterableDataset``/``DatasetDict``, a local folder (the HQRS
            builder's hub layout ``data/<config>/<split>-*.parquet``, a ``save_to_disk`` folder, or
            anything ``datasets.load_dataset`` reads) or a Hub repository id.
        config: dataset configuration (``"pairs"``: one row per image–caption pair; ``"default"``:
            one row per image with a ``captions`` list). Ignored for ``datasets`` objects and
            ``save_to_disk`` folders, which hold a single configuration.
        split: split to return.
        streaming: return an ``IterableDataset`` read lazily (``Trainer`` then needs ``max_steps``).
    """
    from datasets import Dataset, load_dataset, load_from_disk

    if _is_hf_dataset(source):
        ds = _pick_split(source, split, type(source).__name__)
        if streaming and isinstance(ds, Dataset):
            ds = ds.to_iterable_dataset()
        return ds
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(
            f"dataset must be a datasets object, a folder or a Hub repository id, got {type(source).__name__}"
        )
    text = os.fspath(source)
    root = Path(text).expanduser()
    if root.is_dir():
        if (root / "state.json").is_file() or (root / "dataset_dict.json").is_file():
            ds = _pick_split(load_from_disk(str(root)), split, text)
            return ds.to_iterable_dataset() if streaming and isinstance(ds, Dataset) else ds
        build = BuildFolder(root).require_parquet("hqrs train")
        layout = _builder_layout_files(root, config or "default")
        if layout is not None:
            if split not in layout:
                raise ValueError(
                    f"dataset folder {text!r} has no split {split!r} in data/{config}/; found {sorted(layout)}"
                )
            check_parquet_files(layout[split])
            return load_dataset(
                "parquet", data_files={split: layout[split]}, split=split, streaming=streaming
            )
        found = BuildFolder(root).config_dirs() if config else []
        if found or build is not None:
            raise ValueError(
                f"dataset folder {text!r} has no configuration {config!r} (data/{config}/); found "
                f"{build.configs() if build is not None else found} (use --config)"
            )
        return _load_folder(root, text, config, split, streaming)
    if root.exists():
        raise ValueError(f"dataset {text!r} is a file; give its folder or a Hub repository id")
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise ValueError(f"dataset folder {text!r} does not exist")
    return load_dataset(text, name=config, split=split, streaming=streaming)


def _load_folder(root: Path, text: str, config: str | None, split: str, streaming: bool) -> Any:
    """A folder that is no build and no ``save_to_disk`` folder, read by ``datasets.load_dataset``'s
    folder rules; what it cannot read is one ``ValueError`` naming the folder and what is accepted."""
    from datasets import load_dataset
    from datasets.exceptions import DatasetGenerationError

    try:
        return load_dataset(str(root), name=config, split=split, streaming=streaming)
    except (ValueError, DatasetGenerationError, FileNotFoundError) as exc:  # CastError is a ValueError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(
            f"dataset folder {text!r} is not an hqrs build (no data/<config>/*.parquet), not a save_to_disk "
            f"folder, and datasets cannot read its config {config!r} split {split!r} as a table "
            f"({type(exc).__name__}: {first[:200]}); give a folder written by `hqrs build --format parquet`"
        ) from None


def split_by_image(
    dataset: Dataset, fraction: float, *, seed: int = 42, image_id_column: str | None = None
) -> tuple[Dataset, Dataset]:
    """Hold out ``fraction`` of the images (all captions of an image stay on one side).

    Rows are grouped by ``image_id_column`` (default ``image_id`` when present, else one group per
    row), so no image of the evaluation split is seen in training.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"eval fraction must be in (0, 1), got {fraction!r}")
    column = image_id_column or next((c for c in IMAGE_ID_COLUMNS if c in dataset.column_names), None)
    groups = np.arange(len(dataset)) if column is None else _factorize(dataset[column])
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    n_eval = max(1, int(round(n_groups * fraction)))
    if n_eval >= n_groups:
        raise ValueError(
            f"cannot hold out {fraction!r} of {n_groups} images and keep some for training; use a smaller fraction"
        )
    held = np.zeros(n_groups, dtype=bool)
    held[np.random.default_rng(seed).permutation(n_groups)[:n_eval]] = True
    is_eval = held[groups]
    return dataset.select(np.flatnonzero(~is_eval)), dataset.select(np.flatnonzero(is_eval))


def _factorize(values: Any) -> np.ndarray:
    index: dict[Any, int] = {}
    return np.fromiter((index.setdefault(v, len(index)) for v in values), dtype=np.int64)


# --------------------------------------------------------------------------------------------------
# Samples


def _resolve_columns(
    column_names: list[str] | None, options: DataOptions, source: str
) -> tuple[str, str | None]:
    """``(caption_column, image_id_column)`` after checking the needed columns exist."""
    if column_names is None:  # an IterableDataset whose features are unknown until read
        return options.caption_column or CAPTION_COLUMNS[0], options.image_id_column
    found = ", ".join(column_names) or "(none)"
    if options.image_column not in column_names:
        raise ValueError(
            f"{source} has no image column {options.image_column!r}; columns found: {found}. "
            "Set the image column (--image-column / DataOptions.image_column)."
        )
    if options.caption_column is not None:
        if options.caption_column not in column_names:
            raise ValueError(
                f"{source} has no caption column {options.caption_column!r}; columns found: {found}"
            )
        caption = options.caption_column
    else:
        caption = next((c for c in CAPTION_COLUMNS if c in column_names), None)
        if caption is None:
            raise ValueError(
                f"{source} has no caption column: expected one of {', '.join(CAPTION_COLUMNS)} "
                f"(or set --caption-column); columns found: {found}"
            )
    if options.image_id_column is not None and options.image_id_column not in column_names:
        raise ValueError(
            f"{source} has no image id column {options.image_id_column!r}; columns found: {found}"
        )
    image_id = options.image_id_column or next((c for c in IMAGE_ID_COLUMNS if c in column_names), None)
    return caption, image_id


def _undecoded(ds: Any, image_column: str) -> Any:
    """Turn off ``datasets``' own image decoding so a broken file can be reported with its row."""
    import datasets

    features = getattr(ds, "features", None)
    if (
        features is not None
        and isinstance(features.get(image_column), datasets.Image)
        and features[image_column].decode
    ):
        return ds.cast_column(image_column, datasets.Image(decode=False))
    return ds


def _describe_image(value: Any) -> str:
    if isinstance(value, dict):
        return repr(value.get("path") or "<embedded bytes>")
    if isinstance(value, (str, os.PathLike)):
        return repr(os.fspath(value))
    return f"<{type(value).__name__}>"


def _captions_of(value: Any, row: int, column: str) -> list[str]:
    if isinstance(value, str):
        captions = [value]
    elif isinstance(value, (list, tuple)):
        captions = [c for c in value if isinstance(c, str) and c.strip()]
    else:
        raise ValueError(
            f"row {row}: caption column {column!r} holds {type(value).__name__}, expected str or list[str]"
        )
    if not captions or not captions[0].strip():
        raise ValueError(f"row {row}: caption column {column!r} is empty; remove the row or fill its caption")
    return captions


def _rng(seed: int, epoch: int, row: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, row])


class _SampleMaker:
    """Shared row → sample logic of the map-style and the streaming datasets."""

    def __init__(self, options: DataOptions, caption_column: str, train: bool) -> None:
        self.options = options
        self.caption_column = caption_column
        self.augment = options.augment if train else None
        self.train = train
        self.epoch = 0
        self.skipped = 0

    def make(self, row: dict[str, Any], key: int, caption_index: int | None) -> dict[str, Any]:
        """Raises :class:`ImageLoadError` when the image does not decode."""
        rng = _rng(self.options.seed, self.epoch, key)
        captions = _captions_of(row[self.caption_column], key, self.caption_column)
        if caption_index is not None:
            text = captions[caption_index]
        elif self.train:
            text = captions[int(rng.integers(0, len(captions)))]
        else:
            text = captions[0]
        value = row[self.options.image_column]
        try:
            image = decode_image(value)
        except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
            raise ImageLoadError(
                f"row {key}: image {_describe_image(value)} of column {self.options.image_column!r} failed to "
                f"load ({type(exc).__name__}: {exc}); fix or drop the row, or use image_errors='skip'"
            ) from exc
        if self.augment is not None:
            image = self.augment(image, rng)
        return {"image": image, "text": text}

    def skip(self, error: ImageLoadError) -> None:
        self.skipped += 1
        logger.warning("skipping image (%d skipped so far): %s", self.skipped, error)


class ImageCaptionDataset(torch.utils.data.Dataset):
    """Map-style training/evaluation samples from an image–caption ``datasets.Dataset``.

    Args:
        dataset: the rows (see :func:`load_training_dataset`).
        options: columns, seed, augmentation and image-error policy.
        train: draw a random caption per row and epoch and augment; ``False`` keeps the first caption
            and no augmentation (unless ``all_captions``).
        all_captions: one sample per (row, caption), as retrieval benchmarks evaluate (``train=False``).

    Call :meth:`set_epoch` at the start of each epoch (the trainer's callback does) so the caption
    draw and the augmentation change across epochs.
    """

    def __init__(
        self,
        dataset: Dataset,
        options: DataOptions | None = None,
        *,
        train: bool = True,
        all_captions: bool = False,
    ) -> None:
        self.options = options or DataOptions()
        caption, image_id = _resolve_columns(list(dataset.column_names), self.options, "dataset")
        self.dataset = _undecoded(dataset, self.options.image_column)
        self._maker = _SampleMaker(self.options, caption, train)
        self.caption_column = caption
        self.image_ids = (
            _factorize(dataset[image_id]) if image_id is not None else np.arange(len(dataset), dtype=np.int64)
        )
        self._index: list[tuple[int, int | None]] | None = None
        if all_captions:
            column = dataset.select_columns([caption])[caption]
            self._index = [
                (row, k)
                for row, value in enumerate(column)
                for k in range(len(_captions_of(value, row, caption)))
            ]

    @property
    def skipped(self) -> int:
        """Images skipped so far in this process (``image_errors='skip'``)."""
        return self._maker.skipped

    def set_epoch(self, epoch: int) -> None:
        self._maker.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._index) if self._index is not None else len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row, caption_index = self._index[index] if self._index is not None else (index, None)
        n_rows = len(self.dataset)
        for attempt in range(self.options.max_skips + 1):
            current = (row + attempt) % n_rows
            try:
                sample = self._maker.make(
                    self.dataset[current], current, caption_index if attempt == 0 else None
                )
            except ImageLoadError as error:
                if self.options.image_errors == "raise":
                    raise
                self._maker.skip(error)
                continue
            sample["image_ids"] = int(self.image_ids[current])
            return sample
        raise ImageLoadError(
            f"{self.options.max_skips + 1} consecutive images from row {row} failed to load; "
            "check the dataset's image column"
        )


class StreamingImageCaptionDataset(torch.utils.data.IterableDataset):
    """Iterable counterpart of :class:`ImageCaptionDataset` over a streaming ``datasets.IterableDataset``.

    Rows that fail to load are dropped (``"skip"``, counted) or raise. The per-row seed uses the
    position in the stream of this data-loader worker, so a run is reproducible for a fixed number of
    workers. ``image_ids`` are stable hashes of the ``image_id`` values (or of worker and stream position).
    """

    def __init__(
        self, dataset: IterableDataset, options: DataOptions | None = None, *, train: bool = True
    ) -> None:
        self.options = options or DataOptions()
        columns = list(dataset.column_names) if dataset.column_names is not None else None
        caption, image_id = _resolve_columns(columns, self.options, "streaming dataset")
        self.dataset = _undecoded(dataset, self.options.image_column)
        self._maker = _SampleMaker(self.options, caption, train)
        self.image_id_column = image_id

    @property
    def skipped(self) -> int:
        return self._maker.skipped

    def set_epoch(self, epoch: int) -> None:
        self._maker.epoch = int(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(int(epoch))

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        worker_id = worker.id if worker is not None else 0
        for position, row in enumerate(self.dataset):
            if self._maker.caption_column not in row or self.options.image_column not in row:
                raise ValueError(
                    f"streaming dataset row {position} lacks column "
                    f"{self._maker.caption_column!r} or {self.options.image_column!r}; columns found: "
                    f"{', '.join(row)}"
                )
            try:
                sample = self._maker.make(row, position, None)
            except ImageLoadError as error:
                if self.options.image_errors == "raise":
                    raise
                self._maker.skip(error)
                continue
            key = row[self.image_id_column] if self.image_id_column in row else ("row", worker_id, position)
            sample["image_ids"] = _stable_image_id(key)
            yield sample


def _stable_image_id(key: Any) -> int:
    """A 56-bit integer id of ``key``: equal keys give equal ids in every data-loader worker and process
    (a per-worker counter would give different images the same id)."""
    return int.from_bytes(hashlib.blake2b(repr(key).encode(), digest_size=7).digest(), "big")


class ImageTextCollator:
    """Batch samples with the model's processor: ``pixel_values``, ``input_ids``, ``attention_mask``, ``image_ids``.

    Args:
        processor: a ``CLIPProcessor`` (or any processor taking ``text=``/``images=``).
        padding: tokenizer padding (``"max_length"`` for open_clip's fixed 77 tokens, ``True`` for the
            longest caption of the batch; CLIP's text embedding is the same either way).
    """

    def __init__(self, processor: Any, padding: bool | str = "max_length") -> None:
        self.processor = processor
        self.padding = padding

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        encoded = self.processor(
            text=[f["text"] for f in features],
            images=[f["image"] for f in features],
            padding=self.padding,
            truncation=True,
            return_tensors="pt",
        )
        batch = {
            key: encoded[key] for key in ("pixel_values", "input_ids", "attention_mask") if key in encoded
        }
        batch["image_ids"] = torch.tensor([f["image_ids"] for f in features], dtype=torch.long)
        return batch
