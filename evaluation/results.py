"""The results JSON every ``hqrs eval`` command writes, and its mapping to a model card's ``model-index``.

Schema ``hqrs-eval/1`` (one JSON object per evaluation)::

    {
      "schema": "hqrs-eval/1",
      "created": "2025-01-01T00:00:00+00:00",          # UTC, ISO 8601
      "task": {"type": "zero-shot-image-classification" | "image-text-retrieval" | "image-to-text"
                       | "dataset-quality",
               "name": "Zero-shot classification"},
      "model": {"name": "hqrs-clip-vit-b-32", "path": "/abs/path", "class": "CLIPModel"} | null,
      "dataset": {"name": "AID", "type": "aid", "split": "test", "path": "/abs/path",
                  "num_images": 150, "num_texts": null},
      "protocol": {...},                                # templates, ks, tokenizer, metric definitions
      "metrics": [{"type": "top1_accuracy", "name": "Top-1 accuracy", "value": 61.3, "unit": "%"}],
      "details": {...},                                 # per-class accuracy, confusion matrix, files
      "versions": {"hqrs": "0.1.0", "torch": "...", "transformers": "...", ...}
    }

:func:`model_index_entry` turns one of these into the ``results`` item of a model card's
``model-index`` (``task`` / ``dataset`` / ``metrics`` with ``type``, ``name``, ``value``).
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

SCHEMA = "hqrs-eval/1"
TASK_NAMES = {
    "zero-shot-image-classification": "Zero-shot classification",
    "image-text-retrieval": "Image-text retrieval",
    "image-to-text": "Image captioning",
    "dataset-quality": "Dataset quality",
}
_PACKAGES = (
    "hqrs",
    "torch",
    "transformers",
    "datasets",
    "evaluate",
    "open_clip_torch",
    "pycocoevalcap",
    "pillow",
)
_UNITS = {"%": ("accuracy", "R@", "recall")}


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _unit(metric: str) -> str | None:
    return "%" if any(s in metric for s in _UNITS["%"]) else None


def _pretty(metric: str) -> str:
    return (
        metric.replace("_", " ").replace("image to text", "image→text").replace("text to image", "text→image")
    )


def make_result(
    task: str,
    metrics: Mapping[str, float],
    dataset: Mapping[str, Any],
    protocol: Mapping[str, Any],
    model: Mapping[str, Any] | None = None,
    details: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    if task not in TASK_NAMES:
        raise ValueError(f"unknown task {task!r}; one of {sorted(TASK_NAMES)}")
    return {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "task": {"type": task, "name": TASK_NAMES[task]},
        "model": dict(model) if model is not None else None,
        "dataset": dict(dataset),
        "protocol": dict(protocol),
        "metrics": [
            {"type": k, "name": _pretty(k), "value": float(v), "unit": _unit(k)}
            for k, v in metrics.items()
            if v is not None
        ],
        "details": dict(details or {}),
        "versions": package_versions(),
    }


def write_result(result: Mapping[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def model_index_entry(result: Mapping[str, Any]) -> dict[str, Any]:
    """The ``model-index[0].results[i]`` item for one results JSON."""
    if result.get("schema") != SCHEMA:
        raise ValueError(f"not an {SCHEMA} results object (schema={result.get('schema')!r})")
    ds = result["dataset"]
    dataset = {"name": ds["name"], "type": ds.get("type") or ds["name"]}
    if ds.get("split"):
        dataset["split"] = ds["split"]
    return {
        "task": dict(result["task"]),
        "dataset": dataset,
        "metrics": [
            {"type": m["type"], "name": m["name"], "value": round(m["value"], 4)} for m in result["metrics"]
        ],
    }
