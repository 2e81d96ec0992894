"""Evaluation suites: a named list of ``hqrs eval`` runs (``eval_suites.yaml``), the paper-style table of
their headline numbers with cited reference rows, and one suite results JSON for the model card.

Suite results JSON (``hqrs-eval-suite/1``)::

    {"schema": "hqrs-eval-suite/1", "suite": "rs-real", "model": {...model identity...},
     "results": [<hqrs-eval/1 object>, ...],          # one per finished entry
     "skipped": [{"entry": "AID", "reason": "..."}],
     "references": [{"model": ..., "source": ..., "values": {"AID": 61.3}}],
     "table": {"columns": [...], "rows": [{"model": ..., "values": [...], "source": ...}]}}

:func:`hqrs.hub_cards.cards.load_eval_results` reads it like a list of ``hqrs-eval/1`` files.

Example:
    >>> suite = load_suite("rs-real")
    >>> [e["task"] for e in suite["entries"]]
    ['zeroshot', 'retrieval', 'retrieval']
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

SUITE_SCHEMA = "hqrs-eval-suite/1"
TASKS = {
    "zeroshot": ("dataset",),
    "retrieval": ("karpathy", "images"),
    "selo": ("dataset",),
}
OPTIONAL = {"zeroshot": ("templates", "split"), "retrieval": ("split",), "selo": ()}
# The number a table shows per task: (metric type, column label)
HEADLINE = {
    "zero-shot-image-classification": ("top1_accuracy", "top-1 %"),
    "image-text-retrieval": ("mean_recall", "mR %"),
    "semantic-localization": ("Rmi", "Rmi"),
}
_TASK_TYPE = {
    "zeroshot": "zero-shot-image-classification",
    "retrieval": "image-text-retrieval",
    "selo": "semantic-localization",
}


def _suites_file() -> dict[str, Any]:
    text = resources.files("hqrs.evaluation").joinpath("eval_suites.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def suite_names() -> list[str]:
    return sorted(_suites_file()["suites"])


def load_suite(spec: str | Path) -> dict[str, Any]:
    """A suite by name (from the package's ``eval_suites.yaml``) or from a YAML file holding one suite
    (``{description, entries, references}``), checked.

    Raises:
        ValueError: unknown name, or an entry / reference row that breaks the schema (the message names
            the entry and the field).
    """
    path = Path(str(spec))
    if path.suffix in (".yaml", ".yml") and path.is_file():
        try:
            suite = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ValueError(f"suite file {str(path)!r} is not valid YAML: {exc}") from None
        name, where = path.stem, f"suite file {str(path)!r}"
    else:
        suites = _suites_file()["suites"]
        if str(spec) not in suites:
            raise ValueError(f"unknown suite {str(spec)!r}; suites: {sorted(suites)} (or a .yaml file)")
        suite, name, where = suites[str(spec)], str(spec), f"suite {str(spec)!r}"
    if not isinstance(suite, dict) or not isinstance(suite.get("entries"), list) or not suite["entries"]:
        raise ValueError(f"{where}: expected a mapping with a non-empty 'entries' list")
    names = set()
    for i, entry in enumerate(suite["entries"]):
        at = f"{where} entries[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise ValueError(f"{at}: each entry needs a 'name'")
        task = entry.get("task")
        if task not in TASKS:
            raise ValueError(f"{at} ({entry['name']}): task {task!r} is not one of {sorted(TASKS)}")
        missing = [k for k in TASKS[task] if not isinstance(entry.get(k), str)]
        unknown = sorted(set(entry) - {"name", "task", *TASKS[task], *OPTIONAL[task]})
        if missing or unknown:
            raise ValueError(
                f"{at} ({entry['name']}): task {task} needs {list(TASKS[task])}"
                + (f", missing {missing}" if missing else "")
                + (f"; unknown keys {unknown}" if unknown else "")
            )
        if entry["name"] in names:
            raise ValueError(f"{at}: entry name {entry['name']!r} appears twice")
        names.add(entry["name"])
    refs = suite.get("references") or []
    if not isinstance(refs, list):
        raise ValueError(f"{where}: 'references' must be a list of rows")
    for j, ref in enumerate(refs):
        at = f"{where} references[{j}]"
        if not isinstance(ref, dict) or not ref.get("model") or not ref.get("source"):
            raise ValueError(
                f"{at}: a reference row needs 'model' and 'source' (where the numbers come from)"
            )
        values = ref.get("values")
        if not isinstance(values, dict) or not values:
            raise ValueError(f"{at} ({ref['model']}): 'values' must map entry names to published numbers")
        for key, value in values.items():
            if key not in names:
                raise ValueError(f"{at} ({ref['model']}): {key!r} is not an entry of this suite")
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(f"{at} ({ref['model']}): value of {key!r} must be a number, got {value!r}")
    return {
        "name": name,
        "description": str(suite.get("description") or ""),
        "entries": suite["entries"],
        "references": refs,
    }


def entry_paths(entry: dict[str, Any], data_root: Path) -> dict[str, Path]:
    """The entry's input paths under ``data_root`` (keys: the task's path fields)."""
    return {k: data_root / entry[k] for k in TASKS[entry["task"]]}


def missing_inputs(entry: dict[str, Any], data_root: Path) -> str | None:
    """Why an entry cannot run here (the first missing path, named), or ``None``."""
    for key, path in entry_paths(entry, data_root).items():
        if not path.exists():
            return f"{key} {str(path)!r} not found"
    return None


def entry_key(entry: dict[str, Any], data_root: Path, weights_sha256: str) -> str:
    """Identity of a finished entry: the entry spec, its resolved paths and the model's weights."""
    blob = json.dumps(
        {
            "entry": entry,
            "paths": {k: str(p.resolve()) for k, p in entry_paths(entry, data_root).items()},
            "weights": weights_sha256,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def headline(result: dict[str, Any]) -> float | None:
    metric = HEADLINE.get(result["task"]["type"], (None,))[0]
    return next((m["value"] for m in result["metrics"] if m["type"] == metric), None)


def build_table(suite: dict[str, Any], model_name: str, results: dict[str, dict]) -> dict[str, Any]:
    """Columns = entries (with their headline metric); rows = this model, then the reference rows."""
    columns = []
    for e in suite["entries"]:
        label = HEADLINE[_TASK_TYPE[e["task"]]][1]
        columns.append({"entry": e["name"], "metric": label})
    rows = [
        {
            "model": model_name,
            "values": [
                headline(results[e["name"]]) if e["name"] in results else None for e in suite["entries"]
            ],
            "source": "this run",
        }
    ]
    for ref in suite["references"]:
        rows.append(
            {
                "model": ref["model"],
                "values": [ref["values"].get(e["name"]) for e in suite["entries"]],
                "source": ref["source"],
            }
        )
    return {"columns": columns, "rows": rows}


def format_table(table: dict[str, Any]) -> str:
    """The table as aligned text (``-`` where a number is missing), sources listed under it."""
    head = ["model", *(f"{c['entry']} {c['metric']}" for c in table["columns"])]
    body = [[r["model"], *("-" if v is None else f"{v:.2f}" for v in r["values"])] for r in table["rows"]]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    refs = [r for r in table["rows"][1:]]
    if refs:
        lines.append("")
        lines += [f"{r['model']}: {r['source']}" for r in refs]
    else:
        lines.append("(no reference rows: the suite cites no published numbers)")
    return "\n".join(lines)
