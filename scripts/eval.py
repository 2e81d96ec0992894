"""``hqrs eval``: zero-shot classification, image-text retrieval, caption metrics and dataset quality.

Every sub-command prints its metrics and writes a results JSON (schema ``hqrs-eval/1``, see
:mod:`hqrs.evaluation.results`) that the model-card tooling turns into ``model-index``.
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

from .cli import leaf_parser

logger = logging.getLogger("hqrs.eval")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def _model_args(
    p: argparse.ArgumentParser,
    required: bool = True,
    flag: str = "--model",
    help: str = "saved model folder (model + processor)",
) -> None:
    g = p.add_argument_group("model")
    g.add_argument(flag, dest="model", type=Path, required=required, metavar="DIR", help=help)
    g.add_argument(
        "--trust-remote-code", action="store_true", help="allow custom model code in the folder (RS-CoCa)"
    )
    g.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    g.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    g.add_argument(
        "--num-workers", type=int, default=None, help="image-loading workers (default: min(4, cores-1))"
    )


def _out_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="JSON",
        help="results JSON (default: eval_results/<task>-<model>-<data>.json)",
    )


def _karpathy_args(p: argparse.ArgumentParser, required: bool) -> None:
    """``--karpathy/--images/--split/--dataset-name`` of the commands that read a Karpathy split."""
    p.add_argument(
        "--karpathy",
        type=Path,
        required=required,
        metavar="JSON",
        help="Karpathy-style caption file (the references, and the images to encode or caption)",
    )
    p.add_argument(
        "--images", type=Path, required=required, metavar="DIR", help="folder the Karpathy filenames are in"
    )
    p.add_argument("--split", default="test", help="Karpathy split to evaluate ('all' for every image)")
    p.add_argument("--dataset-name", default=None, help="name for the results (default: the file's name)")


def register(subparsers, parents) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate models and datasets",
        description="Evaluate models (zero-shot, retrieval, captions) and datasets.",
    )
    sub = p.add_subparsers(dest="eval_command", metavar="SUBCOMMAND", required=True)

    z = leaf_parser(
        sub,
        "zeroshot",
        parents,
        help="zero-shot scene classification",
        description="Zero-shot classification with prompt-template ensembles: top-1/top-5, per-class accuracy, "
        "confusion-matrix PNG.",
    )
    _model_args(z)
    z.add_argument(
        "--dataset",
        required=True,
        metavar="SPEC",
        help="class folder (DIR or folder:DIR), datasets folder or parquet",
    )
    z.add_argument(
        "--templates", default=None, help="template set name (see zeroshot_templates.yaml) or a file"
    )
    z.add_argument("--image-column", default="image")
    z.add_argument("--label-column", default=None)
    z.add_argument("--split", default=None, help="split of a DatasetDict")
    z.add_argument("--dataset-name", default=None, help="name for the results (default: folder name)")
    _out_arg(z)
    z.set_defaults(func=run_zeroshot)

    r = leaf_parser(
        sub,
        "retrieval",
        parents,
        help="image-text retrieval R@1/5/10",
        description="Image→text and text→image recall@k (clip_benchmark semantics, percent) on a Karpathy split.",
    )
    _model_args(r)
    _karpathy_args(r, required=True)
    _out_arg(r)
    r.set_defaults(func=run_retrieval)

    c = leaf_parser(
        sub,
        "captions",
        parents,
        help="caption metrics (coco-caption BLEU/METEOR/ROUGE-L/CIDEr)",
        description="Score predicted captions against references exactly like pycocoevalcap. Give --predictions "
        "and --references, or --model with --karpathy/--images to caption the split first.",
    )
    c.add_argument("--predictions", type=Path, metavar="P.json", help="{image_id: caption}")
    c.add_argument(
        "--references", type=Path, metavar="R.json", help="{image_id: [captions]} or a Karpathy file"
    )
    _model_args(c, required=False)
    _karpathy_args(c, required=False)
    c.add_argument("--max-new-tokens", type=int, default=40)
    c.add_argument("--metrics", nargs="+", default=None, help="subset of BLEU METEOR ROUGE_L CIDEr")
    _out_arg(c)
    c.set_defaults(func=run_captions)

    d = leaf_parser(
        sub,
        "dataset",
        parents,
        help="quality statistics of a built dataset",
        description="Caption lengths, vocabulary, distinct-n, CLIPScore (with --clip-model) and MpGI fact "
        "consistency; writes JSON and PNG plots.",
    )
    d.add_argument(
        "path",
        type=Path,
        metavar="DIR",
        help="MpGI run dir / JSONL, hqrs build folder, datasets folder or parquet",
    )
    _model_args(
        d, required=False, flag="--clip-model", help="model folder for CLIPScore (HQRS-CLIP or RS-CoCa)"
    )
    d.add_argument("--caption-column", default=None)
    d.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="folder for JSON + PNGs (default: eval_results/dataset-<name>)",
    )
    d.set_defaults(func=run_dataset)


# ------------------------------------------------------------------------------------------- helpers


def _encoder(args):
    from hqrs.evaluation.encoders import DualEncoder

    return DualEncoder.from_pretrained(
        args.model,
        device=args.device,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
    )


def _model_info(enc, path: Path) -> dict:
    return {"name": path.name, "path": str(path.resolve()), "class": type(enc.model).__name__}


def _default_out(args, task: str, model: str, data: str) -> Path:
    return args.out or Path("eval_results") / f"{task}-{_slug(model)}-{_slug(data)}.json"


def _print_metrics(title: str, metrics: dict) -> None:
    print(title)
    for k, v in metrics.items():
        print(f"  {k:28s} {v:.4f}" if isinstance(v, float) else f"  {k:28s} {v}")


# ---------------------------------------------------------------------------------------------- runs


def run_zeroshot(args) -> int:
    from hqrs.evaluation.data import load_classification
    from hqrs.evaluation.plots import confusion_matrix_png
    from hqrs.evaluation.results import make_result, write_result
    from hqrs.evaluation.zeroshot import evaluate_zeroshot, resolve_templates

    set_name, templates = resolve_templates(args.templates)
    data = load_classification(args.dataset, args.image_column, args.label_column, args.split)
    for item in data.skipped:
        logger.warning("skipped %s: %s", item["file"], item["reason"])
    enc = _encoder(args)
    res = evaluate_zeroshot(enc, data, templates)
    name = args.dataset_name or data.name
    out = _default_out(args, "zeroshot", enc.name, name)
    png = confusion_matrix_png(
        res["confusion_matrix"],
        list(data.classnames),
        out.with_name(out.stem + "_confusion.png"),
        f"{enc.name} on {name}",
    )
    result = make_result(
        "zero-shot-image-classification",
        res["metrics"],
        {
            "name": name,
            "type": _slug(name).lower(),
            "split": args.split,
            "path": str(Path(str(args.dataset).removeprefix("folder:").split("?")[0]).resolve()),
            "num_images": len(data),
            "num_classes": len(data.classnames),
            "skipped_files": data.skipped,
        },
        {
            "templates": set_name,
            "template_list": templates,
            "ensemble": "mean of normalised prompt embeddings",
            "classnames": res["prompt_classnames"],
        },
        _model_info(enc, args.model),
        {
            "per_class_accuracy": res["per_class_accuracy"],
            "confusion_matrix": res["confusion_matrix"],
            "confusion_png": str(png),
        },
    )
    write_result(result, out)
    _print_metrics(
        f"zero-shot {enc.name} on {name} ({len(data)} images, {len(data.classnames)} classes)", res["metrics"]
    )
    print(f"results: {out}\nconfusion matrix: {png}")
    return 0


def run_retrieval(args) -> int:
    from hqrs.evaluation.results import make_result, write_result
    from hqrs.evaluation.retrieval import DEFAULT_KS, evaluate_retrieval

    split = None if args.split == "all" else args.split
    enc = _encoder(args)
    res = evaluate_retrieval(enc, args.karpathy, args.images, split)
    name = args.dataset_name or args.karpathy.stem
    out = _default_out(args, "retrieval", enc.name, name)
    result = make_result(
        "image-text-retrieval",
        res["metrics"],
        {
            "name": name,
            "type": _slug(name).lower(),
            "split": args.split,
            "path": str(args.karpathy.resolve()),
            "num_images": res["num_images"],
            "num_texts": res["num_texts"],
        },
        {
            "ks": list(DEFAULT_KS),
            "similarity": "cosine",
            "hit": "any positive in top-k (clip_benchmark recall_at_k > 0)",
            "unit": "percent",
            "mean_recall": "mean of the six R@k",
        },
        _model_info(enc, args.model),
    )
    write_result(result, out)
    _print_metrics(
        f"retrieval {enc.name} on {name} ({res['num_images']} images, {res['num_texts']} captions)",
        res["metrics"],
    )
    print(f"results: {out}")
    return 0


def _generate_captions(args, entries) -> dict[str, str]:
    import torch
    from transformers import AutoModel, AutoProcessor

    from hqrs.evaluation.data import load_image, resolve_images

    paths = resolve_images(entries, args.images)
    from hqrs.modeling.rs_coca_files import register_rs_coca_auto_classes  # models branch (#12.4)

    register_rs_coca_auto_classes()  # RS-CoCa folders load with hqrs' classes, never the folder's code
    model = AutoModel.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    if not callable(getattr(model, "generate", None)):
        raise ValueError(f"model in {str(args.model)!r} ({type(model).__name__}) cannot generate captions")
    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    preds: dict[str, str] = {}
    with torch.inference_mode():
        for start in range(0, len(paths), args.batch_size):
            batch = paths[start : start + args.batch_size]
            inputs = processor(images=[load_image(p) for p in batch], return_tensors="pt").to(device)
            ids = model.generate(**inputs, max_new_tokens=args.max_new_tokens)
            texts = processor.batch_decode(ids, skip_special_tokens=True)
            for e, t in zip(entries[start : start + len(batch)], texts):
                preds[e.filename] = t.strip()
    empty = [k for k, v in preds.items() if not v]
    if empty:
        raise ValueError(
            f"the model generated an empty caption for {len(empty)} image(s), e.g. {empty[:5]}; check the "
            "checkpoint or its generation_config.json (min_new_tokens)"
        )
    return preds


def run_captions(args) -> int:
    from hqrs.evaluation.coco_caption import (
        SPICE_UNAVAILABLE,
        karpathy_references,
        load_json_utf8,
        normalize_metrics,
        score_captions,
    )
    from hqrs.evaluation.data import load_karpathy
    from hqrs.evaluation.results import make_result, write_result

    metrics = normalize_metrics(args.metrics)  # fails early on SPICE / unknown names
    model_info = None
    if args.model is not None:
        if args.karpathy is None or args.images is None:
            raise ValueError("--model needs --karpathy JSON and --images DIR (the split to caption)")
        if args.predictions is not None:
            raise ValueError("give either --model (caption first) or --predictions, not both")
        entries = load_karpathy(args.karpathy, None if args.split == "all" else args.split)
        refs = {e.filename: e.captions for e in entries}
        preds = _generate_captions(args, entries)
        model_info = {"name": args.model.name, "path": str(args.model.resolve()), "class": None}
        name = args.dataset_name or args.karpathy.stem
    else:
        if args.predictions is None or (args.references is None and args.karpathy is None):
            raise ValueError(
                "give --predictions P.json and --references R.json (or --karpathy JSON), or --model"
            )
        preds = load_json_utf8(args.predictions, "predictions")
        if not isinstance(preds, dict):
            raise ValueError(
                f"predictions file {str(args.predictions)!r} must hold a JSON object {{image_id: caption}}"
            )
        ref_path = args.references or args.karpathy
        ref_data = load_json_utf8(ref_path, "references")
        if isinstance(ref_data, dict) and isinstance(ref_data.get("images"), list):
            refs = karpathy_references(ref_data, None if args.split == "all" else args.split)
        elif isinstance(ref_data, dict):
            refs = ref_data
        else:
            raise ValueError(
                f"references file {str(ref_path)!r} must hold {{image_id: [captions]}} or a Karpathy file"
            )
        name = args.dataset_name or ref_path.stem
    scores = score_captions(preds, refs, metrics)
    out = _default_out(args, "captions", model_info["name"] if model_info else args.predictions.stem, name)
    result = make_result(
        "image-to-text",
        scores.corpus,
        {
            "name": name,
            "type": _slug(name).lower(),
            "split": args.split if args.karpathy else None,
            "num_images": len(scores.ids),
        },
        {
            "implementation": "coco-caption (pycocoevalcap) definitions",
            "tokenizer": "Stanford PTBTokenizer 3.4.1, lower-cased, punctuation removed",
            "metrics": list(metrics),
            "CIDEr": "coco-caption CIDEr = CIDEr-D (sigma 6, clipped, x10)",
            "SPICE": SPICE_UNAVAILABLE,
        },
        model_info,
        {"per_image": {k: dict(zip(scores.ids, v)) for k, v in scores.per_item.items()}},
    )
    if args.model is not None:
        result["details"]["predictions"] = preds
    write_result(result, out)
    _print_metrics(f"captions on {name} ({len(scores.ids)} images)", scores.corpus)
    print(f"results: {out}")
    return 0


def run_dataset(args) -> int:
    from hqrs.evaluation.dataset_quality import evaluate_dataset, load_dataset_captions
    from hqrs.evaluation.plots import histogram_png
    from hqrs.evaluation.results import make_result, write_result

    data = load_dataset_captions(args.path, args.caption_column, images=args.model is not None)
    encoder = _encoder(args) if args.model is not None else None
    model_info = _model_info(encoder, args.model) if encoder is not None else None
    res = evaluate_dataset(data, encoder)
    out_dir = args.out_dir or Path("eval_results") / f"dataset-{_slug(data.name)}"
    lengths = res["text"].pop("_lengths")
    plots = {
        "caption_length": str(
            histogram_png(lengths, out_dir / "caption_length.png", "caption length (words)", xlabel="words")
        )
    }
    clip_scores = res["clip_score"].pop("_scores", None)
    if clip_scores:
        plots["clip_score"] = str(
            histogram_png(clip_scores, out_dir / "clip_score.png", "CLIPScore", xlabel="2.5 * max(cos, 0)")
        )
    t = res["text"]
    metrics = {
        "num_captions": t["num_captions"],
        "mean_caption_length_words": t["length_words"]["mean"],
        "vocabulary_size": t["vocabulary_size"],
        **{f"distinct_{n}": t[f"distinct_{n}"] for n in range(1, 5)},
        "clip_score": res["clip_score"].get("mean"),
        "fact_consistency_rate": res["fact_consistency"].get("rate"),
    }
    result = make_result(
        "dataset-quality",
        metrics,
        {
            "name": data.name,
            "type": "image-caption",
            "split": None,
            "path": str(args.path.resolve()),
            "num_images": len({it.image_key for it in data.items}),
        },
        {
            "tokenisation": "lower-cased [a-z0-9] words",
            "clip_score": "Hessel et al. 2021, w=2.5",
            "fact_consistency": "captions the MpGI fact filter accepts (check_caption on rule_facts)",
        },
        model_info,
        {**res, "plots": plots},
    )
    path = write_result(result, out_dir / "dataset_quality.json")
    _print_metrics(f"dataset {data.name}", {k: v for k, v in metrics.items() if v is not None})
    print(f"results: {path}")
    return 0
