"""Peak memory per pixel of converting a >8-bit scene to 8-bit, hqrs vs the pre-#11.3 code (baseline).

Issue #11.3's target: converting a 16-bit image costs at most 12 bytes per pixel at peak (the baseline
costs ~71: a 10k × 10k uint16 TIFF peaked at 7.1 GB). A 3-band uint16 TIFF of ``--side`` × ``--side``
pixels is written once per layout; each conversion then runs in a fresh subprocess that reports its peak
RSS (``ru_maxrss``) above the RSS it had after its imports, divided by the pixel count.

Runs, each a separate process, per layout (``plain``: uncompressed, one strip as ``tifffile.imwrite``
writes it; ``lzw``: LZW + horizontal predictor in 256-row strips as GDAL writes GeoTIFFs):

* ``baseline`` — the conversion of hqrs a90fca3 (before #11.3): ``TiffPage.asarray()`` of the whole
  scene, the float64 per-band percentile stretch, ``Image.fromarray`` and an in-memory PNG.
* ``hqrs``     — :func:`hqrs.dataset_builder.sources.images.load_image` (what every source runs): strip /
  row-block reads, exact histogram percentiles, a lookup table into the 8-bit output, PNG streamed to
  the cache.

Usage::

    python bench/image_memory.py [--side 4000] [--tmp DIR] [--modes baseline,hqrs] [--layouts plain,lzw]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import io, json, resource, sys, time
mode, path, cache = sys.argv[1:4]
import numpy as np, tifffile
from PIL import Image
from hqrs.dataset_builder.sources.images import ImageSettings, load_image

def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))

def baseline(path):  # hqrs a90fca3: _read_tiff + _stretch_to_uint8 + store_converted's png_bytes
    with tifffile.TiffFile(path) as tif:
        array = tif.pages[0].asarray()
    array = np.asarray(array, dtype=np.float64)
    out = np.empty(array.shape, dtype=np.uint8)
    for band in range(array.shape[2]):
        values = array[..., band]
        finite = values[np.isfinite(values)]
        lo, hi = np.percentile(finite, (2.0, 98.0))
        hi = lo + 1.0 if hi <= lo else hi
        scaled = (np.nan_to_num(values, nan=lo) - lo) * (255.0 / (hi - lo))
        out[..., band] = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    image = Image.fromarray(out, mode="RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue(), image.size

floor = rss()
t0 = time.perf_counter()
if mode == "baseline":
    _, size = baseline(path)
else:
    loaded = load_image(path, ImageSettings(cache_dir=cache, max_pixels=10**10))
    size = (loaded.width, loaded.height)
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"mode": mode, "pixels": size[0] * size[1], "extra_bytes": peak - floor, "seconds": seconds}))
"""


def _scene(path: Path, side: int, layout: str) -> None:
    import numpy as np
    import tifffile

    rng = np.random.default_rng(0)
    rows = 256
    kw = {"compression": "lzw", "predictor": 2, "rowsperstrip": rows} if layout == "lzw" else {}
    # reflectance-like data (gamma-distributed, many ties); the writer's own memory is not measured
    scene = np.empty((side, side, 3), np.uint16)
    base = rng.gamma(2.0, 600.0, (rows, side, 3)).astype(np.uint16)
    for y in range(0, side, rows):
        scene[y : y + rows] = np.roll(base, y, axis=1)[: min(rows, side - y)]
    tifffile.imwrite(path, scene, photometric="rgb", **kw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--side", type=int, default=4000, help="scene side in pixels (default 4000: 16 MP)")
    ap.add_argument("--tmp", default=None, help="folder for the scenes (default: a temporary folder)")
    ap.add_argument(
        "--modes", default="baseline,hqrs", help="runs, comma-separated (baseline needs ~60 B/px)"
    )
    ap.add_argument("--layouts", default="plain,lzw", help="scene layouts, comma-separated")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        results = {}
        for layout in args.layouts.split(","):
            scene = Path(tmp) / f"scene-{layout}.tif"
            _scene(scene, args.side, layout)
            for mode in args.modes.split(","):
                proc = subprocess.run(
                    [sys.executable, "-c", CHILD, mode, str(scene), str(Path(tmp) / "cache")],
                    capture_output=True,
                    text=True,
                )
                if proc.returncode != 0:
                    print(f"{layout}/{mode}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                r["bytes_per_pixel"] = r["extra_bytes"] / r["pixels"]
                results[(layout, mode)] = r
                print(
                    f"{layout:5s} {mode:8s}: {r['bytes_per_pixel']:6.2f} bytes/pixel peak "
                    f"({r['extra_bytes'] / 2**20:7.0f} MiB over {r['pixels'] / 1e6:.0f} MP), {r['seconds']:.1f} s"
                )
            if (layout, "baseline") in results and (layout, "hqrs") in results:
                base, new = results[(layout, "baseline")], results[(layout, "hqrs")]
                print(
                    f"{layout:5s} ratio baseline(hqrs a90fca3)/hqrs: "
                    f"{base['bytes_per_pixel'] / new['bytes_per_pixel']:.1f}x less memory, "
                    f"target <= 12 bytes/pixel: {'met' if new['bytes_per_pixel'] <= 12 else 'NOT met'}"
                )


if __name__ == "__main__":
    main()
