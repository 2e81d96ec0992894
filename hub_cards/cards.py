"""Model and dataset cards rendered from templates and from results.

Cards are never hand-edited. :func:`render_model_card` builds a model card with huggingface_hub's
:class:`~huggingface_hub.ModelCard` ``from_template`` over ``hub_cards/templates/model_card.md``.
:func:`render_dataset_card` is the build's own card writer,
:func:`hqrs.dataset_builder.dataset_card.dataset_card` (huggingface_hub
:class:`~huggingface_hub.DatasetCard`), given what a push adds: the MpGI run, the build report,
statistics and the source table. Both YAML headers parse into huggingface_hub's card-data types.
"""

from __future__ import annotations

import json
import logging
import re
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from safetensors import safe_open

from hqrs.dataset_builder import PAPER_CITATION
from hqrs.dataset_builder.build_folder import BuildFolder
from hqrs.dataset_builder.dataset_card import TAGS, dataset_card, infos_from_folder
from hqrs.dataset_builder.io import load_json_utf8
from hqrs.evaluation.results import SCHEMA, TASK_NAMES, model_index_entry, weights_sha256
from hqrs.modeling.families import FAMILIES, REPO_PLACEHOLDER, ModelFamily

RS_TAGS = TAGS  # the tags every hqrs card carries (dataset cards add "image-captioning")

# What differs between the model families we publish (architecture, paper, usage snippet, remote code) lives in
# the family registry; the card reads it from there.
ModelKind = ModelFamily
MODEL_KINDS: dict[str, ModelFamily] = {family.model_type: family for family in FAMILIES}

LIMITATIONS = (
    "Trained on remote-sensing imagery with machine-generated (MpGI) captions: captions can still contain "
    "errors the fact-consistency filter did not catch, counts of small objects are unreliable, and the model "
    "has not been evaluated outside optical RGB imagery (SAR, multispectral bands, oblique views). Source "
    "imagery licences restrict commercial use of the training data."
)


def _template(name: str) -> str:
    return resources.files("hqrs.hub_cards").joinpath("templates", name).read_text(encoding="utf-8")


def model_kind(model_dir: str | Path) -> ModelFamily:
    """The :class:`~hqrs.modeling.families.ModelFamily` of a saved model folder, from its ``config.json``."""
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


DATASET_TASK = "dataset-quality"  # the task of `hqrs eval dataset`'s report: statistics of a dataset
MODEL_TASKS = tuple(task for task in TASK_NAMES if task != DATASET_TASK)  # what a model-index holds


def load_eval_results(
    paths: list[str | Path], model_dir: str | Path | None = None, allow_other_model: bool = False
) -> list:
    """Read ``hqrs eval`` result JSON files (schema ``hqrs-eval/1``) into huggingface_hub ``EvalResult``s.

    Each metric of each file becomes one ``EvalResult``; together they fill the card's ``model-index``.
    The mapping is :func:`hqrs.evaluation.results.model_index_entry`.

    With ``model_dir``, every file must have been measured on that model: its ``model.weights_sha256``
    must equal :func:`hqrs.evaluation.results.weights_sha256` of the folder. A mismatch, or a file that
    records no weights hash, is a ``ValueError`` naming the file and both identities, unless
    ``allow_other_model`` (then each such file is logged as a warning).
    """
    from huggingface_hub import EvalResult

    expected = weights_sha256(model_dir) if model_dir is not None else None
    foreign: list[str] = []
    results = []
    for path in paths:
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(
                f"evaluation results {str(path)!r} are not an `hqrs eval` results JSON ({type(exc).__name__}: {exc})"
            ) from None
        # a suite JSON (`hqrs eval suite`) holds one hqrs-eval/1 object per finished entry
        items = (
            raw.get("results")
            if isinstance(raw, dict) and raw.get("schema") == "hqrs-eval-suite/1"
            else [raw]
        )
        for item in items if isinstance(items, list) else [items]:
            results += _eval_results_of(
                item, path, expected, model_dir, foreign, EvalResult, model_index_entry
            )
    if foreign and not allow_other_model:
        raise ValueError(
            "results from another model would go into this card: "
            + "; ".join(foreign)
            + ". Rerun `hqrs eval` on this folder, or pass --allow-other-model-results to attach them anyway"
        )
    for line in foreign:
        logging.getLogger("hqrs.push").warning("attached anyway (--allow-other-model-results): %s", line)
    return results


def _eval_results_of(raw, path, expected, model_dir, foreign, EvalResult, model_index_entry) -> list:
    """The ``EvalResult``s of one ``hqrs-eval/1`` object; a model mismatch is appended to ``foreign``."""
    results = []
    try:
        entry = model_index_entry(raw)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"evaluation results {str(path)!r} are not an `hqrs eval` results JSON ({type(exc).__name__}: {exc})"
        ) from None
    task = entry["task"].get("type")
    if task not in MODEL_TASKS:  # a dataset report (`hqrs eval dataset`) measures data, not this model
        what = "a dataset report (`hqrs eval dataset`)" if task == DATASET_TASK else f"task {task!r}"
        raise ValueError(
            f"evaluation results {str(path)!r} are {what}, not an evaluation of a model "
            f"({', '.join(MODEL_TASKS)}); drop it from --results"
            + (
                " (it belongs on the dataset card: `hqrs push dataset --stats`)"
                if task == DATASET_TASK
                else ""
            )
        )
    if expected is not None:
        model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
        got = model.get("weights_sha256")
        if got != expected:
            where = model.get("path") or model.get("name") or "no model"
            foreign.append(
                f"{str(path)!r} was measured on {where!r} "
                + (f"(weights sha256 {str(got)[:12]})" if got else "(no weights hash recorded)")
                + f", not on {str(model_dir)!r} (weights sha256 {expected[:12]})"
            )
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
        pipeline_tag=kind.card.pipeline_tag,
        license=license,
        tags=[*RS_TAGS, *kind.card.tags],
        base_model=base_model,
        datasets=datasets or None,
        eval_results=results or None,
        language="en",
    )
    return ModelCard.from_template(
        card_data,
        template_str=_template("model_card.md"),
        model_name=f"{name} ({kind.display})",
        summary=kind.card.summary,
        usage=kind.card.usage.replace(REPO_PLACEHOLDER, repo_id),
        remote_code=bool(kind.remote_files),
        remote_files=kind.remote_files,
        architecture=f"{kind.card.architecture} ({kind.card.paper})",
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


def render_dataset_card(
    dataset_dir: str | Path,
    repo_id: str,
    *,
    stats: dict[str, Any] | None = None,
    plots: list[str] | None = None,
    sources: list[dict[str, str]] | None = None,
    license: str = "other",
):
    """Render the HQRS-IT dataset card of a folder written by ``hqrs build``, for ``repo_id``.

    The same writer as the build's own card (:func:`hqrs.dataset_builder.dataset_card.dataset_card`, so the
    YAML header is the build's), over the configs and splits read back from the folder's shards, plus what
    the push adds: ``stats`` is the JSON of ``hqrs eval dataset`` (flat numbers are tabled), ``plots`` are
    PNG paths relative to the folder, ``sources`` a list of ``{"name", "license", "citation"}``. The build
    report (``build_report.json``) supplies split, skip and contamination numbers, and the MpGI run
    manifest (``manifest.json`` of :meth:`~hqrs.dataset_builder.build_folder.BuildFolder.run_dir`) the
    recipe, models and tokens.

    Raises:
        ValueError: a ``webdataset`` / ``open_clip-csv`` build (only parquet builds are pushed), or see
            :func:`~hqrs.dataset_builder.dataset_card.infos_from_folder`.
    """
    folder = BuildFolder(dataset_dir)
    infos = infos_from_folder(folder.root)
    report = _read_json(folder.report)
    manifest = _read_json(folder.run_dir(report) / "manifest.json")  # the MpGI run's own file
    return dataset_card(
        infos,
        pretty_name=repo_id.split("/")[-1],
        repo=repo_id,
        license=license,
        summary=caption_summary(report, manifest),
        mpgi_text=_mpgi_text(report, manifest),
        stats=stats_table(stats),
        plots=plots or [],
        build_text=_build_text(report),
        sources=sources_from_report(report, sources),
    )


# What the source datasets' own distributions say about their licences (read from their public pages /
# repositories; see ../shared/data/rs_real/SOURCES.md). Matched on the source's name or kind.
KNOWN_SOURCES: dict[str, dict[str, str]] = {
    "dota": {
        "name": "DOTA (Xia et al., CVPR 2018)",
        "license": "academic purposes only (DOTA terms); imagery from Google Earth, GF-2, JL-1",
    },
    "isaid": {
        "name": "iSAID (Waqas Zamir et al., CVPRW 2019)",
        "license": "academic purposes only (DOTA terms)",
    },
    "dior": {"name": "DIOR (Li et al., ISPRS 2020)", "license": "no licence stated by the authors"},
    "ucm": {
        "name": "UC Merced Land Use / UCM-Captions (Yang & Newsam 2010; Qu et al. 2016)",
        "license": "USGS public-domain imagery, distributed for research purposes",
    },
    "rsicd": {"name": "RSICD (Lu et al., TGRS 2017)", "license": "no licence stated by the authors"},
    "rsitmd": {"name": "RSITMD (Yuan et al., TGRS 2022)", "license": "no licence stated by the authors"},
    "sydney": {"name": "Sydney-Captions (Qu et al. 2016)", "license": "no licence stated by the authors"},
    "aid": {"name": "AID (Xia et al., TGRS 2017)", "license": "no licence stated by the authors"},
    "hqrs-demo": {
        "name": "synthetic scenes drawn by hqrs (`hqrs build --demo`)",
        "license": "apache-2.0 (generated by the hqrs package)",
    },
}
_GENERIC_DIRS = {"labeltxt", "images", "annotations", "annotation", "labels", "xml", "data", "train", "test"}
_UNKNOWN_LICENSE = "not recorded: check the source's own terms"


def _known_source(*names: str) -> dict[str, str] | None:
    for name in names:
        if str(name).lower() in KNOWN_SOURCES:
            return KNOWN_SOURCES[str(name).lower()]
        words = set(re.split(r"[^a-z0-9]+", str(name).lower()))
        for key, info in KNOWN_SOURCES.items():
            if key in words or any(w.startswith(key) and key != "aid" for w in words):
                return info
    return None


def sources_from_report(
    report: dict[str, Any], given: list[dict[str, str]] | None = None
) -> list[dict[str, Any]]:
    """The card's source table: every source of ``build_report.json`` (``input.sources`` specs, or the
    ``records`` counts by source name; a caption-file build lists its file), with the images it gave,
    its licence where :data:`KNOWN_SOURCES` knows it, and the user's ``--sources`` entries (matched by
    name) overriding or adding rows."""
    rows: list[dict[str, Any]] = []
    inp = report.get("input") or {}
    records = report.get("records") or {}
    specs = [str(spec) for spec in inp.get("sources") or []]
    parsed = []
    for spec in specs:
        kind, _, rest = spec.partition(":")
        path, _, query = rest.partition("?")
        parsed.append((kind, path, (parse_qs(query).get("name") or [""])[0]))
    unnamed = {}
    for kind, _, given_name in parsed:
        if not given_name:
            unnamed[kind] = unnamed.get(kind, 0) + 1
    for kind, path, given_name in parsed:
        parts = [p for p in Path(path).parts if p not in ("/", ".", "..")]
        folder = next(
            (p for p in reversed(parts) if p.lower() not in _GENERIC_DIRS), parts[-1] if parts else ""
        )
        # the build counts records by source name, which is the `name=` option or else the kind
        key = given_name or kind
        images: Any = records.get(key, "")
        if not given_name and unnamed.get(kind, 0) > 1 and images != "":
            images = f"{images} (all unnamed `{kind}` sources)"
        known = _known_source(given_name, folder)  # the kind is a file format (dota: = DOTA-style)
        rows.append(
            {
                "name": given_name or folder or kind,
                "kind": kind,
                "images": images,
                "license": known["license"] if known else _UNKNOWN_LICENSE,
                "citation": known["name"] if known else "",
            }
        )
    if not rows and records:
        for name, count in records.items():
            known = _known_source(name)
            rows.append(
                {
                    "name": name,
                    "kind": "",
                    "images": count,
                    "license": known["license"] if known else _UNKNOWN_LICENSE,
                    "citation": known["name"] if known else "",
                }
            )
    if not rows and inp.get("captions_csv"):
        rows.append(
            {
                "name": Path(str(inp["captions_csv"]).split("?")[0].split(":")[-1]).name,
                "kind": "caption file",
                "images": report.get("images", ""),
                "license": _UNKNOWN_LICENSE,
                "citation": "",
            }
        )
    by_name = {r["name"]: r for r in rows}
    for entry in given or []:
        row = by_name.get(entry["name"])
        if row is None:
            row = {
                "name": entry["name"],
                "kind": "",
                "images": "",
                "license": _UNKNOWN_LICENSE,
                "citation": "",
            }
            rows.append(row)
            by_name[row["name"]] = row
        row.update({k: v for k, v in entry.items() if k in ("license", "citation") and v})
    return rows


def caption_summary(report: dict[str, Any], manifest: dict[str, Any]) -> str:
    """One paragraph saying how the captions of this build were made, from the MpGI run manifest (recipe,
    models, integrator) or the build report; never a claim about models that did not run."""
    inp = report.get("input") or {}
    if inp.get("captions_csv") and not manifest:
        return (
            "Remote-sensing images with captions read from a released caption file; no MpGI recipe and "
            "no model ran in this build."
        )
    recipe = manifest.get("recipe") or inp.get("recipe")
    if not manifest:
        return (
            f"Remote-sensing images with captions made by the MpGI recipe `{recipe or 'not recorded'}`; "
            "the run manifest was not found, so the models used are not recorded."
        )
    models = manifest.get("models") or {}
    models = models if isinstance(models, dict) else dict(enumerate(models))
    integrator = manifest.get("integrator")
    if not models:
        return (
            f"Remote-sensing images with captions made by the MpGI recipe `{recipe}`: a rule description "
            "of each image from its source annotations, turned into captions by a deterministic template "
            f"integrator (`{integrator or 'template'}`). Models: none (no MLLM or LLM was called)."
        )
    listed = ", ".join(f"`{m}` ({k})" for k, m in models.items())
    integ = (
        "a deterministic template integrator"
        if integrator in (None, "template")
        else f"an LLM integrator (backend `{integrator}`)"
    )
    return (
        f"Remote-sensing images with captions made by the MpGI recipe `{recipe}`: a rule description from "
        f"the source annotations and model perspectives from {listed}, combined by {integ}."
    )


def stats_table(stats: dict[str, Any] | None) -> dict[str, Any]:
    """The card's statistics table from ``stats``: the results JSON of ``hqrs eval dataset`` (schema
    ``hqrs-eval/1``: its metrics by name, plus the image count), or any JSON object (its numbers and
    strings)."""
    if not stats:
        return {}
    if not isinstance(stats, dict):
        raise ValueError(
            f"dataset statistics must be a JSON object (the output of `hqrs eval dataset`), got "
            f"{type(stats).__name__}"
        )
    if stats.get("schema") == SCHEMA:
        task = (stats.get("task") or {}).get("type") if isinstance(stats.get("task"), dict) else None
        if task != DATASET_TASK:
            raise ValueError(
                f"dataset statistics are an `hqrs eval` result of task {task!r}, not a dataset report "
                f"(`hqrs eval dataset`'s dataset_quality.json); give that file (a model's results go to "
                "`hqrs push model --results`)"
            )
        table = {}
        if (stats.get("dataset") or {}).get("num_images") is not None:
            table["images"] = stats["dataset"]["num_images"]
        table.update({m["name"]: _number(m["value"]) for m in stats.get("metrics", [])})
        return table
    return {
        k: _number(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
        for k, v in stats.items()
        if isinstance(v, (int, float, str))
    }


def _number(value: float) -> int | float:
    """A statistic as a card shows it: whole numbers without ``.0`` (``1392``), others to 4 decimals."""
    value = float(value)
    return int(value) if value.is_integer() else round(value, 4)


def load_sources_list(path: str | Path) -> list[dict[str, str]]:
    """Read the ``--sources`` JSON: a list of ``{"name", "license", "citation"}`` objects."""
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
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


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
    if not models:
        lines.append("- **models:** none (no MLLM or LLM was called)")
    for name, model in models.items() if isinstance(models, dict) else enumerate(models):
        lines.append(f"- **{name}:** `{model}`")
    lines.append(f"- **integrator:** `{manifest.get('integrator', '?')}`")
    totals = manifest.get("totals") or {}
    if totals:
        lines.append(
            f"- **MpGI run totals** (every record of the run directory, which can also hold records of "
            f"earlier inputs; this build's images are counted below): {totals.get('ok', 0)} captioned, "
            f"{totals.get('failed', 0)} failed; tokens: "
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
