"""Core imaging helpers shared by training and evaluation (no hqrs imports): decoding a dataset's image cell."""

from __future__ import annotations

import io
import os
from typing import Any

from PIL import Image, ImageOps


def decode_image(value: Any) -> Image.Image:
    """An RGB PIL image from a ``datasets.Image(decode=False)`` cell, raw bytes, a path or a PIL image.

    Decodes exactly as ``datasets.Image`` does: an EXIF Orientation tag is applied
    (``ImageOps.exif_transpose``), so training, evaluation and ``load_dataset`` see the same pixels.
    Datasets built by ``hqrs build`` carry no Orientation other than 1 (their pixels, ``width`` /
    ``height`` and boxes are all in the stored frame), so for them this is the stored frame.

    Raises:
        ValueError: a cell with neither bytes nor path, or a value of another type.
    """
    if isinstance(value, Image.Image):
        image = value
    elif isinstance(value, dict):
        if value.get("bytes"):
            image = Image.open(io.BytesIO(value["bytes"]))
        elif value.get("path"):
            image = Image.open(value["path"])
        else:
            raise ValueError("image cell has neither bytes nor path")
    elif isinstance(value, (bytes, bytearray)):
        image = Image.open(io.BytesIO(value))
    elif isinstance(value, (str, os.PathLike)):
        image = Image.open(value)
    else:
        raise ValueError(f"unsupported image value of type {type(value).__name__}")
    image.load()
    if image.getexif().get(0x0112) is not None:  # the test datasets.Image.decode_example makes
        image = ImageOps.exif_transpose(image)
    return image.convert("RGB")
