"""Peak memory of `hqrs convert open-clip` vs the checkpoint size, side by side with a naive converter.

The issue's target is peak RSS ≤ 2.5× the checkpoint file size (stated for coca_ViT-L-14; this script
measures the CLIP path, ViT-L-14 by default). A random-init open_clip model is written to a temp
file first; each conversion then runs in a fresh subprocess, so neither the random init nor the other
run counts, and the subprocess reports its own peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``).

Runs, each a separate process:

* ``imports``  — import torch, transformers, open_clip, hqrs only (the fixed floor of any run).
* ``hqrs``     — exactly what ``hqrs convert open-clip`` does: ``torch.load(weights_only=True,
  mmap=True)``, key table, weights *assigned* into a ``CLIPModel`` built without random init,
  ``save_pretrained`` (safetensors) + processor.
* ``naive``    — the usual converter recipe (as transformers' ``convert_clip_original_pytorch_to_hf``):
  ``torch.load`` without mmap, a random-init ``CLIPModel``, ``load_state_dict`` copy, ``save_pretrained``.

Usage::

    python bench/convert_memory.py [--model-name ViT-L-14] [--format pt|safetensors] [--tmp DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MAKE_CHECKPOINT = r"""
import sys, torch, open_clip
name, path, fmt = sys.argv[1:4]
sd = open_clip.create_model(name, pretrained=None).state_dict()
if fmt == "pt":  # open_clip_train layout
    torch.save({"epoch": 1, "name": "bench", "state_dict": sd}, path)
else:
    from safetensors.torch import save_file
    save_file(sd, path)
"""

CHILD = r"""
import json, resource, sys, time
mode, name, ckpt, out = sys.argv[1:5]
t0 = time.perf_counter()
import torch, transformers, open_clip  # noqa: F401
from hqrs.modeling import convert_clip, key_mapping  # noqa: F401
if mode == "hqrs":
    import argparse
    from hqrs.scripts.convert import run_open_clip
    run_open_clip(argparse.Namespace(model_name=name, checkpoint=__import__("pathlib").Path(ckpt),
                  out=__import__("pathlib").Path(out), force_quick_gelu=False, overwrite=False,
                  model_config=None))
elif mode == "naive":
    from transformers import CLIPModel
    from hqrs.modeling.convert_clip import OPEN_CLIP_TO_HF_CLIP, clip_config_from_open_clip
    sd = torch.load(ckpt, map_location="cpu", weights_only=True)
    sd = sd.get("state_dict", sd)
    model = CLIPModel(clip_config_from_open_clip(name))
    model.load_state_dict(OPEN_CLIP_TO_HF_CLIP.convert(sd), strict=True)
    del sd
    model.save_pretrained(out)
peak_kib = None
try:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            peak_kib = int(line.split()[1])
except OSError:
    pass
if peak_kib is None:  # not Linux: ru_maxrss (KiB on Linux, bytes on macOS)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1024 if sys.platform == "darwin" else 1)
print(json.dumps({"mode": mode, "peak_rss_bytes": peak_kib * 1024, "seconds": time.perf_counter() - t0}))
"""


def _child(mode: str, name: str, ckpt: Path, out: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode, name, str(ckpt), str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"},
    )
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-name", default="ViT-L-14")
    parser.add_argument("--format", choices=("pt", "safetensors"), default="pt")
    parser.add_argument("--tmp", type=Path, default=None, help="folder for the temp checkpoint and outputs")
    parser.add_argument("--skip-naive", action="store_true")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp_name:
        tmp = Path(tmp_name)
        ckpt = tmp / f"{args.model_name}.{args.format}"
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", MAKE_CHECKPOINT, args.model_name, str(ckpt), args.format], check=True
        )
        size = ckpt.stat().st_size
        print(
            f"checkpoint: {args.model_name} random init, {args.format}, {size / 2**30:.2f} GiB "
            f"(written in {time.perf_counter() - t0:.0f}s)"
        )
        modes = ["imports", "hqrs"] + ([] if args.skip_naive else ["naive"])
        rows = []
        for mode in modes:
            r = _child(mode, args.model_name, ckpt, tmp / f"out-{mode}")
            rows.append(r)
        print(f"{'run':<8} {'peak RSS GiB':>12} {'× checkpoint':>13} {'seconds':>8}")
        for r in rows:
            print(
                f"{r['mode']:<8} {r['peak_rss_bytes'] / 2**30:>12.2f} {r['peak_rss_bytes'] / size:>13.2f} "
                f"{r['seconds']:>8.1f}"
            )
        by = {r["mode"]: r for r in rows}
        if "naive" in by:
            print(
                f"hqrs / naive peak RSS: {by['hqrs']['peak_rss_bytes'] / by['naive']['peak_rss_bytes']:.2f}"
            )
        verdict = "meets" if by["hqrs"]["peak_rss_bytes"] <= 2.5 * size else "MISSES"
        print(
            f"target peak RSS ≤ 2.5× checkpoint: hqrs {verdict} it "
            f"({by['hqrs']['peak_rss_bytes'] / size:.2f}×)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
