"""Image checks and conversions shared by every source adapter.

What an adapter does with an image file, in order:

1. **Guard.** A 0-byte file, a file Pillow cannot identify, a scene with more than ``max_pixels``
   pixels (decompression-bomb guard, checked from the header before decoding) and, with
   ``verify=True``, truncated or corrupt pixel data are *skipped with a reason*, never raised.
2. **Convert to 8-bit.** 8-bit grayscale / palette / RGB / RGBA JPEG, PNG, TIFF, BMP and WebP files
   are used as they are (the record points to the original file and the image id is the hash of its
   bytes). Anything else is converted to an 8-bit RGB PNG written to ``cache_dir``:

   * more than 8 bits per sample (16-bit, 32-bit integer or float): each band is stretched linearly
     between its ``stretch`` percentiles (2 % and 98 % by default) onto 0–255;
   * more than 3 bands (e.g. RGB + near-infrared): the bands listed in ``bands`` (1-based, default
     the first three) are kept; 2 bands keep the first one as grayscale; CMYK goes through Pillow.

   TIFFs are read with ``tifffile`` (which reads any band count / sample type); other formats with
   Pillow.
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
import struct
import warnings
import zlib
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


def _stretch_to_uint8(array: np.ndarray, stretch: tuple[float, float]) -> np.ndarray:
    array = np.asarray(array, dtype=np.float64)
    if array.ndim == 2:
        array = array[..., None]
    out = np.empty(array.shape, dtype=np.uint8)
    for band in range(array.shape[2]):
        values = array[..., band]
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            out[..., band] = 0
            continue
        lo, hi = np.percentile(finite, stretch)
        if hi <= lo:
            hi = lo + 1.0
        scaled = (np.nan_to_num(values, nan=lo) - lo) * (255.0 / (hi - lo))
        out[..., band] = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return out[..., 0] if out.shape[2] == 1 else out


def _select_bands(array: np.ndarray, bands: tuple[int, ...] | None, where: str) -> np.ndarray:
    if array.ndim == 2:
        return array
    n = array.shape[2]
    if bands is None:
        bands = (1, 2, 3) if n >= 3 else (1,)
    if max(bands) > n:
        raise SkipItem(f"bands={','.join(map(str, bands))} asks for band {max(bands)} but {where} has {n}")
    picked = array[..., [b - 1 for b in bands]]
    return picked[..., 0] if picked.shape[2] == 1 else picked


def _array_to_image(array: np.ndarray, settings: ImageSettings, where: str) -> Image.Image:
    array = _select_bands(array, settings.bands, where)
    if array.dtype != np.uint8:
        array = _stretch_to_uint8(array, settings.stretch)
    return Image.fromarray(array, mode="L" if array.ndim == 2 else "RGB")


def _to_pil_rgb8(im: Image.Image) -> Image.Image:
    if im.mode in _PLAIN_MODES:
        return im
    if im.mode == "CMYK" or im.mode == "YCbCr":
        return im.convert("RGB")
    return Image.fromarray(_stretch_to_uint8(np.asarray(im), (2.0, 98.0)))


def _read_tiff(
    path: Path | io.BytesIO, settings: ImageSettings
) -> tuple[int, int, Image.Image | None, str | None]:
    """Size of a TIFF and, when it is not plain 8-bit 1/3-band data, its converted 8-bit image."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            shape, dtype = page.shape, page.dtype
            samples = page.samplesperpixel
            planar = page.planarconfig == 2 and samples > 1
            if planar:  # (bands, h, w)
                height, width = shape[-2], shape[-1]
            else:
                height, width = shape[0], shape[1]
            if width * height > settings.max_pixels:
                raise SkipItem(
                    f"decompression-bomb guard: {width}×{height} = {width * height:,} pixels > "
                    f"max_pixels={settings.max_pixels:,} (raise max_pixels or use large=tile on a smaller copy)"
                )
            plain = dtype == np.uint8 and samples in (1, 3, 4) and not planar
            if plain:
                return width, height, None, None
            array = page.asarray()
    except SkipItem:
        raise
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise SkipItem(f"unreadable TIFF ({type(exc).__name__}: {exc})") from None
    if planar:
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    why = f"{samples}-band {dtype} TIFF → 8-bit {'RGB' if samples >= 3 else 'grayscale'}"
    return width, height, _array_to_image(array, settings, f"TIFF with {samples} bands"), why


def png_bytes(image: Image.Image, compress_level: int = 6) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


_PNG_COLOR_TYPES = {"L": 0, "LA": 4, "RGB": 2, "RGBA": 6}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def fast_png_bytes(image: Image.Image) -> bytes:
    """A lossless 8-bit PNG written for speed: every row "Up"-filtered, zlib run-length strategy.

    About 3× faster than Pillow's encoder at ``compress_level=1`` for ~5 % larger files on aerial
    photos (Pillow tries every filter on every row). Modes L / LA / RGB / RGBA; others go through Pillow.
    """
    color_type = _PNG_COLOR_TYPES.get(image.mode)
    if color_type is None:
        return png_bytes(image, compress_level=1)
    width, height = image.size
    rows = np.asarray(image, dtype=np.uint8).reshape(height, -1)
    filtered = np.empty((height, rows.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # filter type Up: each byte minus the byte above it (mod 256)
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    deflate = zlib.compressobj(1, zlib.DEFLATED, 15, 8, zlib.Z_RLE)
    idat = deflate.compress(filtered.tobytes()) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def image_cell(path: str, image_id: str, keep_original: bool = False) -> dict[str, Any]:
    """The ``Image`` cell: the file's bytes (JPEG/PNG/WebP, or any format with ``keep_original``), or a
    lossless PNG of other formats (TIFF, BMP), which browsers and the Hub viewer do not all show."""
    ext = Path(path).suffix.lower()
    if ext in WEB_EXTENSIONS or keep_original:
        with open(path, "rb") as f:
            return {"bytes": f.read(), "path": f"{image_id}{'.jpg' if ext == '.jpeg' else ext}"}
    # the pixel count was checked against the source's max_pixels when the source was read
    with pixel_limit(None), Image.open(path) as im:
        if im.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):
            im = im.convert("RGB")
        return {"bytes": fast_png_bytes(im), "path": f"{image_id}.png"}


def image_cell_job(args: tuple[str, str, bool]) -> dict[str, Any]:
    """:func:`image_cell` of one ``(path, image_id, keep_original)`` (a pool job)."""
    return image_cell(*args)


def store_converted(image: Image.Image, settings: ImageSettings, stem: str) -> tuple[Path, str]:
    """Write ``image`` as PNG into the cache (once); returns its path and content id."""
    data = png_bytes(image)
    image_id = content_id(data)
    path = settings.cache_path() / f"{stem}-{image_id}.png"
    if not path.exists():
        atomic_write_bytes(path, data)
    return path, image_id


_READ_WHOLE_LIMIT = 256 << 20  # files up to this size are read once into memory (id + decode)


def load_image(path: str | Path, settings: ImageSettings, *, keep_pixels: bool = False) -> LoadedImage:
    """Apply the guards and the 8-bit conversion to one image file (see the module docstring).

    The file is read once: its bytes give the content id and are decoded once for the truncation check
    and the perceptual hash together (JPEGs at reduced size through DCT scaling unless the full pixels
    are needed for tiling / resizing / conversion).

    Raises:
        SkipItem: the file cannot be used; the reason names what is wrong with it.
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
    if size <= _READ_WHOLE_LIMIT:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SkipItem(f"cannot read the file ({exc})") from None
        image_id, stream = content_id(data), io.BytesIO(data)
    else:
        image_id, stream = file_content_id(path), path
    converted_image: Image.Image | None = None
    why: str | None = None
    with pixel_limit(settings.max_pixels):
        if path.suffix.lower() in (".tif", ".tiff"):
            width, height, converted_image, why = _read_tiff(stream, settings)
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
            if converted_image is None and im.mode not in _PLAIN_MODES:
                why = f"{im.mode} → 8-bit"
            needs_pixels = settings.verify or settings.phash or full or why is not None
            if needs_pixels:
                if not full and why is None:
                    _draft_for_phash(im)  # only the hash looks at these pixels
                try:
                    im.load()
                except (OSError, SyntaxError, ValueError) as exc:
                    raise SkipItem(f"truncated or corrupt image data ({exc})") from None
                except Image.DecompressionBombError as exc:
                    raise SkipItem(f"decompression-bomb guard: {exc}") from None
                pixels = _to_pil_rgb8(im) if converted_image is None else converted_image
                if pixels is im and full:
                    pixels = im.copy()
                phash = perceptual_hash(pixels) if settings.phash else None
            else:
                pixels = phash = None
    if why is not None:
        if pixels.mode not in ("L", "RGB"):
            pixels = pixels.convert("RGB")
        new_path, image_id = store_converted(pixels, settings, path.stem)
        return LoadedImage(new_path, image_id, width, height, phash, why, pixels if full else None)
    return LoadedImage(path, image_id, width, height, phash, None, pixels if full else None)


# ---------------------------------------------------------------- geometry for tiling / clipping


def clip_polygon(points: list[tuple[float, float]], rect: tuple[float, float, float, float]):
    """Sutherland–Hodgman clip of a convex polygon to an axis-aligned rectangle."""
    x0, y0, x1, y1 = rect
    edges = (
        (lambda p: p[0] >= x0, lambda p, q: _cross_x(p, q, x0)),
        (lambda p: p[0] <= x1, lambda p, q: _cross_x(p, q, x1)),
        (lambda p: p[1] >= y0, lambda p, q: _cross_y(p, q, y0)),
        (lambda p: p[1] <= y1, lambda p, q: _cross_y(p, q, y1)),
    )
    out = list(points)
    for inside, cross in edges:
        if not out:
            break
        src, out = out, []
        for i, p in enumerate(src):
            q = src[i - 1]
            if inside(p):
                if not inside(q):
                    out.append(cross(q, p))
                out.append(p)
            elif inside(q):
                out.append(cross(q, p))
    return out


def _cross_x(p, q, x):
    t = (x - p[0]) / (q[0] - p[0])
    return (x, p[1] + t * (q[1] - p[1]))


def _cross_y(p, q, y):
    t = (y - p[1]) / (q[1] - p[1])
    return (p[0] + t * (q[0] - p[0]), y)


def polygon_area(points) -> float:
    n = len(points)
    if n < 3:
        return 0.0
    return (
        abs(
            sum(
                points[i][0] * points[(i + 1) % n][1] - points[(i + 1) % n][0] * points[i][1]
                for i in range(n)
            )
        )
        / 2
    )


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Tile start offsets along one axis (DOTA devkit style: the last tile is flush with the edge)."""
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return sorted(set(starts))


def scale_factor(width: int, height: int, max_side: int) -> float:
    return min(1.0, max_side / max(width, height))


def resized(image: Image.Image, scale: float) -> Image.Image:
    size = (max(1, math.floor(image.size[0] * scale + 0.5)), max(1, math.floor(image.size[1] * scale + 0.5)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
