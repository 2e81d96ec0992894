"""Quality statistics of a built image-caption dataset: lengths, vocabulary, distinct-n, CLIPScore and
MpGI fact consistency.

Accepted inputs (``hqrs eval dataset DIR``):

* an MpGI run directory (``hqrs mpgi run --out``; the latest outcome of every image), or JSONL file(s)
  of :class:`~hqrs.dataset_builder.records.MpGIResult` lines: captions, image paths and the source
  facts (objects, exhaustive classes) are known;
* the folder written by ``hqrs build`` (or its ``data/``): its ``default`` config is read, and the
  facts of each row come from the MpGI run it was built from (the report's ``input.run_dir`` or
  ``mpgi_run/``); without that run, fact consistency has nothing to check;
* a ``datasets`` folder (``save_to_disk``) or parquet file(s) with a caption column (``caption``,
  ``text`` or a list column ``captions``) and optionally an ``image`` column.

Fact consistency is the MpGI engine's own fact filter (``check_caption`` on the record's ``rule_facts``),
so the rate says how many captions the integration stage would have accepted: a caption contradicts its
facts when it mentions a class that exhaustive annotations exclude (not negated: "no ships" is fine) or
states an explicit number that differs from the annotated count ("three tanks" when five are annotated).

Example:
    >>> s = text_statistics(["a plane near a runway", "two planes near the terminal"])
    >>> s["num_captions"], s["vocabulary_size"], round(s["distinct_1"], 3)
    (2, 8, 0.8)
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hqrs.dataset_builder.build_folder import BuildFolder
from hqrs.dataset_builder.mpgi.engine import iter_results
from hqrs.dataset_builder.mpgi.integrate import check_caption
from hqrs.dataset_builder.records import MpGIResult
from hqrs.dataset_builder.rules import rule_facts

from .data import open_dataset

_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclass
class CaptionItem:
    text: str
    image: Any | None = None  # path or PIL image, for CLIPScore
    image_key: str | None = None
    record: Any | None = None  # ImageRecord, for fact consistency
    length: str | None = None


@dataclass
class DatasetCaptions:
    name: str
    items: list[CaptionItem] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    split: str | None = None  # the split read ("all": every split; None: the input has none)
    config: str | None = None  # the config read (None: the input has none)


def text_statistics(texts: Sequence[str], max_n: int = 4) -> dict[str, Any]:
    """Caption length distribution (words), vocabulary size and distinct-n (unique / total n-grams)."""
    if not texts:
        raise ValueError("no captions to analyse")
    toks = [words(t) for t in texts]
    lengths = sorted(len(t) for t in toks)
    vocab = Counter(w for t in toks for w in t)
    out: dict[str, Any] = {
        "num_captions": len(texts),
        "length_words": {
            "mean": sum(lengths) / len(lengths),
            "min": lengths[0],
            "p50": lengths[len(lengths) // 2],
            "p90": lengths[min(len(lengths) - 1, int(0.9 * len(lengths)))],
            "max": lengths[-1],
        },
        "vocabulary_size": len(vocab),
        "top_words": vocab.most_common(20),
    }
    for n in range(1, max_n + 1):
        grams = Counter(tuple(t[i : i + n]) for t in toks for i in range(len(t) - n + 1))
        total = sum(grams.values())
        out[f"distinct_{n}"] = len(grams) / total if total else 0.0
    out["_lengths"] = [len(t) for t in toks]
    return out


def fact_problems(text: str, facts: Any) -> list[str]:
    """Contradictions of ``text`` with an image's :class:`~hqrs.dataset_builder.rules.RuleFacts`, found
    by the MpGI integration stage's own filter (:func:`hqrs.dataset_builder.mpgi.integrate.check_caption`)."""
    return check_caption(text, facts).problems


def fact_consistency(items: Sequence[CaptionItem]) -> dict[str, Any]:
    """Share of captions (in %) that the MpGI fact filter accepts, over the captions whose source record
    states something checkable (annotated counts or exhaustively annotated classes)."""
    facts_of: dict[int, Any] = {}  # one RuleFacts per record, however many captions it has
    checked = 0
    n_bad = 0
    problems: Counter = Counter()
    for it in items:
        if it.record is None:
            continue
        facts = facts_of.get(id(it.record))
        if facts is None:
            facts = facts_of[id(it.record)] = rule_facts(it.record)
        if not facts.counts and not facts.absent:
            continue
        checked += 1
        found = fact_problems(it.text, facts)
        if found:
            n_bad += 1
            problems.update(found)
    if not checked:
        return {
            "rate": None,
            "checked": 0,
            "reason": "no caption has source facts (annotated counts or exhaustive classes) to check against",
        }
    return {
        "rate": 100.0 * (checked - n_bad) / checked,
        "checked": checked,
        "contradicting": n_bad,
        "most_common_problems": problems.most_common(10),
    }


def clip_score(encoder, items: Sequence[CaptionItem], weight: float = 2.5) -> dict[str, Any]:
    """CLIPScore (Hessel et al. 2021): ``w * max(cos(image, caption), 0)``, mean over captions with images."""
    import torch

    with_img = [it for it in items if it.image is not None]
    if not with_img:
        return {"mean": None, "count": 0, "reason": "no caption has an image"}
    keys: dict[Any, int] = {}
    uniq: list[Any] = []
    for it in with_img:
        k = it.image_key or str(it.image)
        if k not in keys:
            keys[k] = len(uniq)
            uniq.append(it.image)
    img = encoder.encode_images(uniq)
    txt = encoder.encode_texts([it.text for it in with_img])
    idx = torch.as_tensor([keys[it.image_key or str(it.image)] for it in with_img])
    cos = (img[idx] * txt).sum(dim=-1)
    scores = (weight * cos.clamp(min=0)).tolist()
    return {"mean": sum(scores) / len(scores), "count": len(scores), "weight": weight, "_scores": scores}


def load_dataset_captions(
    path: str | Path,
    caption_column: str | None = None,
    images: bool = True,
    split: str | None = None,
    config: str | None = None,
) -> DatasetCaptions:
    """The captions of ``path`` (see the module docstring for the accepted inputs); ``images=False``
    leaves the images out (no CLIPScore), so nothing is decoded or kept in memory for them.

    ``split`` / ``config`` select a part of a ``datasets`` folder, a folder written by ``hqrs build``
    (config ``default`` unless told) or parquet (see :func:`hqrs.evaluation.data.open_dataset`); by
    default every split is read. An MpGI run has neither: asking for one there is an error."""
    path = Path(path)
    if split in (None, "all") and config is None:
        split = "all"
    if not path.exists():
        raise FileNotFoundError(f"dataset {str(path)!r} does not exist")
    path = BuildFolder(path).meant_build().root  # the data/ folder of a build means the build
    # a build folder is read only through its format (its .staging/ and mpgi_run/ are not its data)
    build = BuildFolder(path).require_parquet("hqrs eval dataset")
    is_run = build is None and path.is_dir() and (path / "recipe.json").is_file()
    is_jsonl = path.suffix == ".jsonl" or (
        build is None and path.is_dir() and not BuildFolder(path).has_data() and any(path.rglob("*.jsonl"))
    )
    if (is_run or is_jsonl) and (split != "all" or config is not None):
        raise ValueError(f"{str(path)!r} is an MpGI run / results file: it has no splits or configs")
    if is_run:  # an MpGI run directory
        return _from_results(path.name, iter_results(path), images)
    if build is not None or BuildFolder(path).has_data():  # the folder `hqrs build` writes
        data = _load_hf(path, caption_column, images, name=path.name, split=split, config=config)
        run_dir = _build_run_dir(path)
        if run_dir is not None:  # the records behind the rows: facts for the consistency check
            records = {res.image_id: res.record for res in iter_results(run_dir)}
            for it in data.items:
                it.record = records.get(it.image_key)
        return data
    jsonl = [path] if path.suffix == ".jsonl" else sorted(path.rglob("*.jsonl")) if path.is_dir() else []
    if jsonl and not (
        path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())
    ):
        return _load_mpgi_jsonl(path.stem if path.is_file() else path.name, jsonl, images)
    return _load_hf(path, caption_column, images, split=split, config=config)


def _build_run_dir(build_dir: Path) -> Path | None:
    """The MpGI run a build folder was made from (its report's ``input.run_dir``, or ``mpgi_run/``)."""
    folder = BuildFolder(build_dir)
    try:
        report = folder.read_report()
    except FileNotFoundError:
        report = {}
    candidates = [folder.run_dir(report), folder.run_dir({})]  # the recorded run, then the default mpgi_run/
    return next((c for c in candidates if (c / "recipe.json").is_file()), None)


def _from_results(name: str, results, images: bool) -> DatasetCaptions:
    out = DatasetCaptions(name)
    for res in results:
        if res.status != "ok":
            out.skipped["failed_images"] = out.skipped.get("failed_images", 0) + 1
            continue
        image = res.record.image if images and Path(res.record.image).is_file() else None
        if images and image is None:
            out.skipped["image_not_found"] = out.skipped.get("image_not_found", 0) + 1
        for cap in res.captions:
            out.items.append(CaptionItem(cap.text, image, res.image_id, res.record, cap.length))
    if not out.items:
        raise ValueError(f"{name!r}: no captions found")
    return out


def _load_mpgi_jsonl(name: str, files: Sequence[Path], images: bool) -> DatasetCaptions:
    def results():
        for f in files:
            with open(f, encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        yield MpGIResult.from_dict(json.loads(line))
                    except (ValueError, TypeError, KeyError) as exc:
                        raise ValueError(f"{f}:{lineno}: not an MpGI result line ({exc})") from None

    return _from_results(name, results(), images)


def _load_hf(
    path: Path,
    caption_column: str | None,
    images: bool,
    name: str | None = None,
    split: str | None = "all",
    config: str | None = None,
) -> DatasetCaptions:
    import datasets

    is_saved = path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())
    if not is_saved and not (path.suffix == ".parquet" or (path.is_dir() and any(path.rglob("*.parquet")))):
        raise ValueError(
            f"{str(path)!r} holds no MpGI run or results (*.jsonl), no datasets folder and no parquet files"
        )
    ds, split, config = open_dataset(path, config, split)
    cols = ds.column_names
    col = caption_column or next((c for c in ("caption", "text", "captions") if c in cols), None)
    if col is None or col not in cols:
        raise ValueError(
            f"{str(path)!r}: no caption column (tried {caption_column or 'caption, text, captions'}; columns: {cols})"
        )
    has_image = images and "image" in cols
    if "image" in cols:
        # undecoded cells ({bytes, path}): decoded one at a time by the CLIP encoder, or dropped
        ds = (
            ds.cast_column("image", datasets.Image(decode=False)) if has_image else ds.remove_columns("image")
        )
    out = DatasetCaptions(name or (path.stem if path.is_file() else path.name), split=split, config=config)
    for i, row in enumerate(ds):
        value = row[col]
        texts = value if isinstance(value, list) else [value]
        for t in texts:
            if isinstance(t, dict):
                t = t.get("text")
            if not isinstance(t, str) or not t.strip():
                out.skipped["empty_caption"] = out.skipped.get("empty_caption", 0) + 1
                continue
            key = str(row["image_id"]) if "image_id" in row else str(i)
            out.items.append(
                CaptionItem(t, row["image"] if has_image else None, key, length=row.get("length"))
            )
    return out


def evaluate_dataset(data: DatasetCaptions, encoder=None) -> dict[str, Any]:
    stats = text_statistics([it.text for it in data.items])
    result = {"text": stats, "fact_consistency": fact_consistency(data.items), "skipped": dict(data.skipped)}
    result["clip_score"] = (
        clip_score(encoder, data.items)
        if encoder is not None
        else {
            "mean": None,
            "reason": "no --clip-model given",
        }
    )
    by_len = Counter(it.length for it in data.items if it.length)
    if by_len:
        result["captions_per_length_class"] = dict(by_len)
    if result["clip_score"].get("mean") is not None and not math.isfinite(result["clip_score"]["mean"]):
        raise ValueError("CLIPScore is not finite; check the CLIP model")
    return result
