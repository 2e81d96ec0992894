"""Model and dataset cards rendered from the templates in ``hub_cards/templates`` and from results.

Cards are never hand-edited: :func:`render_model_card` and :func:`render_dataset_card` build them with
huggingface_hub's :class:`~huggingface_hub.ModelCard` / :class:`~huggingface_hub.DatasetCard`
``from_template`` and card-data classes, so the YAML header always parses into those types.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

PAPER_CITATION = """@article{he2025mpgi,
  title   = {Enhancing Remote Sensing Vision-Language Models Through MLLM and LLM-Based High-Quality Image-Text Dataset Generation},
  author  = {He, Yiguo and Zhu, Junjie and Li, Yiying and Zhang, Xiaoyu and Qiu, Chunping and Wang, Jun and Huang, Qiangjuan and Yang, Ke},
  journal = {arXiv preprint arXiv:2507.16716},
  year    = {2025}
}"""

RS_TAGS = ["remote-sensing", "earth-observation", "aerial-imagery", "vision-language", "hqrs", "mpgi"]

# The placeholder every usage snippet loads from; the dry-run test swaps it for the staged folder.
REPO_PLACEHOLDER = "{repo_id}"


@dataclass(frozen=True)
class ModelKind:
    """What differs between the model families we publish."""

    model_type: str  # config.json "model_type"
    display: str
    pipeline_tag: str
    architecture: str
    summary: str
    usage: str
    remote_files: tuple[str, ...] = ()  # remote-code modules copied from hqrs.modeling
    tags: tuple[str, ...] = ()


MODEL_KINDS: dict[str, ModelKind] = {
    "clip": ModelKind(
        model_type="clip",
        display="HQRS-CLIP",
        pipeline_tag="zero-shot-image-classification",
        architecture="CLIP (transformers `CLIPModel`): ViT image encoder, causal text encoder, contrastive heads",
        summary=(
            "A CLIP model fine-tuned on MpGI captions of remote-sensing images, for zero-shot scene "
            "classification and image-text retrieval. It loads with plain transformers (no remote code)."
        ),
        usage=f"""from PIL import Image
from transformers import pipeline

classifier = pipeline("zero-shot-image-classification", model="{REPO_PLACEHOLDER}")
image = Image.open("scene.jpg").convert("RGB")  # any RGB remote-sensing image
labels = ["airport", "farmland", "harbor", "residential area"]
print(classifier(image, candidate_labels=labels, hypothesis_template="a satellite image of {{}}."))""",
        tags=("clip", "zero-shot-image-classification"),
    ),
    "rs_coca": ModelKind(
        model_type="rs_coca",
        display="RS-CoCa",
        pipeline_tag="image-text-to-text",
        architecture=(
            "CoCa: ViT image encoder with attentional pooling, causal text encoder and a multimodal "
            "text decoder with cross-attention (contrastive + captioning heads)"
        ),
        summary=(
            "A CoCa model fine-tuned on MpGI captions of remote-sensing images: it writes captions with "
            "`generate()` and embeds images and texts for retrieval."
        ),
        usage=f"""from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained("{REPO_PLACEHOLDER}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{REPO_PLACEHOLDER}", trust_remote_code=True)
image = Image.open("scene.jpg").convert("RGB")  # any RGB remote-sensing image
inputs = processor(images=image, return_tensors="pt")
tokens = model.generate(**inputs)  # beam search, 3 beams (generation_config.json)
print(processor.batch_decode(tokens)[0])

# image and text embeddings for retrieval: model.get_image_features / model.get_text_features""",
        remote_files=("configuration_rs_coca.py", "modeling_rs_coca.py", "processing_rs_coca.py"),
        tags=("coca", "image-captioning", "custom_code"),
    ),
    # -- ResNet-CLIP (HQRS-CLIP RN50 / RN101, open_clip ModifiedResNet): hqrs remote code ---------------------
    "resnet_clip": ModelKind(
        model_type="resnet_clip",
        display="HQRS-CLIP (ResNet)",
        pipeline_tag="zero-shot-image-classification",
        architecture=(
            "CLIP with a ModifiedResNet image encoder (3-convolution stem, anti-aliased bottleneck stages, "
            "attention pooling; open_clip RN50/RN101) and a causal text encoder, contrastive heads"
        ),
        summary=(
            "A ResNet CLIP model fine-tuned on MpGI captions of remote-sensing images, for zero-shot scene "
            "classification and image-text retrieval. It loads with transformers and trust_remote_code=True."
        ),
        usage=f"""from PIL import Image
from transformers import pipeline

classifier = pipeline("zero-shot-image-classification", model="{REPO_PLACEHOLDER}", trust_remote_code=True)
image = Image.open("scene.jpg").convert("RGB")  # any RGB remote-sensing image
labels = ["airport", "farmland", "harbor", "residential area"]
print(classifier(image, candidate_labels=labels, hypothesis_template="a satellite image of {{}}."))""",
        remote_files=("configuration_resnet_clip.py", "modeling_resnet_clip.py", "processing_resnet_clip.py"),
        tags=("clip", "zero-shot-image-classification", "custom_code"),
    ),
}

LIMITATIONS = (
    "Trained on remote-sensing imagery with machine-generated (MpGI) captions: captions can still contain "
    "errors the fact-consistency filter did not catch, counts of small objects are unreliable, and the model "
    "has not been evaluated outside optical RGB imagery (SAR, multispectral bands, oblique views). Source "
    "imagery licences restrict commercial use of the training data."
)


def _template(name: str) -> str:
    return resources.files("hqrs.hub_cards").joinpath("templates", name).read_text(encoding="utf-8")


def model_kind(model_dir: str | Path) -> ModelKind:
    """The :class:`ModelKind` of a saved model folder, from its ``config.json``."""
    config_path = Path(model_dir) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} not found: {str(model_dir)!r} is not a saved transformers model folder"
        )
    try:
        model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type")
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_path} is not valid JSON: {exc}") from None
    if model_type not in MODEL_KINDS:
        raise ValueError(
            f"{config_path}: model_type {model_type!r} is not publishable by hqrs; expected one of {sorted(MODEL_KINDS)}"
        )
    return MODEL_KINDS[model_type]


def load_eval_results(paths: list[str | Path]) -> list:
    """Read ``hqrs eval`` result JSON files (schema ``hqrs-eval/1``) into huggingface_hub ``EvalResult``s.

    Each metric of each file becomes one ``EvalResult``; together they fill the card's ``model-index``.
    The mapping is :func:`hqrs.evaluation.results.model_index_entry`.
    """
    from huggingface_hub import EvalResult

    from hqrs.evaluation.results import model_index_entry

    results = []
    for path in paths:
        path = Path(path)
        try:
            entry = model_index_entry(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError, KeyError, ValueError) as exc:
            raise ValueError(
                f"evaluation results {str(path)!r} are not an `hqrs eval` results JSON ({type(exc).__name__}: {exc})"
            ) from None
        task, dataset = entry["task"], entry["dataset"]
        for metric in entry["metrics"]:
            results.append(
                EvalResult(
                    task_type=task["type"],
                    task_name=task.get("name"),
                    dataset_type=dataset["type"],
                    dataset_name=dataset["name"],
                    dataset_split=dataset.get("split"),
                    metric_type=metric["type"],
                    metric_name=metric["name"],
                    metric_value=metric["value"],
                )
            )
    return results


def render_model_card(
    model_dir: str | Path,
    repo_id: str,
    *,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    results: list | None = None,
    training: str | None = None,
    license: str = "apache-2.0",
):
    """Render the model card of a saved HQRS-CLIP or RS-CoCa folder.

    Example:

    ```python
    >>> card = render_model_card("hqrs-clip-vit-b-32", "my-org/hqrs-clip-vit-b-32")  # doctest: +SKIP
    >>> card.data.pipeline_tag
    'zero-shot-image-classification'
    ```
    """
    from huggingface_hub import ModelCard, ModelCardData

    kind = model_kind(model_dir)
    name = repo_id.split("/")[-1]
    results = list(results or [])
    card_data = ModelCardData(
        model_name=name,
        library_name="transformers",
        pipeline_tag=kind.pipeline_tag,
        license=license,
        tags=[*RS_TAGS, *kind.tags],
        base_model=base_model,
        datasets=datasets or None,
        eval_results=results or None,
        language="en",
    )
    return ModelCard.from_template(
        card_data,
        template_str=_template("model_card.md"),
        model_name=f"{name} ({kind.display})",
        summary=kind.summary,
        usage=kind.usage.replace(REPO_PLACEHOLDER, repo_id),
        remote_code=bool(kind.remote_files),
        remote_files=kind.remote_files,
        architecture=kind.architecture,
        base_model=base_model,
        datasets_text=", ".join(datasets) if datasets else "not recorded",
        num_parameters=_count_parameters(model_dir),
        license=license,
        training=training,
        results=results,
        limitations=LIMITATIONS,
        citation=PAPER_CITATION,
    )


def _count_parameters(model_dir: str | Path) -> str:
    from safetensors import safe_open

    total = 0
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                n = 1
                for dim in f.get_slice(key).get_shape():
                    n *= dim
                total += n
    if total >= 1e9:
        return f"{total / 1e9:.2f} B"
    return f"{total / 1e6:.1f} M" if total >= 1e6 else f"{total:,}"


def _dataset_info(dataset_dir: Path) -> tuple[list[dict], dict[str, list[dict]], list[dict]]:
    """Configs (for the card's YAML), features per config and row counts per split, from the build folder."""
    import pyarrow.parquet as pq

    configs, features, rows = [], {}, []
    data_dir = dataset_dir / "data"
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"{data_dir} not found: {str(dataset_dir)!r} is not a folder written by `hqrs build`"
        )
    for config_dir in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        shards = sorted(config_dir.glob("*.parquet"))
        if not shards:
            continue
        splits = sorted({s.name.split("-")[0] for s in shards})
        configs.append(
            {
                "config_name": config_dir.name,
                "data_files": [{"split": s, "path": f"data/{config_dir.name}/{s}-*.parquet"} for s in splits],
                **({"default": True} if config_dir.name == "default" else {}),
            }
        )
        schema = pq.read_schema(shards[0])
        features[config_dir.name] = [{"name": f.name, "dtype": str(f.type)} for f in schema]
        for split in splits:
            n = sum(pq.ParquetFile(s).metadata.num_rows for s in shards if s.name.startswith(f"{split}-"))
            rows.append({"config": config_dir.name, "split": split, "rows": n})
    if not configs:
        raise ValueError(f"{data_dir} holds no parquet shards; build the dataset with `hqrs build` first")
    return configs, features, rows


def _size_category(n: int) -> str:
    for limit, name in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if n < limit:
            return name
    return "1M<n<10M"


def render_dataset_card(
    dataset_dir: str | Path,
    repo_id: str,
    *,
    stats: dict[str, Any] | None = None,
    plots: list[str] | None = None,
    sources: list[dict[str, str]] | None = None,
    license: str = "other",
):
    """Render the HQRS-IT dataset card from a folder written by ``hqrs build``.

    ``stats`` is the JSON of ``hqrs eval dataset`` (flat numbers are tabled), ``plots`` are PNG paths
    relative to the folder, ``sources`` a list of ``{"name", "license", "citation"}``. The build
    report (``build_report.json``) supplies split, skip and contamination numbers, and the MpGI run
    manifest (``mpgi_run/manifest.json`` or the report's ``run_dir``) the recipe, models and tokens.
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    dataset_dir = Path(dataset_dir)
    configs, features, split_rows = _dataset_info(dataset_dir)
    report = _read_json(dataset_dir / "build_report.json")
    run_dir = (report.get("input") or {}).get("run_dir") or dataset_dir / "mpgi_run"
    manifest = _read_json(Path(run_dir) / "manifest.json")
    default_rows = sum(r["rows"] for r in split_rows if r["config"] == configs[0]["config_name"])
    name = repo_id.split("/")[-1]
    card_data = DatasetCardData(
        pretty_name=name,
        license=license,
        language="en",
        task_categories=["image-to-text", "zero-shot-image-classification"],
        size_categories=_size_category(default_rows),
        tags=[*RS_TAGS, "image-captioning"],
        configs=configs,
    )
    return DatasetCard.from_template(
        card_data,
        template_str=_template("dataset_card.md"),
        pretty_name=name,
        summary=(
            "Remote-sensing images with several captions each, generated by MpGI: a rule description from "
            "the annotations, MLLM perspectives (relayed from the rule facts) and an LLM that integrates them."
        ),
        usage=f'from datasets import load_dataset\n\nds = load_dataset("{repo_id}")  # or "{repo_id}", "pairs"\n'
        'print(ds["train"][0]["captions"])',
        split_rows=split_rows,
        features_by_config=features,
        mpgi_text=_mpgi_text(report, manifest),
        stats=stats_table(stats),
        plots=plots or [],
        build_text=_build_text(report),
        sources=sources or [],
        citation=PAPER_CITATION,
    )


def stats_table(stats: dict[str, Any] | None) -> dict[str, Any]:
    """The card's statistics table from ``stats``: the results JSON of ``hqrs eval dataset`` (schema
    ``hqrs-eval/1``: its metrics by name, plus the image count), or any JSON object (its numbers and
    strings)."""
    from hqrs.evaluation.results import SCHEMA

    if not stats:
        return {}
    if not isinstance(stats, dict):
        raise ValueError(
            f"dataset statistics must be a JSON object (the output of `hqrs eval dataset`), got "
            f"{type(stats).__name__}"
        )
    if stats.get("schema") == SCHEMA:
        table = {}
        if (stats.get("dataset") or {}).get("num_images") is not None:
            table["images"] = stats["dataset"]["num_images"]
        table.update({m["name"]: round(m["value"], 4) for m in stats.get("metrics", [])})
        return table
    return {k: v for k, v in stats.items() if isinstance(v, (int, float, str))}


def load_sources_list(path: str | Path) -> list[dict[str, str]]:
    """Read the ``--sources`` JSON: a list of ``{"name", "license", "citation"}`` objects."""
    from hqrs.evaluation.coco_caption import load_json_utf8

    data = load_json_utf8(path, "source datasets")
    if not isinstance(data, list) or not all(isinstance(s, dict) and s.get("name") for s in data):
        raise ValueError(
            f"source datasets file {str(path)!r} must be a JSON list of "
            '{"name": ..., "license": ..., "citation": ...} objects'
        )
    return data


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None


def _mpgi_text(report: dict[str, Any], manifest: dict[str, Any]) -> str:
    if not manifest:
        recipe = (report.get("input") or {}).get("recipe")
        if recipe:
            return f"- **recipe:** `{recipe}` (no MpGI run manifest was found next to the build)"
        return "Captions were read from a released caption file; no MpGI recipe ran in this build."
    lines = [
        f"- **recipe:** `{manifest.get('recipe', '?')}` (hash `{str(manifest.get('recipe_hash', '?'))[:16]}`)"
    ]
    models = manifest.get("models") or {}
    for name, model in models.items() if isinstance(models, dict) else enumerate(models):
        lines.append(f"- **{name}:** `{model}`")
    lines.append(f"- **integrator:** `{manifest.get('integrator', '?')}`")
    totals = manifest.get("totals") or {}
    if totals:
        lines.append(
            f"- **records:** {totals.get('ok', 0)} captioned, {totals.get('failed', 0)} failed; tokens: "
            f"{totals.get('prompt_tokens', 0)} prompt, {totals.get('completion_tokens', 0)} completion"
        )
    packages = manifest.get("packages") or {}
    if packages:
        lines.append("- **software:** " + ", ".join(f"{k} {v}" for k, v in packages.items()))
    return "\n".join(lines)


def _build_text(report: dict[str, Any]) -> str:
    if not report:
        return "No `build_report.json` was found in the build folder."
    lines = [f"- **images:** {report.get('images', '?')}; **skipped:** {report.get('skipped', 0)}"]
    by_kind = report.get("skipped_by_kind") or {}
    if by_kind:
        lines.append("- **skipped by reason:** " + ", ".join(f"{k}: {v}" for k, v in by_kind.items()))
    for split, info in (report.get("splits") or {}).items():
        rows = ", ".join(f"{c} {n}" for c, n in (info.get("rows") or {}).items())
        lines.append(f"- **{split}:** {info.get('images', '?')} images ({rows} rows)")
    ratios = report.get("split_ratios")
    if ratios:
        lines.append(f"- **split ratios (train/validation/test by image-id hash):** {ratios}")
    dup = report.get("near_duplicates") or {}
    if dup:
        lines.append(
            f"- **near-duplicates** (perceptual-hash distance ≤ {dup.get('distance')}, kept in one split): "
            f"{dup.get('groups_with_more_than_one_image', 0)} groups, {dup.get('images_in_such_groups', 0)} images"
        )
    cont = report.get("contamination") or {}
    if cont:
        lines.append(
            f"- **contamination guard:** {cont.get('reference_images', 0)} evaluation test images checked, "
            f"{cont.get('removed_from_train', 0)} matching images removed from train"
        )
    lines.append(
        "\nThe full report, with every skipped file and its reason, is `build_report.json` in this repository."
    )
    return "\n".join(lines)
