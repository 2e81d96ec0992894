"""Image checks and conversions shared by every source adapter.

What an adapter does with an image file, in order:

1. **Guard.** A 0-byte file, a file Pillow cannot identify, a scene with more than ``max_pixels``
   pixels (decompression-bomb guard, checked from the header before decoding) and, with
   ``verify=True``, truncated or corrupt pixel data are *skipped with a reason*, never raised.
2. **Convert to 8-bit, one rule for every format.** 8-bit grayscale / palette / RGB JPEG, PNG, TIFF, BMP
   and WebP files are used as they are (the record points to the original file and the image id is the
   hash of its bytes). Anything else is converted to an 8-bit PNG written to ``cache_dir``:

   * bands: ``bands`` (1-based) picks the bands of every multi-band image; by default the first three
     become RGB (two bands: the first, grayscale). This holds for every sample count, bit depth,
     photometric tag (RGB, MINISBLACK, MINISWHITE, palette, extra samples tagged alpha as NAIP ships
     its NIR) and format (an RGBA PNG's alpha is its 4th band). A single band stays grayscale;
   * more than 8 bits per sample (16-bit TIFF or PNG, 32-bit integer or float): each chosen band is
     stretched linearly between its ``stretch`` percentiles (2 % and 98 % by default) onto 0–255.
     Integers of up to 16 bits go through an exact histogram and a lookup table, TIFFs are read strip by
     strip / tile by tile (:func:`_tiff_raster`), so the peak is the 8-bit output plus Pillow's copy of
     it (~7 bytes/pixel for RGB, ``bench/image_memory.py``); a conversion that would not fit in the
     available memory (or ``max_memory``) is skipped up front with the fix.

   TIFFs are read with ``tifffile`` + ``imagecodecs`` (every compression they know), 16-bit PNGs with
   ``imagecodecs`` (Pillow keeps only the high byte of 16-bit RGB), other formats with Pillow.

   **Orientation.** Pixels, ``width`` / ``height`` and boxes stay in the *stored* frame (what annotation
   devkits and GDAL read); an EXIF / XMP Orientation other than 1 (which ``datasets`` and browsers would
   apply) is removed: set to 1 in place in a JPEG (:func:`jpeg_without_orientation`, no re-encoding),
   other formats become a lossless PNG of the stored pixels.
3. **Large scenes** (longer side above ``max_side``): ``large="keep"`` leaves them whole,
   ``"resize"`` scales them down to ``max_side`` (boxes and gsd follow), ``"tile"`` cuts them into
   ``tile_size`` tiles overlapping by ``tile_overlap`` as the DOTA devkit does, clipping every box to
   its tile and keeping it where at least ``min_clip_fraction`` of its area is inside.

Each file is read once and decoded once: its bytes give the image id, and one decode serves the
truncation check and the perceptual hash (:func:`perceptual_hash`, the 64-bit DCT hash of
``imagehash.phash`` computed on a box-reduced copy; JPEGs are decoded directly at reduced size through
DCT scaling), so it is cheap even for large scenes; every part of hqrs uses this one function.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import struct
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..records import atomic_write_bytes, content_id, file_content_id

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
WEB_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
_PLAIN_MODES = ("1", "L", "P", "RGB", "RGBA", "LA")
LARGE_MODES = ("keep", "tile", "resize")


class SkipItem(Exception):
    """An input item that cannot be used; ``reason`` goes to the skip report."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class ImageSettings:
    """How a source treats its image files (all settable per source: ``?max_pixels=...&large=tile``).

    Args:
        max_pixels: decompression-bomb guard; larger scenes are skipped before being decoded.
        verify: decode every image once so truncated / corrupt files are skipped up front.
        large: ``keep`` | ``tile`` | ``resize`` for scenes whose longer side exceeds ``max_side``.
        max_side: size limit for ``large``.
        tile_size, tile_overlap: tiling geometry (DOTA devkit defaults: 1024 and 200).
        min_clip_fraction: a clipped box is kept in a tile when at least this fraction of its area is
            inside (DOTA devkit: 0.7).
        bands: 1-based band indices to keep from images with more than 3 bands (default 1,2,3).
        stretch: low / high percentiles mapped to 0 / 255 when converting >8-bit data.
        cache_dir: where converted images and tiles are written (default ``$HQRS_CACHE/images`` or
            ``~/.cache/hqrs/images``).
        phash: compute the perceptual hash (from the same single decode as ``verify``).
        max_memory: bytes a conversion to 8-bit may use (default: the memory available to the process,
            cgroup limits included); a scene whose conversion would need more is skipped up front.
    """

    max_pixels: int = 400_000_000
    verify: bool = True
    large: str = "keep"
    max_side: int = 4096
    tile_size: int = 1024
    tile_overlap: int = 200
    min_clip_fraction: float = 0.7
    bands: tuple[int, ...] | None = None
    stretch: tuple[float, float] = (2.0, 98.0)
    cache_dir: str | None = None
    phash: bool = True
    max_memory: int | None = None

    def __post_init__(self) -> None:
        if int(self.max_pixels) <= 0:
            raise ValueError(f"max_pixels must be a positive integer, got {self.max_pixels!r}")
        self.max_pixels = int(self.max_pixels)
        if self.large not in LARGE_MODES:
            raise ValueError(f"large must be one of {LARGE_MODES}, got {self.large!r}")
        self.max_side, self.tile_size, self.tile_overlap = (
            int(self.max_side),
            int(self.tile_size),
            int(self.tile_overlap),
        )
        if self.max_side < 16 or self.tile_size < 16:
            raise ValueError(
                f"max_side and tile_size must be at least 16, got {self.max_side!r}, {self.tile_size!r}"
            )
        if not 0 <= self.tile_overlap < self.tile_size:
            raise ValueError(
                f"tile_overlap must be in [0, tile_size={self.tile_size}), got {self.tile_overlap!r}"
            )
        if not 0.0 < float(self.min_clip_fraction) <= 1.0:
            raise ValueError(f"min_clip_fraction must be in (0, 1], got {self.min_clip_fraction!r}")
        if self.bands is not None:
            self.bands = tuple(int(b) for b in self.bands)
            if len(self.bands) not in (1, 3) or min(self.bands) < 1:
                raise ValueError(f"bands must be 1 or 3 one-based band indices, got {self.bands!r}")
        lo, hi = (float(v) for v in self.stretch)
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"stretch must be two percentiles 0 <= low < high <= 100, got {self.stretch!r}")
        self.stretch = (lo, hi)
        if self.max_memory is not None:
            if int(self.max_memory) <= 0:
                raise ValueError(f"max_memory must be a positive number of bytes, got {self.max_memory!r}")
            self.max_memory = int(self.max_memory)

    def cache_path(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir)
        root = os.environ.get("HQRS_CACHE") or Path.home() / ".cache" / "hqrs"
        return Path(root) / "images"


@contextlib.contextmanager
def pixel_limit(max_pixels: int | None):
    """Let Pillow open up to ``max_pixels`` (``None``: any size; our own guard decides; Pillow's default
    would be 89M)."""
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            # the size check is ours (a skip with a reason); Pillow's warning would only repeat it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


_PHASH_SIDE = 128  # images are box-reduced to about this short side before the DCT hash


def _phash_factor(width: int, height: int) -> int:
    return max(1, min(width, height) // _PHASH_SIDE)


def _dct_rows() -> np.ndarray:
    """The first 8 rows of the unnormalised 32-point DCT-II (``scipy.fftpack.dct``'s default)."""
    n = np.arange(32)
    return 2.0 * np.cos(np.pi * np.outer(np.arange(8), 2 * n + 1) / 64.0)


_DCT8 = _dct_rows()


def perceptual_hash(image: Image.Image) -> str:
    """64-bit DCT perceptual hash (16 hex characters) of a decoded image; robust to re-encoding.

    The image is first box-reduced to a short side of about 128 pixels (cheap for large scenes), then
    hashed exactly as ``imagehash.phash`` does (grayscale, Lanczos to 32×32, 2-D DCT-II, the 8×8
    lowest frequencies compared with their median), so hashes interoperate with ``imagehash``.
    """
    factor = _phash_factor(*image.size)
    small = image.reduce(factor) if factor > 1 and image.mode not in ("P", "1") else image
    gray = small.convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    coeffs = _DCT8 @ np.asarray(gray, dtype=np.float64) @ _DCT8.T
    return np.packbits((coeffs > np.median(coeffs)).ravel()).tobytes().hex()


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def _draft_for_phash(im: Image.Image) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 size (DCT scaling) when the hash reduces it anyway.

    The whole entropy-coded stream is still read, so truncated files fail to load just as at full size.
    """
    if im.format == "JPEG":
        factor = _phash_factor(*im.size)
        if factor > 1:
            im.draft(im.mode, (im.size[0] // factor, im.size[1] // factor))


def file_perceptual_hash(path: str | Path, max_pixels: int = 400_000_000) -> str:
    """:func:`perceptual_hash` of an image file (JPEGs are decoded at reduced size, as in :func:`load_image`)."""
    with pixel_limit(max_pixels), Image.open(path) as im:
        _draft_for_phash(im)
        return perceptual_hash(_to_pil_rgb8(im))


@dataclass
class LoadedImage:
    """An image that passed the guards: the file to use, its id and size, and how it was made."""

    path: Path  # the file the record points to (the original, or the converted PNG)
    image_id: str
    width: int
    height: int
    phash: str | None = None
    converted: str | None = None  # why it was converted, None when the original is used
    pixels: Image.Image | None = None  # decoded 8-bit image, kept only while tiling/resizing
    cell: ImageCell | None = None  # its embedded cell, made from this read (``load_image(cell=True)``)
    file_size: int | None = None  # bytes of ``path`` (with ``cell``)


def _default_bands(samples: int) -> tuple[int, ...]:
    return (1, 2, 3) if samples >= 3 else (1,)


def _bands_for(samples: int, settings: ImageSettings, where: str) -> tuple[int, ...]:
    """The 1-based bands kept from an image with ``samples`` bands (``settings.bands`` or the default)."""
    if samples == 1:
        return (1,)  # a single band is the grayscale image whatever ``bands`` asks of multi-band ones
    bands = settings.bands or _default_bands(samples)
    if max(bands) > samples:
        raise SkipItem(
            f"bands={','.join(map(str, bands))} asks for band {max(bands)} but {where} has {samples} "
            f"(set bands= to at most {samples})"
        )
    return bands


_BLOCK_PIXELS = 1 << 20  # rows are processed in blocks of about this many pixels


@dataclass
class _Raster:
    """A multi-band raster read block by block (``blocks()`` may be called more than once).

    ``blocks()`` yields ``(first_band, y, x, block)`` with ``block`` of shape (rows, cols, bands).
    """

    width: int
    height: int
    samples: int
    dtype: np.dtype
    what: str  # e.g. "4-band uint16 TIFF"
    blocks: Any
    decoded_bytes: int = 0  # bytes held decoded while converting (whole arrays, largest strip / tile)

    @classmethod
    def of_array(cls, array: np.ndarray, what: str) -> _Raster:
        if array.ndim == 2:
            array = array[..., None]
        rows = max(1, _BLOCK_PIXELS // max(1, array.shape[1]))

        def blocks():
            for y in range(0, array.shape[0], rows):
                yield 0, y, 0, array[y : y + rows]

        return cls(array.shape[1], array.shape[0], array.shape[2], array.dtype, what, blocks, array.nbytes)


def _small_int_keys(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Order-preserving non-negative integer keys of ≤16-bit integer values, and the number of keys."""
    if values.dtype.kind == "i":
        unsigned = np.dtype(f"u{values.dtype.itemsize}").newbyteorder(values.dtype.byteorder)
        values = values.view(unsigned) ^ np.array(1 << (8 * values.dtype.itemsize - 1), unsigned)
    return values, 1 << (8 * values.dtype.itemsize)


def _histogram_percentiles(counts: np.ndarray, qs: tuple[float, float]) -> tuple[float, float] | None:
    """``np.percentile(values, qs)`` (linear method) from the values' histogram ``counts``."""
    n = int(counts.sum())
    if n == 0:
        return None
    cum = np.cumsum(counts)
    out = []
    for q in qs:
        pos = q / 100.0 * (n - 1)
        k = math.floor(pos)
        a = float(np.searchsorted(cum, k, side="right"))
        b = float(np.searchsorted(cum, min(k + 1, n - 1), side="right"))
        t = pos - k
        out.append(a + (b - a) * t if t < 0.5 else b - (b - a) * (1 - t))
    return out[0], out[1]


def _stretch_lut(lo: float, hi: float, size: int) -> np.ndarray:
    if hi <= lo:
        hi = lo + 1.0
    keys = np.arange(size, dtype=np.float64)
    return np.clip(np.rint((keys - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def _picked(first: int, block: np.ndarray, picks: list[int]):
    """``(j, values)`` for every output band ``j`` whose source band is inside ``block``."""
    for j, p in enumerate(picks):
        if first <= p < first + block.shape[2]:
            yield j, block[..., p - first]


def _convert_raster(raster: _Raster, settings: ImageSettings) -> np.ndarray:
    """The bands of ``raster`` chosen by ``settings.bands`` (default: the first three, or the first of
    one / two) as an 8-bit (height, width) or (height, width, 3) array.

    8-bit data are copied as they are; other data are stretched linearly per band between the
    ``settings.stretch`` percentiles onto 0–255 (NaN → the low value). Integers of up to 16 bits go
    through an exact histogram and a lookup table, so the peak memory is the 8-bit output plus one block.
    """
    bands = _bands_for(raster.samples, settings, raster.what)
    picks = [b - 1 for b in bands]
    out = np.empty((raster.height, raster.width, len(picks)), dtype=np.uint8)
    kind = raster.dtype.kind
    if kind == "b" or raster.dtype == np.uint8:
        for first, y, x, block in raster.blocks():
            for j, values in _picked(first, block, picks):
                dest = out[y : y + values.shape[0], x : x + values.shape[1], j]
                if kind == "b":
                    np.multiply(values, 255, out=dest, casting="unsafe")
                else:
                    dest[...] = values
    elif kind in "iu" and raster.dtype.itemsize <= 2:
        size = 1 << (8 * raster.dtype.itemsize)
        counts = np.zeros((len(picks), size), dtype=np.int64)
        for first, _y, _x, block in raster.blocks():
            for j, values in _picked(first, block, picks):
                counts[j] += np.bincount(_small_int_keys(values)[0].ravel(), minlength=size)
        luts = []
        for j in range(len(picks)):
            limits = _histogram_percentiles(counts[j], settings.stretch)
            luts.append(np.zeros(size, np.uint8) if limits is None else _stretch_lut(*limits, size))
        del counts
        for first, y, x, block in raster.blocks():
            for j, values in _picked(first, block, picks):
                out[y : y + values.shape[0], x : x + values.shape[1], j] = luts[j][_small_int_keys(values)[0]]
    else:  # 32/64-bit integers and floats: exact percentiles over each whole band
        data = np.empty((raster.height, raster.width, len(picks)), dtype=raster.dtype)
        for first, y, x, block in raster.blocks():
            for j, values in _picked(first, block, picks):
                data[y : y + values.shape[0], x : x + values.shape[1], j] = values
        rows = max(1, _BLOCK_PIXELS // max(1, raster.width))
        for j in range(len(picks)):
            band = data[..., j]
            finite = band[np.isfinite(band)] if kind == "f" else band.ravel().copy()
            if finite.size == 0:
                out[..., j] = 0
                continue
            lo, hi = (float(v) for v in np.percentile(finite, settings.stretch, overwrite_input=True))
            del finite
            if hi <= lo:
                hi = lo + 1.0
            for y in range(0, raster.height, rows):
                chunk = np.nan_to_num(band[y : y + rows].astype(np.float64), nan=lo)
                chunk -= lo
                chunk *= 255.0 / (hi - lo)
                out[y : y + rows, :, j] = np.clip(np.rint(chunk), 0, 255)
        del data
    return out[..., 0] if out.shape[2] == 1 else out


def _conversion_bytes(raster: _Raster, settings: ImageSettings) -> int:
    """Peak memory :func:`_convert_raster` + the 8-bit Pillow image need for ``raster`` (an estimate)."""
    pixels = raster.width * raster.height
    channels = 1 if raster.samples == 1 else len(settings.bands or _default_bands(raster.samples))
    need = pixels * (channels + (4 if channels == 3 else 1))  # the 8-bit array + Pillow's copy of it
    if not (raster.dtype.kind == "b" or (raster.dtype.kind in "iu" and raster.dtype.itemsize <= 2)):
        need += pixels * (channels + 1) * raster.dtype.itemsize  # the chosen bands + one band's values
    return need + 3 * raster.decoded_bytes + 64 * _BLOCK_PIXELS


def _available_memory() -> int | None:
    """Bytes this process may still allocate: ``MemAvailable``, lowered by a cgroup v2 / v1 limit."""
    limits = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:
            limits.append(max(0, int(limit) - usage))
        break
    return min(limits) if limits else None


def _check_memory(raster: _Raster, settings: ImageSettings) -> None:
    need = _conversion_bytes(raster, settings)
    available = settings.max_memory if settings.max_memory is not None else _available_memory()
    if available is not None and need > available:
        raise SkipItem(
            f"out of memory: converting this {raster.width}×{raster.height} {raster.what} to 8-bit needs "
            f"about {need / 2**30:.2f} GiB, only {available / 2**30:.2f} GiB available"
            f"{' (max_memory)' if settings.max_memory is not None else ''}; free memory or raise "
            "max_memory, or convert / crop the scene first (e.g. gdal_translate -ot Byte -scale)"
        )


def _raster_to_image(raster: _Raster, settings: ImageSettings) -> Image.Image:
    _check_memory(raster, settings)
    try:
        array = _convert_raster(raster, settings)
        image = Image.fromarray(array, mode="L" if array.ndim == 2 else "RGB")
    except MemoryError:
        need = _conversion_bytes(raster, settings)
        raise SkipItem(
            f"out of memory converting this {raster.width}×{raster.height} {raster.what} to 8-bit "
            f"(needs about {need / 2**30:.2f} GiB); free memory or convert / crop the scene first"
        ) from None
    return image


_PIL_SAMPLES = {"1": 1, "L": 1, "P": 3, "RGB": 3, "LA": 2, "RGBA": 4}


def _pil_array(im: Image.Image) -> np.ndarray:
    """The pixels of a decoded Pillow image as a (height, width[, bands]) array of its sample type."""
    if im.mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        im = im.convert("RGB")
    elif im.mode == "1":
        im = im.convert("L")
    elif im.mode in ("P", "PA"):
        im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
    elif im.mode in ("La", "RGBa"):
        im = im.convert(im.mode.upper())
    return np.asarray(im)


def _is_plain(im: Image.Image, settings: ImageSettings) -> bool:
    """Whether a Pillow image already is the 8-bit image hqrs would make of it."""
    samples = _PIL_SAMPLES.get(im.mode)
    if im.mode not in ("1", "L", "P", "RGB"):
        return False
    return samples == 1 or settings.bands is None or settings.bands == _default_bands(samples)


def _to_pil_rgb8(im: Image.Image, settings: ImageSettings | None = None) -> Image.Image:
    """The 8-bit image hqrs makes of a decoded Pillow image: plain L / P / 1 / RGB images as they are,
    others through the same band selection and stretch as TIFFs (:func:`_convert_raster`)."""
    settings = settings or ImageSettings()
    if _is_plain(im, settings):
        return im
    array = _pil_array(im)
    samples = array.shape[2] if array.ndim == 3 else 1
    return _raster_to_image(
        _Raster.of_array(array, f"{samples}-band {im.mode} {im.format or 'image'}"), settings
    )


_PIL_TIFF_COMPRESSIONS = {1, 2, 3, 4, 5, 7, 8, 32773, 32946}  # none, CCITT, LZW, JPEG, deflate, packbits
_PHOTOMETRIC_NAMES = {0: "MINISWHITE", 1: "MINISBLACK", 2: "RGB", 3: "PALETTE", 5: "SEPARATED", 6: "YCBCR"}


def _tiff_is_plain(page: Any, settings: ImageSettings) -> bool:
    """Whether Pillow reads this TIFF page as the 8-bit image hqrs would make of it (no conversion)."""
    separate, depth, _h, _w, _c = page.shaped
    samples, photometric = page.samplesperpixel, int(page.photometric)
    layout = (
        (samples == 1 and photometric in (0, 1, 3))
        or (samples == 3 and photometric in (2, 6) and separate == 1)
        or (samples == 4 and photometric == 5 and separate == 1 and settings.bands is None)
    )
    return (
        layout
        and page.dtype in (np.uint8, np.bool_)
        and depth == 1
        and int(page.compression) in _PIL_TIFF_COMPRESSIONS
        and page.tags.valueof(274, 1) == 1  # no Orientation: Pillow's and tifffile's frames are the same
        and (samples == 1 or settings.bands is None or settings.bands == _default_bands(samples))
    )


def _tiff_raster(tif: Any, page: Any) -> _Raster:
    """The pixels of a TIFF page, read strip by strip / tile by tile (uncompressed ones row block by row
    block), never as one whole decoded array."""
    separate, depth, height, width, contig = page.shaped
    if depth != 1:
        raise SkipItem(f"3-D TIFF (image depth {depth}) is not a 2-D image")
    dtype, photometric = np.dtype(page.dtype), int(page.photometric)
    samples = separate * contig
    colormap = None
    if photometric == 3 and samples == 1 and page.colormap is not None:
        colormap = np.asarray(page.colormap)
        colormap = (colormap // 257 if colormap.max() > 255 else colormap).astype(np.uint8).T  # (n, 3)
    nodata = page.nodata if page.nodata is not None else 0

    def fix(block: np.ndarray) -> np.ndarray:
        if colormap is not None:
            return colormap[np.minimum(block[..., 0], len(colormap) - 1)]
        if photometric == 0:  # MINISWHITE: 0 is white
            if block.dtype.kind == "b":
                return ~block
            if block.dtype.kind == "u":
                return np.iinfo(block.dtype).max - block
            return -block
        return block

    contiguous = page.is_contiguous
    if (
        contiguous
        and int(page.compression) == 1
        and page.fillorder == 1
        and dtype.kind != "b"
        and page.bitspersample == 8 * dtype.itemsize
    ):
        offset = page.dataoffsets[0]
        file_dtype = dtype.newbyteorder(tif.byteorder)
        rows = max(1, _BLOCK_PIXELS // width)

        def blocks():
            fh = tif.filehandle
            for s in range(separate):
                for y in range(0, height, rows):
                    n = min(rows, height - y)
                    with fh.lock:
                        fh.seek(offset + (s * height + y) * width * contig * dtype.itemsize)
                        block = fh.read_array(file_dtype, count=n * width * contig)
                    yield s, y, 0, fix(block.reshape(n, width, contig))

        decoded = 0
    else:

        def blocks():
            for segment, (s, _d, y, x, _), shape in page.segments(
                maxworkers=1, sort=True, buffersize=8 << 20, _fullsize=False
            ):
                if segment is None:
                    segment = np.full(shape, nodata, dtype=dtype)
                yield s * contig, y, x, fix(segment[0, : height - y, : width - x])

        decoded = math.prod(page.chunks) * dtype.itemsize
    name = _PHOTOMETRIC_NAMES.get(photometric, f"photometric={photometric}")
    if colormap is not None:
        samples, dtype = 3, np.dtype(np.uint8)
    return _Raster(width, height, samples, dtype, f"{samples}-band {dtype} {name} TIFF", blocks, decoded)


def _read_tiff(
    path: Path | io.BytesIO, settings: ImageSettings
) -> tuple[int, int, Image.Image | None, str | None]:
    """Size of a TIFF and, when Pillow would not read it as the 8-bit image hqrs makes of it, that image.

    tifffile reads every sample count, bit depth, photometric tag and compression (imagecodecs
    decodes LZW, deflate, zstd, JPEG, JPEG 2000, WebP, LERC ...).
    """
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            _s, _d, height, width, _c = page.shaped
            if width * height > settings.max_pixels:
                raise SkipItem(
                    f"decompression-bomb guard: {width}×{height} = {width * height:,} pixels > "
                    f"max_pixels={settings.max_pixels:,} (raise max_pixels or use large=tile on a smaller copy)"
                )
            if _tiff_is_plain(page, settings):
                return width, height, None, None
            raster = _tiff_raster(tif, page)
            what = raster.what
            orientation = page.tags.valueof(274, 1)
            if orientation != 1:  # tifffile reads the stored frame; the PNG carries no Orientation
                what += f" (Orientation={orientation} dropped: stored frame kept)"
            image = _raster_to_image(raster, settings)
    except SkipItem:
        raise
    except Exception as exc:  # tifffile / imagecodecs raise many types for corrupt or unknown files
        raise SkipItem(f"unreadable TIFF ({type(exc).__name__}: {exc})") from None
    return width, height, image, f"{what} → 8-bit {'RGB' if image.mode == 'RGB' else 'grayscale'}"


def _png_header(head: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, bit depth, colour type) from a PNG's first 26 bytes, None if not a PNG."""
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    return width, height, depth, colour


def _read_png16(data: bytes, header: tuple[int, int, int, int], settings: ImageSettings) -> Image.Image:
    """A 16-bit PNG at its full precision (Pillow keeps only the high byte of 16-bit RGB / RGBA)."""
    import imagecodecs

    width, height, _depth, colour = header
    samples = {0: 1, 2: 3, 4: 2, 6: 4}.get(colour, 1)
    estimate = _Raster(width, height, samples, np.dtype(np.uint16), "", None, width * height * samples * 2)
    estimate.what = f"{samples}-band uint16 PNG"
    _check_memory(estimate, settings)
    try:
        array = imagecodecs.png_decode(data)
    except Exception as exc:
        raise SkipItem(f"truncated or corrupt image data ({type(exc).__name__}: {exc})") from None
    raster = _Raster.of_array(array, estimate.what)
    del array
    return _raster_to_image(raster, settings)


_ORIENTATION = 0x0112  # the EXIF / TIFF Orientation tag


def _orientation(im: Image.Image) -> int | None:
    """The Orientation that ``datasets`` (and browsers) would apply to ``im``, None when untagged."""
    try:
        value = im.getexif().get(_ORIENTATION)
    except Exception:  # a broken EXIF block: Pillow's own exif_transpose would fail the same way
        return None
    return None if value in (None, 1) else value


def _patch_exif_orientation(buf: bytearray, start: int, end: int) -> bool:
    """Set the Orientation entry of the EXIF (TIFF-structured) block ``buf[start:end]`` to 1, in place."""
    order = {b"II": "<", b"MM": ">"}.get(bytes(buf[start : start + 2]))
    if order is None or end - start < 8:
        return False
    ifd = start + struct.unpack(order + "I", buf[start + 4 : start + 8])[0]
    if ifd + 2 > end:
        return False
    (count,) = struct.unpack(order + "H", buf[ifd : ifd + 2])
    for k in range(count):
        entry = ifd + 2 + 12 * k
        if entry + 12 > end:
            return False
        tag, kind = struct.unpack(order + "HH", buf[entry : entry + 4])
        if tag == _ORIENTATION and kind == 3:  # SHORT, value stored in the entry itself
            buf[entry + 8 : entry + 10] = struct.pack(order + "H", 1)
            return True
    return False


_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')  # what Pillow's getexif() reads


def jpeg_without_orientation(data: bytes) -> bytes | None:
    """The JPEG ``data`` with its EXIF and XMP Orientation set to 1 (no rotation), every other byte
    unchanged (no re-encoding); None when the marker structure is not understood."""
    buf = bytearray(data)
    if buf[:2] != b"\xff\xd8":
        return None
    i, changed = 2, False
    while i + 4 <= len(buf):
        if buf[i] != 0xFF:
            return None
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xDA, 0xD9):  # start of scan / end of image: no metadata after this
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            i += 2
            continue
        end = i + 2 + int.from_bytes(buf[i + 2 : i + 4], "big")
        if marker == 0xE1:
            if buf[i + 4 : i + 10] == b"Exif\x00\x00":
                changed |= _patch_exif_orientation(buf, i + 10, min(end, len(buf)))
            elif buf[i + 4 : i + 33] == b"http://ns.adobe.com/xap/1.0/\x00":
                segment = bytes(buf[i + 4 : end])
                patched = _XMP_ORIENTATION.sub(lambda m: b"tiff:Orientation" + m[1] + b"1", segment)
                if patched != segment:
                    buf[i + 4 : end], changed = patched, True
        i = end
    return bytes(buf) if changed else None


def png_bytes(image: Image.Image, compress_level: int = 6) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


_CELL_MODES = ("1", "L", "LA", "P", "RGB", "RGBA")  # modes a browser shows from a PNG as they are


_FAST_PNG_MODES = ("L", "LA", "RGB", "RGBA")


def cell_png_bytes(image: Image.Image) -> bytes:
    """A lossless 8-bit PNG of ``image`` written for speed: libpng through ``imagecodecs`` with every row
    "Up"-filtered, zlib level 1 and its run-length strategy (OpenCV's fast settings).

    About 2× faster than Pillow's encoder at ``compress_level=1`` (Pillow picks a filter per row and
    exposes no choice) for ~7 % larger files on aerial photos. Modes L / LA / RGB / RGBA; others (1, P)
    go through Pillow.
    """
    if image.mode not in _FAST_PNG_MODES:
        buf = io.BytesIO()
        image.save(buf, format="PNG", compress_level=1)
        return buf.getvalue()
    import imagecodecs

    png = imagecodecs.PNG
    return bytes(
        imagecodecs.png_encode(np.asarray(image), level=1, strategy=png.STRATEGY.RLE, filter=png.FILTER.UP)
    )


@dataclass(frozen=True)
class ImageCell:
    """The bytes embedded for one image (``datasets.Image`` storage) and the file name they carry,
    ``<image_id>.<ext>`` (``.jpeg`` is written ``.jpg``)."""

    bytes: bytes
    path: str

    @property
    def ext(self) -> str:
        return Path(self.path).suffix.lstrip(".")

    def storage(self) -> dict[str, Any]:
        """The ``{"bytes", "path"}`` dict of ``datasets.Image``'s arrow storage."""
        return {"bytes": self.bytes, "path": self.path}


def _cell_png(im: Image.Image) -> bytes:
    """The lossless PNG cell of a decoded TIFF / BMP (modes a browser does not show become RGB)."""
    return cell_png_bytes(im if im.mode in _CELL_MODES else im.convert("RGB"))


def needs_encoding(path: str | Path, keep_original: bool = False) -> bool:
    """Whether :func:`cell_from_bytes` re-encodes the file (TIFF, BMP: browsers do not all show them)."""
    return not keep_original and Path(path).suffix.lower() not in WEB_EXTENSIONS


def cell_from_bytes(
    data: bytes, name: str, image_id: str, keep_original: bool = False, phash: bool = False
) -> tuple[ImageCell, str | None]:
    """The :class:`ImageCell` of an image file's bytes ``data`` (``name``: its file name, for the
    extension), and its perceptual hash when ``phash``; the bytes are opened once (the header always
    parses: a file that is no image raises) and decoded at most once.

    JPEG / PNG / WebP (or anything with ``keep_original``) are embedded as they are; other formats (TIFF,
    BMP) become a lossless PNG (:func:`cell_png_bytes`). No Pillow pixel limit: the source that made the
    record checked the image against its ``max_pixels``.

    Raises:
        OSError (``UnidentifiedImageError``) / SyntaxError / ValueError / Image.DecompressionBombError: the
            bytes are not an image, or do not decode.
    """
    ext = Path(name).suffix.lower()
    with pixel_limit(None), Image.open(io.BytesIO(data)) as im:  # the header parses (or raises)
        if ext in WEB_EXTENSIONS or keep_original:
            cell = ImageCell(data, f"{image_id}{'.jpg' if ext == '.jpeg' else ext}")
            if not phash:
                return cell, None
            _draft_for_phash(im)
            return cell, perceptual_hash(_to_pil_rgb8(im))
        im.load()
        cell = ImageCell(_cell_png(im), f"{image_id}.png")
        return cell, perceptual_hash(_to_pil_rgb8(im)) if phash else None


def encode_cell(args: tuple[ImageCell, str, bool]) -> ImageCell:
    """The embedded cell of a staged one: TIFF / BMP (staged as read) become a lossless PNG here, the one
    decode of that image in a build; other cells pass as they are. A pool job (it lives here, in a light
    module, so that pool workers do not import the build's heavy modules): ``(cell, image_id,
    keep_original)``."""
    cell, image_id, keep_original = args
    if not needs_encoding(cell.path, keep_original):
        return cell
    return cell_from_bytes(cell.bytes, cell.path, image_id, keep_original)[0]


def image_cell(path: str, image_id: str, keep_original: bool = False) -> dict[str, Any]:
    """The ``Image`` cell (``{"bytes", "path"}``) of the file at ``path``: :func:`cell_from_bytes` of its
    bytes (read once)."""
    with open(path, "rb") as f:
        data = f.read()
    return cell_from_bytes(data, str(path), image_id, keep_original)[0].storage()


def store_converted(image: Image.Image, settings: ImageSettings, stem: str) -> tuple[Path, str]:
    """Write ``image`` as PNG into the cache (once); returns its path and content id.

    The PNG is written straight to a temporary file (never held whole in memory) and renamed.
    """
    cache = settings.cache_path()
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=f".{stem}.", suffix=".png.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", compress_level=6)
        image_id = file_content_id(tmp)
        path = cache / f"{stem}-{image_id}.png"
        if path.exists():
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path, image_id


def _store_bytes(data: bytes, settings: ImageSettings, stem: str, suffix: str) -> tuple[Path, str]:
    image_id = content_id(data)
    path = settings.cache_path() / f"{stem}-{image_id}{suffix}"
    if not path.exists():
        atomic_write_bytes(path, data)
    return path, image_id


_READ_WHOLE_LIMIT = 256 << 20  # files up to this size are read once into memory (id + decode)
_READ_WHOLE_TIFF = 16 << 20  # TIFFs above this are read block by block (conversion memory stays bounded)


def load_image(
    path: str | Path,
    settings: ImageSettings,
    *,
    keep_pixels: bool = False,
    cell: bool = False,
    keep_original: bool = False,
) -> LoadedImage:
    """Apply the guards and the 8-bit conversion to one image file (see the module docstring).

    The file is read once: its bytes give the content id and are decoded once for the truncation check
    and the perceptual hash together (JPEGs at reduced size through DCT scaling unless the full pixels
    are needed for tiling / resizing / conversion).

    With ``cell``, the image's embedded :class:`ImageCell` (what :func:`cell_from_bytes` makes of the
    file the record points to, ``keep_original`` as there) comes from that same read and decode:
    JPEG / PNG / WebP bytes as they are, a TIFF / BMP as the PNG of the pixels decoded for the hash, a
    converted image as its PNG. Not for a large scene that is tiled / resized, nor for a file too big to
    be read whole (its record's file is read again by the plan).

    Raises:
        SkipItem: the file cannot be used; the reason names what is wrong with it and the fix.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        raise SkipItem("image file not found") from None
    if not path.is_file():
        raise SkipItem("image file not found")
    if size == 0:
        raise SkipItem("empty file (0 bytes)")
    suffix = path.suffix.lower()
    is_tiff = suffix in (".tif", ".tiff")
    data: bytes | None = None
    if size <= (_READ_WHOLE_TIFF if is_tiff else _READ_WHOLE_LIMIT):
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SkipItem(f"cannot read the file ({exc})") from None
        image_id, stream = content_id(data), io.BytesIO(data)
    else:
        image_id, stream = file_content_id(path), path
    converted_image: Image.Image | None = None
    why: str | None = None
    patched_jpeg: bytes | None = None
    with pixel_limit(settings.max_pixels):
        if is_tiff:
            width, height, converted_image, why = _read_tiff(stream, settings)
            if isinstance(stream, io.BytesIO):
                stream.seek(0)
        else:
            if data is not None:
                head = data[:26]
            else:
                with open(path, "rb") as f:
                    head = f.read(26)
            header = _png_header(head)
            if header is not None and header[2] == 16:
                width, height = header[:2]
                if width * height > settings.max_pixels:
                    raise SkipItem(
                        f"decompression-bomb guard: {width}×{height} = {width * height:,} pixels > "
                        f"max_pixels={settings.max_pixels:,}"
                    )
                converted_image = _read_png16(
                    data if data is not None else path.read_bytes(), header, settings
                )
                why = f"{ {0: 1, 2: 3, 4: 2, 6: 4}.get(header[3], 1) }-band 16-bit PNG → 8-bit {converted_image.mode}"
        try:
            im = Image.open(stream) if converted_image is None else converted_image
        except UnidentifiedImageError:
            raise SkipItem("not an image (Pillow cannot identify the file)") from None
        except Image.DecompressionBombError as exc:
            raise SkipItem(f"decompression-bomb guard: {exc}") from None
        except OSError as exc:
            raise SkipItem(f"truncated or corrupt image file ({exc})") from None
        with im:
            width, height = im.size
            if width * height > settings.max_pixels:
                raise SkipItem(
                    f"decompression-bomb guard: {width}×{height} = {width * height:,} pixels > "
                    f"max_pixels={settings.max_pixels:,}"
                )
            large = max(width, height) > settings.max_side and settings.large != "keep"
            full = large or keep_pixels
            if converted_image is None:
                orientation = _orientation(im)
                if not _is_plain(im, settings):
                    why = f"{im.mode} {im.format} → 8-bit"
                elif orientation is not None:
                    # one frame everywhere: the stored pixels; the tag that would rotate them goes
                    patched_jpeg = jpeg_without_orientation(data) if im.format == "JPEG" and data else None
                    if patched_jpeg is not None and _orientation(Image.open(io.BytesIO(patched_jpeg))):
                        patched_jpeg = None  # an Orientation left somewhere the patch does not reach
                    how = "set to 1 in the JPEG" if patched_jpeg is not None else "dropped (lossless PNG)"
                    why = f"EXIF Orientation={orientation} {how}: pixels, size and boxes stay in the stored frame"
            needs_pixels = settings.verify or settings.phash or full or why is not None
            if needs_pixels:
                if not full and (why is None or patched_jpeg is not None):
                    _draft_for_phash(im)  # only the hash looks at these pixels
                try:
                    im.load()
                except (OSError, SyntaxError, ValueError) as exc:
                    raise SkipItem(f"truncated or corrupt image data ({exc})") from None
                except Image.DecompressionBombError as exc:
                    raise SkipItem(f"decompression-bomb guard: {exc}") from None
                except MemoryError:
                    raise SkipItem(
                        f"out of memory decoding this {width}×{height} {im.mode} image; free memory, or lower "
                        "max_pixels to skip such scenes, or crop / downscale it first"
                    ) from None
                pixels = _to_pil_rgb8(im, settings) if converted_image is None else converted_image
                if pixels is im and full:
                    pixels = im.copy()
                phash = perceptual_hash(pixels) if settings.phash else None
            else:
                pixels = phash = None
            made = None
            if cell and not large and data is not None and why is None:
                made = _original_cell(im if needs_pixels else None, data, suffix, image_id, keep_original)
    kept = pixels if full else None
    if patched_jpeg is not None:
        new_path, image_id = _store_bytes(patched_jpeg, settings, path.stem, ".jpg")
        made = ImageCell(patched_jpeg, f"{image_id}.jpg") if cell and not large else None
        return LoadedImage(new_path, image_id, width, height, phash, why, kept, made, len(patched_jpeg))
    if why is not None:
        if pixels.mode not in ("L", "RGB"):
            pixels = pixels.convert("RGB")
        new_path, image_id = store_converted(pixels, settings, path.stem)
        if cell and not large:  # the PNG just written (not the input file): embedded as it is
            png = new_path.read_bytes()
            made = ImageCell(png, f"{image_id}.png") if content_id(png) == image_id else None
        size = len(made.bytes) if made is not None else None
        return LoadedImage(new_path, image_id, width, height, phash, why, kept, made, size)
    return LoadedImage(path, image_id, width, height, phash, None, kept, made, len(data) if made else None)


def _original_cell(
    decoded: Image.Image | None, data: bytes, suffix: str, image_id: str, keep_original: bool
) -> ImageCell:
    """:func:`cell_from_bytes` of ``data`` (an unconverted file), from its pixels already ``decoded``
    (loaded) when the cell is a re-encoded PNG."""
    if suffix in WEB_EXTENSIONS or keep_original:
        return ImageCell(data, f"{image_id}{'.jpg' if suffix == '.jpeg' else suffix}")
    if decoded is None:
        return cell_from_bytes(data, suffix, image_id, keep_original)[0]
    return ImageCell(_cell_png(decoded), f"{image_id}.png")
