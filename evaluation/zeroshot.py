"""Zero-shot scene classification with prompt-template ensembles.

Class names are normalised (``baseballdiamond`` → "baseball diamond"), each class's prompts are encoded
and averaged (then re-normalised) into a classifier weight, and images are assigned the class of highest
cosine similarity. Template sets live in ``zeroshot_templates.yaml`` next to this file.

Example:
    >>> sorted(load_templates())[:2]
    ['clip_benchmark_resisc45', 'clip_eurosat']
    >>> load_templates()["satellite_photo"]
    ['a satellite photo of {}.']
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from .data import normalize_classname

TEMPLATES_FILE = Path(__file__).resolve().parent / "zeroshot_templates.yaml"


@lru_cache(maxsize=1)
def _template_file() -> dict[str, Any]:
    return yaml.safe_load(TEMPLATES_FILE.read_text(encoding="utf-8"))


def default_template_set() -> str:
    return _template_file()["default"]


def load_templates() -> dict[str, list[str]]:
    """``{set name: [templates]}`` shipped with hqrs."""
    return {name: list(spec["templates"]) for name, spec in _template_file()["sets"].items()}


def resolve_templates(spec: str | None) -> tuple[str, list[str]]:
    """A set name, a YAML/JSON/text file of templates (one per line), or ``None`` for the default set."""
    sets = load_templates()
    name = spec or default_template_set()
    if name in sets:
        return name, sets[name]
    path = Path(name)
    if not path.is_file():
        raise ValueError(
            f"--templates {name!r} is neither a shipped set ({', '.join(sorted(sets))}) nor a file"
        )
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml", ".json"):
        data = yaml.safe_load(text)
        templates = data.get("templates") if isinstance(data, dict) else data
    else:
        templates = [line.strip() for line in text.splitlines() if line.strip()]
    if not isinstance(templates, list) or not templates:
        raise ValueError(f"--templates file {name!r} must hold a non-empty list of templates")
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ValueError(f"template {t!r} in {name!r} must contain exactly one '{{}}' for the class name")
    return path.stem, templates


def classifier_weights(encoder, classnames: Sequence[str], templates: Sequence[str]):
    """``[num_classes, dim]``: per class, the normalised mean of its normalised prompt embeddings."""
    import torch

    prompts = [t.format(c) for c in classnames for t in templates]
    emb = encoder.encode_texts(prompts).view(len(classnames), len(templates), -1).mean(dim=1)
    return torch.nn.functional.normalize(emb, dim=-1)


def classification_metrics(logits, labels: Sequence[int], classnames: Sequence[str]) -> dict[str, Any]:
    """Top-1 / top-5 accuracy (percent), mean per-class accuracy, per-class accuracy and confusion matrix."""
    import torch

    y = torch.as_tensor(list(labels), dtype=torch.long)
    n_cls = len(classnames)
    k = min(5, n_cls)
    top = logits.topk(k, dim=1).indices
    pred = top[:, 0]
    top1 = (pred == y).float().mean().item() * 100
    top5 = (top == y[:, None]).any(dim=1).float().mean().item() * 100
    confusion = torch.zeros(n_cls, n_cls, dtype=torch.long)
    confusion.index_put_((y, pred), torch.ones_like(y), accumulate=True)
    support = confusion.sum(dim=1)
    per_class = {
        classnames[c]: (confusion[c, c].item() / support[c].item() * 100) if support[c] else None
        for c in range(n_cls)
    }
    present = [v for v in per_class.values() if v is not None]
    return {
        "metrics": {
            "top1_accuracy": top1,
            f"top{k}_accuracy" if k != 5 else "top5_accuracy": top5,
            "mean_per_class_accuracy": sum(present) / len(present),
        },
        "per_class_accuracy": per_class,
        "confusion_matrix": confusion.tolist(),
        "predictions": pred.tolist(),
    }


def evaluate_zeroshot(encoder, data, templates: Sequence[str]) -> dict[str, Any]:
    """Zero-shot classify ``data`` (:class:`~hqrs.evaluation.data.ClassificationData`)."""
    prompt_names = [normalize_classname(c) for c in data.classnames]
    weights = classifier_weights(encoder, prompt_names, templates)
    image_emb = encoder.encode_images(data.images)
    result = classification_metrics(image_emb @ weights.T, data.labels, list(data.classnames))
    result["prompt_classnames"] = dict(zip(data.classnames, prompt_names))
    result["num_images"] = len(data)
    return result
