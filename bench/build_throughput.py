"""Build + export throughput and memory of HQRS-IT against a plain ``datasets`` parquet baseline.

Input: real images from ``../shared/data/rs_real`` (UCM TIFF, RSICD / AID JPEG, DOTA / DIOR / iSAID
PNG) repeated to N records; every copy gets a few distinct trailing bytes so each is a distinct image
(own content id), as in a real build. A released-caption CSV (2 captions per image) is the input.

* ours: ``export_dataset(OUT, captions_csv=CSV, configs=("default",), num_proc=P)`` — source adapter
  (each file read once: content id, one decode for the truncation check + perceptual hash, and the
  image's cell made from that read, a TIFF's PNG from that decode, staged as the records flow), split
  planning with near-duplicate groups (no file read again), parquet shards with embedded bytes, card,
  report. Variants: ``num_proc`` 1 and 2, and ``keep_original`` (TIFF embedded as is);
* baseline: ``Dataset.from_dict({"image": paths, "captions": ...}).cast_column("image", Image())
  .to_parquet(FILE)`` on the same files, as the issue names it. NOTE: in datasets 5 ``to_parquet``
  does not embed local image files, it writes only their paths (about 0.1 MB for 2,000 images), so
  this is not the same artefact;
* baseline-embed: the same plus ``with_format("arrow").map(embed_table_storage, batched=True)``
  before ``to_parquet`` — what ``push_to_hub`` does so the parquet holds the image bytes: the
  like-for-like baseline (reads the bytes; no decode, no hash, no conversion, no splits).

``--stages`` also prints the CPU milliseconds per image of each step of our image analysis on the same
files (read, SHA-256 content id, decode as the analysis decodes, perceptual hash, PNG cell of a TIFF /
BMP), by format and averaged over the input mix, next to the baseline's whole CPU per image (the slope
between ``--records`` and a quarter of it): the steps the baseline does not do bound our ratio.

Each run is a fresh subprocess (imports included on both sides); peak RSS is its ``ru_maxrss``; CPU
seconds (the subprocess and its pool workers) are reported next to wall time, and their ratio is the
steadier number on a shared machine.
Baseline and our variants run interleaved, ``--repeats`` rounds, and the median of each is reported
with the 1-minute load average around every run (the machine may be shared).

    python bench/build_throughput.py --records 2000 --rss-records 2000,8000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RS_REAL = Path(
    os.environ.get("HQRS_RS_REAL", Path(__file__).resolve().parents[2] / "shared" / "data" / "rs_real")
)


def make_inputs(folder: Path, n: int) -> Path:
    exts = (".jpg", ".png", ".tif")
    sources = sorted(p for p in RS_REAL.rglob("*") if p.suffix.lower() in exts and "_instance_" not in p.name)
    if not sources:
        sys.exit(f"no images under {RS_REAL}")
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = ["filepath,caption"]
    for i in range(n):
        src = sources[i % len(sources)]
        dst = images / f"{i:06d}{src.suffix.lower()}"
        dst.write_bytes(src.read_bytes() + f"hqrs-bench-{i}".encode())
        rows += [
            f"images/{dst.name},a remote sensing image number {i}",
            f"images/{dst.name},another caption {i}",
        ]
    (folder / "caps.csv").write_text("\n".join(rows) + "\n")
    return folder / "caps.csv"


MODES = {
    "baseline": "Dataset.from_dict().cast_column(Image()).to_parquet (paths only!)",
    "baseline-embed": "same + map(embed_table_storage) (push_to_hub's embedding)",
    "ours": "hqrs export_dataset, num_proc=1",
    "ours-np2": "hqrs export_dataset, num_proc=2",
    "ours-keep": "hqrs export_dataset, num_proc=1, keep_original (TIFF as is)",
}


def _child(mode: str, csv_path: str, out: str) -> None:
    started = time.perf_counter()
    if mode.startswith("ours"):
        from hqrs.dataset_builder.export import export_dataset

        report = export_dataset(
            out,
            captions_csv=csv_path,
            configs=("default",),
            num_proc=2 if mode == "ours-np2" else 1,
            keep_original=mode == "ours-keep",
            progress=False,
        )
        n = report["images"]
    else:
        import csv

        from datasets import Dataset, Image
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
        groups: dict[str, list[str]] = {}
        with open(csv_path, newline="") as f:
            for row in csv.DictReader(f):
                groups.setdefault(str(Path(csv_path).parent / row["filepath"]), []).append(row["caption"])
        ds = Dataset.from_dict({"image": list(groups), "captions": list(groups.values())})
        ds = ds.cast_column("image", Image())
        if mode == "baseline-embed":
            # what push_to_hub does before writing a shard: read every file into the image column
            from datasets.table import embed_table_storage

            ds = ds.with_format("arrow").map(
                embed_table_storage, batched=True, batch_size=100, keep_in_memory=True
            )
        Path(out).mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(Path(out) / "train.parquet"), batch_size=100)
        n = len(ds)
    seconds = time.perf_counter() - started
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of this process and its (joined) pool workers: far less sensitive than wall time to
    # other jobs on a shared machine; imports included on both sides
    cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    rss_mb = me.ru_maxrss / 1024
    size = sum(p.stat().st_size for p in Path(out).rglob("*.parquet"))
    print(
        json.dumps(
            {"mode": mode, "records": n, "seconds": seconds, "cpu": cpu, "peak_rss_mb": rss_mb, "bytes": size}
        )
    )


def stage_costs(csv_path: Path, rounds: int = 3) -> dict[str, dict[str, float]]:
    """CPU ms per image of each analysis step, by file extension, on the images of ``csv_path``."""
    import hashlib
    import io

    from PIL import Image

    from hqrs.dataset_builder.sources.images import (
        _cell_png,
        _draft_for_phash,
        _to_pil_rgb8,
        needs_encoding,
        perceptual_hash,
    )

    files = sorted({p for p in (csv_path.parent / "images").iterdir()})
    totals: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}

    def timed(ext: str, step: str, fn, *args):
        start = time.process_time()
        out = fn(*args)
        totals.setdefault(ext, {}).setdefault(step, 0.0)
        totals[ext][step] += time.process_time() - start
        return out

    def decode(data: bytes) -> Image.Image:  # as the analysis decodes: JPEGs at the hash's reduced size
        im = Image.open(io.BytesIO(data))
        _draft_for_phash(im)
        im.load()
        return im

    for _ in range(rounds):
        for path in files:
            ext = path.suffix.lower()
            counts[ext] = counts.get(ext, 0) + 1
            data = timed(ext, "read", path.read_bytes)
            timed(ext, "sha256", lambda d: hashlib.sha256(d).hexdigest(), data)
            im = timed(ext, "decode", decode, data)
            timed(ext, "phash", lambda i: perceptual_hash(_to_pil_rgb8(i)), im)
            if needs_encoding(path):
                timed(ext, "png_cell", _cell_png, im)
    out = {ext: {k: 1000 * v / counts[ext] for k, v in steps.items()} for ext, steps in totals.items()}
    n = sum(counts.values())
    mix: dict[str, float] = {}
    for ext, steps in out.items():
        for k, v in steps.items():
            mix[k] = mix.get(k, 0.0) + v * counts[ext] / n
    out["mix"] = mix
    return out


def run_child(mode: str, csv_path: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(csv_path), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["load1"] = os.getloadavg()[0]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument(
        "--rss-records", default="2000,8000", help="record counts for the peak-RSS comparison"
    )
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (median is reported)")
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated subset of {', '.join(MODES)}"
    )
    parser.add_argument(
        "--stages", action="store_true", help="CPU per image of each analysis step vs the baseline's"
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    modes = [m for m in args.modes.split(",") if m]
    if "ours" not in modes or not any(m.startswith("baseline") for m in modes) or set(modes) - set(MODES):
        sys.exit(f"--modes must include ours and a baseline, from {list(MODES)}; got {modes}")
    with tempfile.TemporaryDirectory(prefix="hqrs-bench-") as tmp:
        tmp = Path(tmp)
        csv_path = make_inputs(tmp / "in", args.records)
        runs: dict[str, list[dict]] = {m: [] for m in modes}
        for r in range(args.repeats):
            for mode in modes:
                runs[mode].append(run_child(mode, csv_path, tmp / mode))
                shutil.rmtree(tmp / mode, ignore_errors=True)
                last = runs[mode][-1]
                print(
                    f"  round {r + 1} {mode:14s} {last['seconds']:6.2f}s wall {last['cpu']:6.2f}s cpu  "
                    f"load1 {last['load1']:.2f}"
                )
        med = {m: statistics.median(x["seconds"] for x in runs[m]) for m in modes}
        cpu = {m: statistics.median(x["cpu"] for x in runs[m]) for m in modes}
        load = statistics.median(x["load1"] for m in modes for x in runs[m])
        print(
            f"records: {args.records} (real rs_real images repeated, distinct bytes); cpus: {os.cpu_count()}"
        )
        print(f"median of {args.repeats} interleaved rounds; median 1-min load average {load:.2f}")
        reference = "baseline-embed" if "baseline-embed" in med else "baseline"
        for m in modes:
            mb = runs[m][-1]["bytes"] / 1e6
            ratio = (
                "" if m.startswith("baseline") else f"  ratio vs {reference} {med[reference] / med[m]:.2f}"
            )
            print(f"{MODES[m]:62s} {med[m]:6.2f}s ({args.records / med[m]:5.0f} rec/s, {mb:.0f} MB){ratio}")
        for base in [m for m in modes if m.startswith("baseline")]:
            print(
                f"throughput ratio ours (num_proc=1) / {base}: {med[base] / med['ours']:.2f} (target >= 0.8)"
            )
            for m in [m for m in modes if not m.startswith("baseline")]:
                print(
                    f"cpu-time ratio {m} / {base}: {cpu[base] / cpu[m]:.2f} ({cpu[m]:.2f}s vs {cpu[base]:.2f}s)"
                )
        if args.stages:
            base = next(m for m in ("baseline-embed", "baseline") if m in modes)
            small = make_inputs(tmp / "in-quarter", max(1, args.records // 4))
            quarter = run_child(base, small, tmp / "quarter")
            shutil.rmtree(tmp / "quarter", ignore_errors=True)
            per_image = 1000 * (cpu[base] - quarter["cpu"]) / (args.records - max(1, args.records // 4))
            costs = stage_costs(csv_path)
            print(f"{base}: {per_image:.3f} ms CPU per image (slope), {cpu[base]:.2f}s in all")
            for ext, steps in costs.items():
                parts = ", ".join(f"{k} {v:.3f}" for k, v in steps.items())
                print(f"  ours {ext:5s} ms CPU per image: {parts}; sum {sum(steps.values()):.3f}")
            analysis = sum(costs["mix"].values()) - costs["mix"]["read"]  # the baseline reads too
            need = cpu[base] + args.records * analysis / 1000
            print(
                f"analysis steps the baseline does not do (sha256, decode, phash, PNG cells): {analysis:.3f} "
                f"ms/image; if everything else cost only what the whole baseline costs, ours would need "
                f"{need:.2f}s CPU: cpu-time ratio bound {cpu[base] / need:.2f}"
            )
        rss = {}
        for n in (int(v) for v in args.rss_records.split(",") if v):
            csv_n = make_inputs(tmp / f"in{n}", n)
            rss[n] = run_child("ours", csv_n, tmp / f"ours{n}")
            print(f"peak RSS at {n} records: {rss[n]['peak_rss_mb']:.0f} MB ({rss[n]['seconds']:.1f}s)")
            shutil.rmtree(tmp / f"in{n}", ignore_errors=True)
            shutil.rmtree(tmp / f"ours{n}", ignore_errors=True)
        if len(rss) >= 2:
            lo, hi = min(rss), max(rss)
            print(
                f"peak RSS ratio {hi}/{lo} records: {rss[hi]['peak_rss_mb'] / rss[lo]['peak_rss_mb']:.2f} (target <= 1.2)"
            )


if __name__ == "__main__":
    main()
