"""The results JSON every ``hqrs eval`` command writes, and its mapping to a model card's ``model-index``.

Schema ``hqrs-eval/1`` (one JSON object per evaluation)::

    {
      "schema": "hqrs-eval/1",
      "created": "2025-01-01T00:00:00+00:00",          # UTC, ISO 8601
      "task": {"type": "zero-shot-image-classification" | "image-text-retrieval" | "image-to-text"
                       | "dataset-quality" | "semantic-localization",
               "name": "Zero-shot classification"},
      "model": {"name": "hqrs-clip-vit-b-32", "path": "/abs/path", "class": "CLIPModel",
                "weights_sha256": "…"} | null,               # see model_identity
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
import hashlib
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
    "semantic-localization": "Semantic localization (SeLo)",
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


def weights_sha256(model_dir: str | Path) -> str:
    """Identity of a saved model's weights: SHA-256 over ``"<file> <sha256 of the file>\n"`` of every
    ``*.safetensors`` file of the folder, sorted by name (each file's own SHA-256 is the one the Hub
    shows for it, so a pushed copy has the same identity).

    Raises:
        FileNotFoundError: the folder holds no ``*.safetensors`` file.
    """
    folder = Path(model_dir)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{str(folder)!r} holds no *.safetensors weights to identify the model by")
    total = hashlib.sha256()
    for path in files:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
        total.update(f"{path.name} {digest.hexdigest()}\n".encode())
    return total.hexdigest()


def model_identity(model_dir: str | Path, model: Any = None) -> dict[str, Any]:
    """The ``model`` object of a results JSON: folder name and absolute path, the model class (of the
    loaded ``model``, else ``config.json``'s ``architectures[0]``), the Hub repo it came from when its
    ``config.json`` records one (``_name_or_path`` that is not a local path), and :func:`weights_sha256`."""
    folder = Path(model_dir)
    config: dict[str, Any] = {}
    if (folder / "config.json").is_file():
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            config = {}
    cls = type(model).__name__ if model is not None else ((config.get("architectures") or [None])[0])
    return {
        "name": folder.resolve().name,
        "path": str(folder.resolve()),
        "class": cls,
        "weights_sha256": weights_sha256(folder),
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
