"""Caption metrics: parity with pycocoevalcap on real RS captions, the evaluate module, clear errors."""

from __future__ import annotations

import json
import random

import pytest

from hqrs.evaluation import caption_metrics_path
from hqrs.evaluation.coco_caption import (
    SCORE_KEYS,
    ptb_tokenize,
    pycocoevalcap_scores,
    score_captions,
    validate_captions,
)


def _real_references(rs_real) -> dict[str, list[str]]:
    refs: dict[str, list[str]] = {}
    for name, rel in [
        ("ucm", "ucm_captions/dataset_ucm_subset.json"),
        ("rsicd", "rsicd/dataset_rsicd_subset.json"),
        ("sydney", "sydney_captions/dataset_sydney_subset.json"),
    ]:
        for img in json.loads((rs_real / rel).read_text())["images"]:
            refs[f"{name}/{img['filename']}"] = [s["raw"] for s in img["sentences"]]
    # 40 more Sydney images from the full caption text (no images needed for caption metrics)
    lines = (
        (rs_real / "sydney_captions/full_captions_luna97/descriptions_SIDNEY.txt").read_text().splitlines()
    )
    for line in lines:
        n, text = line.split(" ", 1)
        if int(n) <= 42:
            refs.setdefault(f"sydney-full/{n}", []).append(text)
    return refs


def _candidates(refs: dict[str, list[str]]) -> dict[str, str]:
    """Perturbed own captions, cross-image captions, extended captions and tokenizer edge cases."""
    rng = random.Random(7)
    ids = list(refs)
    preds = {}
    for i, k in enumerate(ids):
        mode = i % 4
        if mode == 0:
            w = refs[k][0].split()
            rng.shuffle(w)
            preds[k] = " ".join(w[: max(1, len(w) - 2)])
        elif mode == 1:
            preds[k] = refs[ids[(i * 7 + 3) % len(ids)]][1]
        elif mode == 2:
            preds[k] = refs[k][-1] + " , with some green trees ."
        else:
            preds[k] = refs[k][0]
    edge = [
        "...",
        "A plane,, parked -- near (the) runway!!",
        "Café near the beach's edge ; 3 boats",
        "storage-tanks",
    ]
    for k, text in zip(ids[5::17], edge):
        preds[k] = text
    return preds


@pytest.fixture(scope="module")
def real_set(rs_real):
    refs = _real_references(rs_real)
    return _candidates(refs), refs


def test_parity_with_pycocoevalcap_on_real_rs_captions(real_set):
    preds, refs = real_set
    ours = score_captions(preds, refs)
    theirs = pycocoevalcap_scores(preds, refs)  # pycocoevalcap's tokenizer and scorers, run as they are
    ids, corpus, items = theirs.ids, theirs.corpus, theirs.per_item
    assert list(ours.corpus) == list(SCORE_KEYS)
    assert ours.ids == ids
    for key in SCORE_KEYS:
        assert ours.corpus[key] == pytest.approx(corpus[key], abs=1e-6), key
        assert len(ours.per_item[key]) == len(ids)
        for a, b in zip(ours.per_item[key], items[key]):
            assert a == pytest.approx(float(b), abs=1e-6), key
    # sanity: the numbers are not degenerate
    assert 0.2 < ours.corpus["BLEU_1"] < 1 and ours.corpus["CIDEr"] > 0.5


def test_evaluate_module_loads_offline_and_matches(real_set):
    import evaluate

    preds, refs = real_set
    ids = list(refs)[:40]
    metric = evaluate.load(caption_metrics_path())
    out = metric.compute(
        predictions=[preds[i] for i in ids],
        references=[refs[i] for i in ids],
        metrics=["BLEU", "CIDEr", "ROUGE_L"],
    )
    direct = score_captions(
        {i: preds[i] for i in ids}, {i: refs[i] for i in ids}, ["BLEU", "CIDEr", "ROUGE_L"]
    )
    assert out == direct.corpus
    assert set(out) == {"BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "ROUGE_L", "CIDEr"}
    with pytest.raises(ValueError, match="SPICE"):
        metric.compute(predictions=["a farm"], references=[["a farm ."]], metrics=["SPICE"])


def test_ptb_tokenizer_matches_coco_caption_rules():
    out = ptb_tokenize(["A Plane, parked.", "two storage-tanks!\nnear the road's end", "..."])
    assert out == ["a plane parked", "two storage-tanks near the road 's end", ""]


@pytest.mark.parametrize(
    ("preds", "refs", "message"),
    [
        ({"1": "a farm"}, {"2": ["a farm ."]}, "same image ids"),
        ({"1": "  "}, {"1": ["a farm ."]}, "prediction for image id '1' is empty"),
        ({"1": "a farm"}, {"1": ["a farm .", ""]}, "reference 1 for image id '1' is empty"),
        ({"1": "a farm"}, {"1": []}, "empty list"),
        ({"1": "a farm"}, {"1": "a farm ."}, "must be a list"),
        ({"1": None}, {"1": ["a farm ."]}, "must be a string"),
        ({"1": "a \udcff farm"}, {"1": ["a farm ."]}, "not valid Unicode"),
        ({}, {}, "no captions"),
    ],
)
def test_bad_caption_input_raises_clear_errors(preds, refs, message):
    with pytest.raises(ValueError, match=message):
        validate_captions(preds, refs)


def test_unknown_metric_and_spice_are_rejected():
    with pytest.raises(ValueError, match="SPICE is not computed"):
        score_captions({"1": "a"}, {"1": ["a"]}, ["spice"])
    with pytest.raises(ValueError, match="unknown caption metric 'BLEURT'"):
        score_captions({"1": "a"}, {"1": ["a"]}, ["BLEURT"])


def test_captions_cli_from_files_and_errors(tmp_path, rs_real):
    import argparse

    from hqrs.scripts import eval as eval_cmd

    parser = argparse.ArgumentParser()
    eval_cmd.register(parser.add_subparsers(), [])
    karpathy = rs_real / "ucm_captions/dataset_ucm_subset.json"
    data = json.loads(karpathy.read_text())
    preds = {img["filename"]: img["sentences"][0]["raw"] for img in data["images"]}
    refs = {img["filename"]: [s["raw"] for s in img["sentences"][1:]] for img in data["images"]}
    (tmp_path / "p.json").write_text(json.dumps(preds))
    (tmp_path / "r.json").write_text(json.dumps(refs))
    out = tmp_path / "res.json"
    args = parser.parse_args(
        [
            "eval",
            "captions",
            "--predictions",
            str(tmp_path / "p.json"),
            "--references",
            str(tmp_path / "r.json"),
            "--metrics",
            "BLEU",
            "CIDEr",
            "--out",
            str(out),
        ]
    )
    assert args.func(args) == 0
    result = json.loads(out.read_text())
    assert result["schema"] == "hqrs-eval/1" and result["task"]["type"] == "image-to-text"
    values = {m["type"]: m["value"] for m in result["metrics"]}
    assert values == pytest.approx(score_captions(preds, refs, ["BLEU", "CIDEr"]).corpus)
    assert result["versions"]["pycocoevalcap"]
    # a Karpathy file is accepted as references too (all 5 sentences)
    args = parser.parse_args(
        [
            "eval",
            "captions",
            "--predictions",
            str(tmp_path / "p.json"),
            "--references",
            str(karpathy),
            "--metrics",
            "ROUGE_L",
            "--out",
            str(out),
        ]
    )
    assert args.func(args) == 0
    # non-UTF-8 predictions file
    (tmp_path / "bad.json").write_bytes(b'{"81.tif": "caf\xe9"}')
    args = parser.parse_args(
        [
            "eval",
            "captions",
            "--predictions",
            str(tmp_path / "bad.json"),
            "--references",
            str(tmp_path / "r.json"),
        ]
    )
    with pytest.raises(ValueError, match=r"is not UTF-8 .*offset 15"):
        args.func(args)
    # mismatched ids
    (tmp_path / "few.json").write_text(json.dumps(dict(list(preds.items())[:3])))
    args = parser.parse_args(
        [
            "eval",
            "captions",
            "--predictions",
            str(tmp_path / "few.json"),
            "--references",
            str(tmp_path / "r.json"),
        ]
    )
    with pytest.raises(ValueError, match="60 reference id"):
        args.func(args)
