"""Training throughput and peak memory: `hqrs` Trainer path vs an open_clip-style training loop.

Targets (issue 6): Trainer samples/s >= 0.95x the open_clip loop, peak RSS <= 1.1x.

Both sides train the *same* tiny CLIP on the *same* data with the same batch size, step count,
optimizer (AdamW, open_clip's weight-decay exclusion of gains/biases/logit_scale), constant learning
rate, no gradient clipping, fp32 (``--bf16``: bf16 autocast on both), the same data-loader workers:

* ``open_clip`` — ``open_clip.create_model`` + its eval transform + its tokenizer, a plain PyTorch
  loop with ``open_clip.ClipLoss`` and the ``logit_scale`` clamp (what ``open_clip_train`` does per step).
* ``trainer``   — the weights converted to a transformers ``CLIPModel`` folder
  (``hqrs.modeling.convert_clip.convert_open_clip_clip`` + ``save_hf_clip``), trained by
  ``hqrs.modeling.training.build_trainer`` (``CLIPProcessor`` in the collator, a random caption per
  image and epoch, the loss from the model's forward).

The model is open_clip's ViT-B-32 layout scaled down (``--width``, ``--layers``, ``--image-size``),
registered with ``open_clip.add_model_config``; the data are the UCM-Captions images and captions of
``rs_real`` (a parquet file read the same way by both). Each measurement runs in a fresh subprocess
(so peak RSS ``ru_maxrss`` is its own), sides alternate ``--repeats`` times, the first ``--warmup``
steps are not timed, and the median is reported.

Usage::

    python bench/train_throughput.py [--rs-real ../shared/data/rs_real] [--batch-size 32] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NAME = "hqrs-bench-tiny-ViT"
REPO = Path(__file__).resolve().parents[1]


def _register(work: Path) -> None:
    import open_clip

    open_clip.add_model_config(work / f"{NAME}.json")


def prepare(args: argparse.Namespace, work: Path) -> None:
    """Tiny open_clip config + random-init weights, their HF conversion, and the parquet data."""
    import torch
    from datasets import Dataset, Features, Image, List, Value
    from safetensors.torch import save_file

    heads = max(1, args.width // 64)
    config = {
        "embed_dim": args.width,
        "vision_cfg": {
            "image_size": args.image_size,
            "layers": args.layers,
            "width": args.width,
            "patch_size": args.patch_size,
            "head_width": args.width // heads,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": args.width,
            "heads": heads,
            "layers": args.layers,
        },
    }
    (work / f"{NAME}.json").write_text(json.dumps(config))
    _register(work)
    import open_clip

    from hqrs.modeling.convert_clip import convert_open_clip_clip, save_hf_clip

    torch.manual_seed(0)
    model = open_clip.create_model(NAME, pretrained=None)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(work / "open_clip.safetensors"))
    save_hf_clip(convert_open_clip_clip(NAME, state), None, work / "hf")

    root = Path(args.rs_real) / "ucm_captions"
    entries = json.loads((root / "dataset_ucm_subset.json").read_text())["images"]
    rows = {
        "image": [
            {"bytes": (root / "images" / e["filename"]).read_bytes(), "path": e["filename"]} for e in entries
        ],
        "image_id": [e["filename"] for e in entries],
        "captions": [[s["raw"] for s in e["sentences"]] for e in entries],
    }
    features = Features({"image": Image(), "image_id": Value("string"), "captions": List(Value("string"))})
    Dataset.from_dict(rows, features=features).to_parquet(str(work / "data.parquet"))


def _dataset(work: Path):
    from datasets import load_dataset

    return load_dataset("parquet", data_files={"train": str(work / "data.parquet")}, split="train")


def _peak_rss() -> int:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) * 1024


def run_open_clip(args: argparse.Namespace, work: Path) -> dict:
    import math

    import numpy as np
    import open_clip
    import torch
    from safetensors.torch import load_file

    from hqrs.dataset_builder.imaging import decode_image

    _register(work)
    torch.manual_seed(args.seed)
    model = open_clip.create_model(NAME, pretrained=None, output_dict=True)
    model.load_state_dict(load_file(str(work / "open_clip.safetensors")))
    model.train()
    preprocess = open_clip.image_transform(model.visual.image_size, is_train=False)
    tokenizer = open_clip.get_tokenizer(NAME)
    rows = _dataset(work).cast_column("image", __import__("datasets").Image(decode=False))

    class Pairs(torch.utils.data.Dataset):
        epoch = 0

        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            row = rows[i]
            rng = np.random.default_rng([args.seed, self.epoch, i])
            caption = row["captions"][int(rng.integers(0, len(row["captions"])))]
            return preprocess(decode_image(row["image"])), tokenizer([caption])[0]

    data = Pairs()
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        drop_last=False,
        generator=torch.Generator().manual_seed(args.seed),
    )
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    named = list(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
            {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": args.weight_decay},
        ],
        lr=args.lr,
    )
    loss_fn = open_clip.ClipLoss()
    total = args.warmup + args.steps
    times, step, epoch = [], 0, 0
    while step < total:
        data.epoch = epoch
        for images, texts in loader:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                out = model(images, texts)
                loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
            times.append(time.perf_counter())
            if step >= total:
                break
        epoch += 1
    return {"seconds": times[-1] - times[args.warmup - 1], "loss": float(loss)}


def run_trainer(args: argparse.Namespace, work: Path) -> dict:
    from transformers import TrainerCallback

    from hqrs.modeling.training import build_trainer

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kwargs):
            times.append(time.perf_counter())

    trainer = build_trainer(
        "clip",
        work / "hf",
        _dataset(work),
        output_dir=work / "trainer_out",
        callbacks=[Clock()],
        training_args=dict(
            per_device_train_batch_size=args.batch_size,
            max_steps=args.warmup + args.steps,
            learning_rate=args.lr,
            weight_decay=args.weight_decay,
            lr_scheduler_type="constant",
            warmup_steps=0,
            max_grad_norm=0.0,
            optim="adamw_torch",
            bf16=args.bf16,
            dataloader_num_workers=args.workers,
            seed=args.seed,
            save_strategy="no",
            logging_steps=10_000,
            report_to=[],
            disable_tqdm=True,
            use_cpu=True,
        ),
    )
    result = trainer.train()
    return {"seconds": times[-1] - times[args.warmup - 1], "loss": result.training_loss}


def child(args: argparse.Namespace) -> None:
    work = Path(args.work)
    out = run_trainer(args, work) if args.child == "trainer" else run_open_clip(args, work)
    out["samples_per_s"] = args.steps * args.batch_size / out["seconds"]
    out["peak_rss_bytes"] = _peak_rss()
    print("RESULT " + json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rs-real", default=str(REPO.parent / "shared" / "data" / "rs_real"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="data-loader workers (both sides)")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides")
    parser.add_argument("--child", choices=("trainer", "open_clip"), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    with tempfile.TemporaryDirectory(prefix="hqrs-train-bench-") as tmp:
        work = Path(tmp)
        prepare(args, work)
        passthrough = [a for a in sys.argv[1:]]
        results: dict[str, list[dict]] = {"trainer": [], "open_clip": []}
        for _ in range(args.repeats):
            for side in ("open_clip", "trainer"):
                proc = subprocess.run(
                    [sys.executable, __file__, *passthrough, "--child", side, "--work", str(work)],
                    capture_output=True,
                    text=True,
                    env=dict(os.environ, TOKENIZERS_PARALLELISM="false"),
                )
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if proc.returncode != 0 or line is None:
                    sys.exit(f"{side} run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
                results[side].append(json.loads(line[len("RESULT ") :]))
                print(
                    f"{side:9s} {results[side][-1]['samples_per_s']:8.1f} samples/s  "
                    f"peak RSS {results[side][-1]['peak_rss_bytes'] / 2**20:7.0f} MiB",
                    flush=True,
                )

    def med(side: str, key: str) -> float:
        return statistics.median(r[key] for r in results[side])

    speed = med("trainer", "samples_per_s") / med("open_clip", "samples_per_s")
    memory = med("trainer", "peak_rss_bytes") / med("open_clip", "peak_rss_bytes")
    summary = {
        "model": f"{NAME}: width {args.width}, layers {args.layers}, image {args.image_size}/{args.patch_size}",
        "batch_size": args.batch_size,
        "timed_steps": args.steps,
        "workers": args.workers,
        "precision": "bf16 autocast" if args.bf16 else "fp32",
        "device": "cpu",
        "open_clip_samples_per_s": round(med("open_clip", "samples_per_s"), 2),
        "trainer_samples_per_s": round(med("trainer", "samples_per_s"), 2),
        "open_clip_peak_rss_mib": round(med("open_clip", "peak_rss_bytes") / 2**20, 1),
        "trainer_peak_rss_mib": round(med("trainer", "peak_rss_bytes") / 2**20, 1),
        "speed_ratio": round(speed, 3),
        "speed_target": ">= 0.95",
        "speed_ok": speed >= 0.95,
        "rss_ratio": round(memory, 3),
        "rss_target": "<= 1.1",
        "rss_ok": memory <= 1.1,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
