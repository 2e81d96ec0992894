"""Caption metrics on 5,000 real RS candidates: hqrs.evaluation.coco_caption vs pycocoevalcap.

Candidates are leave-one-out human captions (caption j of an image scored against its other captions)
from RSICD (official test split, 1,094 images), Sydney-Captions (613) and RSITMD (452) under
../shared/data/rs_real. Both sides compute BLEU-1..4, METEOR, ROUGE-L and CIDEr. Each run is a fresh
Python process (no warm JVM or cache carried over); the two sides alternate (ABBA...) for ``--repeat``
rounds and the script prints, per run, the wall time, the CPU seconds of the process and its Java
children and the 1-minute load average, then the medians, the speed ratio (pycocoevalcap / hqrs median
wall time, >= 1 is faster) and the largest difference of the values (must be <= 1e-6).

    python bench/metrics_speed.py [--n 5000] [--repeat 3] [--rs-real ../shared/data/rs_real]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

SIDES = ("hqrs", "pycocoevalcap")


def candidate_set(root: Path, n: int):
    groups: dict[str, list[str]] = defaultdict(list)
    coco = json.loads((root / "rsicd/source_captions/rsicd_test_coco_format.json").read_text())
    for a in coco["annotations"]:
        groups[f"rsicd/{a['image_id']}"].append(a["caption"])
    for line in (
        (root / "sydney_captions/full_captions_luna97/descriptions_SIDNEY.txt").read_text().splitlines()
    ):
        k, text = line.split(" ", 1)
        groups[f"sydney/{k}"].append(text)
    caps = (root / "rsitmd_captions_only/test_caps.txt").read_text().splitlines()
    names = (root / "rsitmd_captions_only/test_filename.txt").read_text().splitlines()
    for name, text in zip(names, caps):
        groups[f"rsitmd/{name}"].append(text)
    preds, refs = {}, {}
    for j in range(5):
        for key, texts in groups.items():
            if len(texts) > 1 and j < len(texts):
                preds[f"{key}#{j}"] = texts[j]
                refs[f"{key}#{j}"] = texts[:j] + texts[j + 1 :]
                if len(preds) == n:
                    return preds, refs
    return preds, refs


def worker(side: str, root: Path, n: int) -> dict:
    """One timed run in this process: scores, wall seconds, CPU seconds (self + Java children)."""
    from hqrs.evaluation.coco_caption import pycocoevalcap_scores, score_captions

    preds, refs = candidate_set(root, n)
    fn = score_captions if side == "hqrs" else pycocoevalcap_scores
    load = os.getloadavg()[0]
    cpu0 = _cpu()
    t0 = time.perf_counter()
    scores = fn(preds, refs).corpus
    wall = time.perf_counter() - t0
    return {"wall": wall, "cpu": _cpu() - cpu0, "load": load, "scores": scores, "n": len(preds)}


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3, help="runs per side, interleaved")
    ap.add_argument(
        "--rs-real", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/rs_real"
    )
    ap.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.rs_real, args.n)))
        return
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    for r in range(args.repeat):
        for side in SIDES if r % 2 == 0 else SIDES[::-1]:
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                side,
                "--n",
                str(args.n),
                "--rs-real",
                str(args.rs_real),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            run = json.loads(out.strip().splitlines()[-1])
            runs[side].append(run)
            print(
                f"run {r + 1} {side:14s} wall {run['wall']:6.2f} s  cpu {run['cpu']:6.2f} s  load {run['load']:.1f}"
            )
    ours, theirs = runs["hqrs"][-1]["scores"], runs["pycocoevalcap"][-1]["scores"]
    print(f"{runs['hqrs'][-1]['n']} candidates")
    print(f"{'metric':10s} {'hqrs':>12s} {'pycocoevalcap':>14s}")
    worst = 0.0
    for k, v in theirs.items():
        worst = max(worst, abs(ours[k] - v))
        print(f"{k:10s} {ours[k]:12.6f} {v:14.6f}")
    print(f"max |difference| = {worst:.2e} ({'same values' if worst <= 1e-6 else 'MISMATCH'})")
    med = {
        side: {key: statistics.median(r[key] for r in runs[side]) for key in ("wall", "cpu", "load")}
        for side in SIDES
    }
    for side in SIDES:
        m = med[side]
        print(f"median {side:14s} wall {m['wall']:6.2f} s  cpu {m['cpu']:6.2f} s  load {m['load']:.1f}")
    print(
        f"ratio (pycocoevalcap / hqrs, median wall) {med['pycocoevalcap']['wall'] / med['hqrs']['wall']:.2f}x; "
        f"CPU ratio {med['pycocoevalcap']['cpu'] / med['hqrs']['cpu']:.2f}x"
    )
    if worst > 1e-6:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
