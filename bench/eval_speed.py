"""Zero-shot + retrieval throughput: hqrs.evaluation vs a straightforward clip_benchmark-style loop.

Same model (a random-init ViT-B/32-sized ``CLIPModel`` saved with the open_clip-equivalent processor),
same images (AID class folders and the UCM Karpathy test subset under ../shared/data/rs_real), same
templates. The baseline follows clip_benchmark's code structure: a DataLoader of processed images,
per-class prompt encoding padded to 77 tokens, captions encoded batch by batch next to their images.
Prints images/s for both and the ratio (hqrs / baseline, >= 1 is faster), and checks that top-1 and
R@k agree.

    python bench/eval_speed.py [--rs-real ../shared/data/rs_real] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def build_model(out: Path) -> Path:
    from transformers import CLIPConfig, CLIPModel

    from hqrs.modeling.open_clip_processing import build_clip_processor

    torch.manual_seed(0)
    CLIPModel(CLIPConfig()).eval().save_pretrained(out)  # ViT-B/32 sizes, 224 px
    build_clip_processor("ViT-B-32").save_pretrained(out)
    return out


def baseline_zeroshot(model, proc, data, templates, classnames, bs):
    from torch.utils.data import DataLoader

    from hqrs.evaluation.data import load_image

    with torch.no_grad():
        weights = []
        for c in classnames:  # clip_benchmark zero_shot_classifier: one class at a time
            tok = proc.tokenizer(
                [t.format(c) for t in templates], padding="max_length", max_length=77, return_tensors="pt"
            )
            e = torch.nn.functional.normalize(model.get_text_features(**tok).pooler_output, dim=-1).mean(0)
            weights.append(e / e.norm())
        w = torch.stack(weights, dim=1)
        ds = [
            (proc.image_processor(images=load_image(p), return_tensors="pt")["pixel_values"][0], y)
            for p, y in zip(data.images, data.labels)
        ]
        preds = []
        for x, _ in DataLoader(ds, batch_size=bs):
            f = torch.nn.functional.normalize(model.get_image_features(pixel_values=x).pooler_output, dim=-1)
            preds.append((100 * f @ w).argmax(1))
    pred = torch.cat(preds)
    return (pred == torch.tensor(data.labels)).float().mean().item() * 100


def baseline_retrieval(model, proc, paths, captions, bs):
    from hqrs.evaluation.data import load_image
    from hqrs.modeling.recall import retrieval_metrics

    img_emb, txt_emb, t2i = [], [], []
    with torch.no_grad():
        for s in range(0, len(paths), bs):  # clip_benchmark: images and their captions batch by batch
            x = torch.stack(
                [
                    proc.image_processor(images=load_image(p), return_tensors="pt")["pixel_values"][0]
                    for p in paths[s : s + bs]
                ]
            )
            texts = [c for caps in captions[s : s + bs] for c in caps]
            t2i += [s + i for i, caps in enumerate(captions[s : s + bs]) for _ in caps]
            tok = proc.tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt")
            img_emb.append(
                torch.nn.functional.normalize(model.get_image_features(pixel_values=x).pooler_output, dim=-1)
            )
            txt_emb.append(
                torch.nn.functional.normalize(model.get_text_features(**tok).pooler_output, dim=-1)
            )
    return retrieval_metrics(torch.cat(img_emb), torch.cat(txt_emb), t2i)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--rs-real", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/rs_real"
    )
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--num-workers", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from hqrs.evaluation.data import load_class_folder, load_karpathy, normalize_classname, resolve_images
    from hqrs.evaluation.encoders import DualEncoder
    from hqrs.evaluation.retrieval import evaluate_retrieval
    from hqrs.evaluation.zeroshot import evaluate_zeroshot, resolve_templates

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp) / "clip-b32")
        enc = DualEncoder.from_pretrained(
            model_dir, device="cpu", batch_size=args.batch_size, num_workers=args.num_workers
        )
        data = load_class_folder(args.rs_real / "aid_classification")
        _, templates = resolve_templates("clip_resisc45")
        classnames = [normalize_classname(c) for c in data.classnames]
        karpathy = args.rs_real / "ucm_captions/dataset_ucm_subset.json"
        entries = load_karpathy(karpathy, "test")
        paths = resolve_images(entries, args.rs_real / "ucm_captions/images")

        rows = []
        t = time.perf_counter()
        zs = evaluate_zeroshot(enc, data, templates)["metrics"]["top1_accuracy"]
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        zs_b = baseline_zeroshot(enc.model, enc.processor, data, templates, classnames, args.batch_size)
        t_base = time.perf_counter() - t
        rows.append(
            ("zero-shot AID (150 img, 30 cls x 18 prompts)", len(data), t_ours, t_base, abs(zs - zs_b) < 1e-6)
        )

        t = time.perf_counter()
        r = evaluate_retrieval(enc, karpathy, args.rs_real / "ucm_captions/images", "test")["metrics"]
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        r_b = baseline_retrieval(
            enc.model, enc.processor, paths, [e.captions for e in entries], args.batch_size
        )
        t_base = time.perf_counter() - t
        same = all(abs(r[k] - r_b[k]) < 1e-6 for k in r)
        rows.append(("retrieval UCM test (63 img, 315 captions)", len(paths), t_ours, t_base, same))

    print(f"{'task':48s} {'hqrs img/s':>11s} {'baseline img/s':>15s} {'ratio':>6s}  same metrics")
    for name, n, a, b, same in rows:
        print(f"{name:48s} {n / a:11.2f} {n / b:15.2f} {b / a:6.2f}  {same}")


if __name__ == "__main__":
    main()
