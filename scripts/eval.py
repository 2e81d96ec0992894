"""``hqrs eval``: zero-shot classification, image-text retrieval, caption metrics and dataset quality.

Every sub-command prints its metrics and writes a results JSON (schema ``hqrs-eval/1``, see
:mod:`hqrs.evaluation.results`) that the model-card tooling turns into ``model-index``.
"""

from __future__ import annotations

import argparse
import json
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
        "--trust-remote-code",
        action="store_true",
        help="allow the model code in the folder (ResNet-CLIP); RS-CoCa folders load with hqrs' own classes",
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
        description="Evaluate models (zero-shot, retrieval, captions, SeLo, benchmark suites) and datasets.",
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
        help="class folder (DIR or folder:DIR), a folder written by `hqrs build --format parquet`, datasets "
        "folder or parquet",
    )
    z.add_argument(
        "--templates", default=None, help="template set name (see zeroshot_templates.yaml) or a file"
    )
    z.add_argument("--image-column", default="image")
    z.add_argument("--label-column", default=None)
    z.add_argument(
        "--split",
        default=None,
        help="split of a datasets / hqrs build folder (default: test if present, else the only one; 'all' "
        "joins them); a class folder has none",
    )
    z.add_argument(
        "--config",
        default=None,
        help="config of a folder whose README.md declares configs (hqrs build: default, full, pairs; "
        "default: 'default')",
    )
    z.add_argument("--dataset-name", default=None, help="name for the results (default: folder name)")
    _out_arg(z)
    z.add_argument(
        "--confusion-png",
        type=Path,
        default=None,
        metavar="PNG",
        help="confusion-matrix plot (default: next to --out as <out>_confusion.png; none when --out is "
        "not a regular file, e.g. /dev/null)",
    )
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

    s = leaf_parser(
        sub,
        "selo",
        parents,
        help="semantic localization (SeLo) on AIR-SLT: Rsu, Ras, Rda, Rmi",
        description="Semantic localization as in the HQRS paper (AIR-SLT protocol of Yuan et al.): "
        "multi-scale tiles (256/512/768 px) scored against each caption give a probability map, scored "
        "by Rsu (salient-area proportion, higher is better), Ras (attention shift, lower is better), "
        "Rda (attention dispersion, higher is better) and Rmi = 0.4 Rsu + 0.35 (1 - Ras) + 0.25 Rda.",
    )
    _model_args(s)
    s.add_argument(
        "--dataset",
        required=True,
        type=Path,
        metavar="DIR",
        help="AIR-SLT folder: annotations/anno.json + imgs/ (or its parent holding AIR-SLT/)",
    )
    s.add_argument("--dataset-name", default=None, help="name for the results (default: AIR-SLT)")
    _out_arg(s)
    s.set_defaults(func=run_selo)

    u = leaf_parser(
        sub,
        "suite",
        parents,
        help="run a named benchmark suite over the datasets you have locally",
        description="Run every entry of a suite (zero-shot, retrieval, SeLo; see hqrs/evaluation/"
        "eval_suites.yaml, or give a suite .yaml) whose files exist under --data-root, skip the others "
        "with the reason, print the paper-style table with the suite's cited reference rows, and write "
        "one suite results JSON for `hqrs push model --results`. A rerun reuses finished entries.",
    )
    u.add_argument("suite", metavar="SUITE", help="suite name (hqrs-paper, rs-real) or a suite .yaml file")
    _model_args(u)
    u.add_argument(
        "--data-root", type=Path, required=True, metavar="DIR", help="folder the suite's dataset paths are in"
    )
    u.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder for entry results and suite.json (default: eval_results/suite-<suite>-<model>)",
    )
    u.add_argument("--rerun", action="store_true", help="run finished entries again instead of reusing them")
    u.set_defaults(func=run_suite)

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
        "--split", default=None, help="split of a datasets / hqrs build folder (default: all splits)"
    )
    d.add_argument("--config", default=None, help="config of an hqrs build folder (default: 'default')")
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

    if getattr(args, "encoder", None) is not None:  # loaded once by `hqrs eval suite`
        return args.encoder
    return DualEncoder.from_pretrained(
        args.model,
        device=args.device,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
    )


def _model_info(enc, path: Path) -> dict:
    from hqrs.evaluation.results import model_identity

    return model_identity(path, enc.model)


def _default_out(args, task: str, model: str, data: str) -> Path:
    return args.out or Path("eval_results") / f"{task}-{_slug(model)}-{_slug(data)}.json"


def _is_plain_file_path(path: Path) -> bool:
    """``path`` is (or will be) a regular file, not a device such as ``/dev/null`` or a FIFO."""
    return not path.exists() or path.is_file()


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
    data = load_classification(args.dataset, args.image_column, args.label_column, args.split, args.config)
    for item in data.skipped:
        logger.warning("skipped %s: %s", item["file"], item["reason"])
    enc = _encoder(args)
    res = evaluate_zeroshot(enc, data, templates)
    name = args.dataset_name or data.name
    out = _default_out(args, "zeroshot", enc.name, name)
    png = None
    if args.confusion_png is not None or _is_plain_file_path(out):
        png = confusion_matrix_png(
            res["confusion_matrix"],
            list(data.classnames),
            args.confusion_png or out.with_name(out.stem + "_confusion.png"),
            f"{enc.name} on {name}",
        )
    else:
        logger.warning("--out %s is not a regular file: no confusion-matrix PNG (give --confusion-png)", out)
    result = make_result(
        "zero-shot-image-classification",
        res["metrics"],
        {
            "name": name,
            "type": _slug(name).lower(),
            "split": data.split,
            "config": data.config,
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
            "confusion_png": str(png) if png else None,
        },
    )
    write_result(result, out)
    _print_metrics(
        f"zero-shot {enc.name} on {name} ({len(data)} images, {len(data.classnames)} classes)", res["metrics"]
    )
    print(f"results: {out}" + (f"\nconfusion matrix: {png}" if png else ""))
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


def _entry_args(args, entry: dict, data_root: Path, out: Path) -> argparse.Namespace:
    """The namespace `hqrs eval <task>` would parse for one suite entry."""
    common = {k: getattr(args, k) for k in ("model", "trust_remote_code", "device", "dtype", "batch_size")}
    common.update(num_workers=args.num_workers, encoder=args.encoder, dataset_name=entry["name"], out=out)
    if entry["task"] == "zeroshot":
        return argparse.Namespace(
            **common,
            dataset=str(data_root / entry["dataset"]),
            templates=entry.get("templates"),
            image_column="image",
            label_column=None,
            split=entry.get("split"),
            config=None,
            confusion_png=None,
        )
    if entry["task"] == "retrieval":
        return argparse.Namespace(
            **common,
            karpathy=data_root / entry["karpathy"],
            images=data_root / entry["images"],
            split=entry.get("split", "test"),
        )
    return argparse.Namespace(**common, dataset=data_root / entry["dataset"])


def run_suite(args) -> int:

    from hqrs.evaluation.results import model_identity
    from hqrs.evaluation.suite import (
        SUITE_SCHEMA,
        build_table,
        entry_key,
        format_table,
        load_suite,
        missing_inputs,
    )

    suite = load_suite(args.suite)
    if not args.data_root.is_dir():
        raise FileNotFoundError(f"--data-root {str(args.data_root)!r} is not a folder")
    identity = model_identity(args.model)
    out_dir = args.out_dir or Path("eval_results") / f"suite-{_slug(suite['name'])}-{_slug(identity['name'])}"
    runners = {"zeroshot": run_zeroshot, "retrieval": run_retrieval, "selo": run_selo}
    args.encoder = None
    results: dict[str, dict] = {}
    skipped: list[dict[str, str]] = []
    failed = 0
    n = len(suite["entries"])
    for i, entry in enumerate(suite["entries"], 1):
        name = entry["name"]
        why = missing_inputs(entry, args.data_root)
        if why:
            print(f"[{i}/{n}] {name}: skipped, {why}")
            skipped.append({"entry": name, "reason": why})
            continue
        out = out_dir / "entries" / f"{_slug(name)}.json"
        key = entry_key(entry, args.data_root, identity["weights_sha256"])
        if out.is_file() and not args.rerun:
            try:
                previous = json.loads(out.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                previous = {}
            if (previous.get("details") or {}).get("suite_entry_key") == key:
                print(f"[{i}/{n}] {name}: reused {out}")
                results[name] = previous
                continue
        print(f"[{i}/{n}] {name}: {entry['task']} ...")
        if args.encoder is None:
            args.encoder = _encoder(argparse.Namespace(**{**vars(args), "encoder": None}))
        try:
            runners[entry["task"]](_entry_args(args, entry, args.data_root, out))
        except (ValueError, OSError) as exc:
            print(f"[{i}/{n}] {name}: failed, {exc}")
            skipped.append({"entry": name, "reason": f"failed: {exc}"})
            failed += 1
            continue
        result = json.loads(out.read_text(encoding="utf-8"))
        result["details"]["suite_entry_key"] = key
        out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        results[name] = result
    table = build_table(suite, identity["name"], results)
    print()
    print(f"suite {suite['name']}: {len(results)} of {n} entries ({len(skipped)} skipped)")
    print(format_table(table))
    summary = {
        "schema": SUITE_SCHEMA,
        "suite": suite["name"],
        "description": suite["description"],
        "model": identity,
        "data_root": str(args.data_root.resolve()),
        "results": [results[e["name"]] for e in suite["entries"] if e["name"] in results],
        "skipped": skipped,
        "references": suite["references"],
        "table": table,
    }
    path = out_dir / "suite.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"results: {path}")
    return 1 if failed else 0


def run_selo(args) -> int:
    from hqrs.evaluation.results import make_result, write_result
    from hqrs.evaluation.selo import DEFAULT, evaluate_selo, load_air_slt

    data = load_air_slt(args.dataset)  # checked before the model loads
    enc = _encoder(args)
    res = evaluate_selo(enc, data)
    name = args.dataset_name or "AIR-SLT"
    out = _default_out(args, "selo", enc.name, name)
    result = make_result(
        "semantic-localization",
        res["metrics"],
        {
            "name": name,
            "type": _slug(name).lower(),
            "split": "test",
            "path": str(data.root.resolve()),
            "num_images": data.num_images,
            "num_texts": len(data.samples),
        },
        {
            "reference": "Yuan et al., Learning to Evaluate Performance of Multi-modal Semantic Localization "
            "(SemanticLocalizationMetrics); map generation as in the HQRS authors' SeLo_test_and_save.py",
            "scales": list(DEFAULT.scales),
            "tile_size": DEFAULT.tile_size,
            "median_ksize": DEFAULT.median_ksize,
            "rmi_weights": {"Rsu": 0.4, "1-Ras": 0.35, "Rda": 0.25},
            "direction": {"Rsu": "higher", "Ras": "lower", "Rda": "higher", "Rmi": "higher"},
            "range": "0..1",
        },
        _model_info(enc, args.model),
        {"per_sample": res["per_sample"]},
    )
    write_result(result, out)
    _print_metrics(
        f"SeLo {enc.name} on {name} ({len(data.samples)} samples, {data.num_images} images)", res["metrics"]
    )
    print(f"results: {out}")
    return 0


def _generate_captions(args, entries) -> tuple[dict[str, str], str]:
    import torch
    from transformers import AutoModel, AutoProcessor

    from hqrs.evaluation.data import load_image, resolve_images

    paths = resolve_images(entries, args.images)
    from hqrs.modeling.families import register_auto_classes

    register_auto_classes()  # RS-CoCa folders load with hqrs' classes, never the folder's code
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
    return preds, type(model).__name__


def run_captions(args) -> int:
    from hqrs.dataset_builder.io import load_json_utf8
    from hqrs.evaluation.coco_caption import (
        SPICE_UNAVAILABLE,
        karpathy_references,
        normalize_metrics,
        score_captions,
    )
    from hqrs.evaluation.data import load_karpathy
    from hqrs.evaluation.results import make_result, model_identity, write_result

    metrics = normalize_metrics(args.metrics)  # fails early on SPICE / unknown names
    model_info = None
    if args.model is not None:
        if args.karpathy is None or args.images is None:
            raise ValueError("--model needs --karpathy JSON and --images DIR (the split to caption)")
        if args.predictions is not None:
            raise ValueError("give either --model (caption first) or --predictions, not both")
        entries = load_karpathy(args.karpathy, None if args.split == "all" else args.split)
        refs = {e.filename: e.captions for e in entries}
        preds, model_class = _generate_captions(args, entries)
        model_info = model_identity(args.model)
        model_info["class"] = model_class
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

    data = load_dataset_captions(
        args.path, args.caption_column, images=args.model is not None, split=args.split, config=args.config
    )
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
            "split": data.split,
            "config": data.config,
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
