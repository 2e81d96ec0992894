"""`hqrs eval zeroshot / retrieval / dataset` end to end with tiny real models on real RS images."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import tiny_models
import torch
from PIL import Image

from hqrs.evaluation.data import load_classification, normalize_classname
from hqrs.evaluation.zeroshot import classification_metrics, load_templates, resolve_templates


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "clip": tiny_models.tiny_clip_dir(root / "clip"),
        "coca": tiny_models.tiny_coca_dir(root / "coca"),
    }


@pytest.fixture(scope="module")
def parser():
    from hqrs.scripts import eval as eval_cmd

    p = argparse.ArgumentParser()
    eval_cmd.register(p.add_subparsers(), [])
    return p


def _run(parser, argv):
    args = parser.parse_args(argv)
    assert args.func(args) == 0


def test_classname_normalisation():
    cases = {
        "baseballdiamond": "baseball diamond",
        "storage_tanks": "storage tanks",
        "BaseballField": "baseball field",
        "DenseResidential": "dense residential",
        "mobilehomepark": "mobile home park",
        "tenniscourt": "tennis court",
        "Ground-Track-Field": "ground track field",
        "01_airport": "airport",
        "SeaLake": "sea or lake",
    }
    assert {k: normalize_classname(k) for k in cases} == cases
    with pytest.raises(ValueError, match="non-empty"):
        normalize_classname(" ")


def test_template_sets(tmp_path):
    sets = load_templates()
    assert (
        len(sets["clip_resisc45"]) == 18 and sets["clip_benchmark_resisc45"][0] == "a sattelite image of {}"
    )
    assert all(t.count("{}") == 1 for ts in sets.values() for t in ts)
    name, templates = resolve_templates(None)
    assert name == "clip_resisc45"
    (tmp_path / "t.txt").write_text("an image of {}.\nthe {} seen from a plane\n")
    assert resolve_templates(str(tmp_path / "t.txt")) == (
        "t",
        ["an image of {}.", "the {} seen from a plane"],
    )
    (tmp_path / "bad.txt").write_text("no placeholder\n")
    with pytest.raises(ValueError, match="exactly one"):
        resolve_templates(str(tmp_path / "bad.txt"))
    with pytest.raises(ValueError, match="neither a shipped set"):
        resolve_templates("nope")


def test_classification_metrics_by_hand():
    logits = torch.tensor([[3.0, 1, 0], [0, 2, 1], [2, 0, 1], [0, 1, 2]])  # preds 0, 1, 0, 2
    out = classification_metrics(logits, [0, 1, 2, 2], ["a", "b", "c"])
    assert out["metrics"]["top1_accuracy"] == 75.0
    assert out["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    assert out["per_class_accuracy"] == {"a": 100.0, "b": 100.0, "c": 50.0}
    assert out["metrics"]["mean_per_class_accuracy"] == pytest.approx(250 / 3)


@pytest.mark.parametrize("kind", ["clip", "coca"])
def test_zeroshot_cli_on_aid(kind, models, parser, rs_real, tmp_path):
    out = tmp_path / "zs.json"
    argv = [
        "eval",
        "zeroshot",
        "--model",
        str(models[kind]),
        "--dataset",
        str(rs_real / "aid_classification"),
        "--templates",
        "clip_eurosat",
        "--num-workers",
        "0",
        "--out",
        str(out),
    ]
    _run(parser, argv + (["--trust-remote-code"] if kind == "coca" else []))
    result = json.loads(out.read_text())
    metrics = {m["type"]: m["value"] for m in result["metrics"]}
    cm = torch.tensor(result["details"]["confusion_matrix"])
    assert cm.shape == (30, 30) and cm.sum() == 150
    assert metrics["top1_accuracy"] == pytest.approx(cm.trace().item() / 150 * 100)
    assert metrics["top1_accuracy"] <= metrics["top5_accuracy"]
    assert result["protocol"]["classnames"]["StorageTanks"] == "storage tanks"
    assert result["model"]["class"] == ("CLIPModel" if kind == "clip" else "RSCoCaModel")
    with Image.open(result["details"]["confusion_png"]) as im:
        assert im.format == "PNG" and im.width > 30 * 12


def test_zeroshot_from_parquet_dataset(tmp_path, rs_real):
    import datasets

    files = sorted((rs_real / "aid_classification").glob("[BP]*/*_1.jpg"))
    ds = datasets.Dataset.from_dict(
        {"image": [str(f) for f in files], "scene": [f.parent.name for f in files]},
        features=datasets.Features({"image": datasets.Image(), "scene": datasets.Value("string")}),
    )
    ds.to_parquet(str(tmp_path / "aid.parquet"))
    data = load_classification(tmp_path / "aid.parquet", label_column="scene")
    assert data.classnames == sorted(f.parent.name for f in files) and len(data) == len(files)
    assert data.images[0].size == (150, 150)
    with pytest.raises(ValueError, match="no label column 'label'"):
        load_classification(tmp_path / "aid.parquet", label_column="label")


def test_class_folder_is_read_by_the_builder_folder_source(tmp_path, rs_real):
    import shutil

    for cls, names in {"Beach": ["beach_1.jpg", "beach_2.jpg"], "Pond": ["pond_1.jpg"]}.items():
        (tmp_path / "set" / cls).mkdir(parents=True)
        for name in names:
            shutil.copy(rs_real / "aid_classification" / cls / name, tmp_path / "set" / cls / name)
    (tmp_path / "set" / "Pond" / "notes.txt").write_text("not an image")
    (tmp_path / "set" / "README.md").write_text("files at the top are not images of a class")
    whole = (tmp_path / "set" / "Beach" / "beach_2.jpg").read_bytes()
    (tmp_path / "set" / "Pond" / "pond_cut.jpg").write_bytes(whole[: len(whole) // 2])  # truncated
    data = load_classification(tmp_path / "set")
    assert data.classnames == ["Beach", "Pond"] and data.labels == [0, 0, 1]
    assert [p.name for p in data.images] == ["beach_1.jpg", "beach_2.jpg", "pond_1.jpg"]
    assert sorted((Path(s["file"]).name, s["reason"][:30]) for s in data.skipped) == [
        ("notes.txt", "not an image file extension (."),
        ("pond_cut.jpg", "truncated or corrupt image dat"),
    ]
    assert len(load_classification(f"folder:{tmp_path / 'set'}?verify=false")) == 4  # checks off
    with pytest.raises(ValueError, match="unknown option 'bogus'"):
        load_classification(f"folder:{tmp_path / 'set'}?bogus=1")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_classification(f"folder:{tmp_path / 'missing'}")


def test_retrieval_cli_on_ucm(models, parser, rs_real, tmp_path):
    out = tmp_path / "ret.json"
    _run(
        parser,
        [
            "eval",
            "retrieval",
            "--model",
            str(models["clip"]),
            "--karpathy",
            str(rs_real / "ucm_captions/dataset_ucm_subset.json"),
            "--images",
            str(rs_real / "ucm_captions/images"),
            "--split",
            "test",
            "--num-workers",
            "0",
            "--out",
            str(out),
        ],
    )
    result = json.loads(out.read_text())
    m = {x["type"]: x["value"] for x in result["metrics"]}
    assert result["dataset"]["num_images"] == 63 and result["dataset"]["num_texts"] == 315
    assert m["image_to_text_R@1"] <= m["image_to_text_R@5"] <= m["image_to_text_R@10"] <= 100
    assert m["mean_recall"] == pytest.approx(sum(v for k, v in m.items() if "R@" in k) / 6)
    from hqrs.evaluation.results import model_index_entry

    entry = model_index_entry(result)
    assert entry["task"]["type"] == "image-text-retrieval" and entry["dataset"]["split"] == "test"
    assert {x["type"] for x in entry["metrics"]} == set(m)


def test_dataset_quality_on_mpgi_results(models, parser, rs_real, tmp_path):
    from hqrs.dataset_builder.records import Caption, ImageRecord, MpGIResult, ObjectAnnotation

    img = rs_real / "detection_dota/images/P0075.png"
    rec = ImageRecord(
        image_id="p0075",
        image=str(img),
        source="dota",
        width=451,
        height=839,
        objects=[ObjectAnnotation("roundabout", bbox=(1, 1, 50, 50))],
        exhaustive_classes=["roundabout", "ship", "harbor"],
    )
    caps = [
        Caption("A roundabout next to a road with no ships around.", "short"),  # consistent (negated)
        Caption("Two ships moored near a roundabout.", "medium"),  # contradicts: ship
        Caption("A harbor surrounds the roundabout in this aerial image of the coast.", "long"),
    ]  # harbor
    line = MpGIResult(record=rec, rule_text="1 roundabout", captions=caps).to_dict()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.jsonl").write_text(json.dumps(line) + "\n")
    _run(
        parser,
        [
            "eval",
            "dataset",
            str(tmp_path / "run"),
            "--clip-model",
            str(models["clip"]),
            "--num-workers",
            "0",
            "--out-dir",
            str(tmp_path / "q"),
        ],
    )
    result = json.loads((tmp_path / "q" / "dataset_quality.json").read_text())
    m = {x["type"]: x["value"] for x in result["metrics"]}
    assert m["num_captions"] == 3 and m["fact_consistency_rate"] == pytest.approx(100 / 3)
    assert dict(result["details"]["fact_consistency"]["most_common_problems"]) == {
        "mentions ships, but the annotations show none": 1,
        "mentions harbors, but the annotations show none": 1,
    }
    assert 0 <= m["clip_score"] <= 2.5
    assert (tmp_path / "q" / "caption_length.png").is_file() and (tmp_path / "q" / "clip_score.png").is_file()


def test_dataset_quality_on_a_build_folder_and_its_run(models, parser, tmp_path):
    """`hqrs eval dataset` on what `hqrs build` writes: the parquet rows (images from their embedded
    bytes) with the facts of the MpGI run behind them; and on the run directory itself."""
    from hqrs.scripts import cli

    build = tmp_path / "demo"
    assert cli.main(["-q", "build", "--demo", "--out", str(build)]) == 0
    argv = ["eval", "dataset", "--clip-model", str(models["clip"]), "--num-workers", "0"]
    _run(parser, [*argv, str(build), "--out-dir", str(tmp_path / "q_build")])
    _run(parser, ["eval", "dataset", str(build / "mpgi_run"), "--out-dir", str(tmp_path / "q_run")])
    by_build = json.loads((tmp_path / "q_build" / "dataset_quality.json").read_text())
    by_run = json.loads((tmp_path / "q_run" / "dataset_quality.json").read_text())
    m = {x["type"]: x["value"] for x in by_build["metrics"]}
    assert by_build["dataset"]["num_images"] == 16 and m["num_captions"] == 16 * 6
    assert by_build["details"]["clip_score"]["count"] == 16 * 6 and 0 <= m["clip_score"] <= 2.5
    assert by_build["details"]["fact_consistency"]["checked"] > 0 and m["fact_consistency_rate"] == 100.0
    assert {x["type"]: x["value"] for x in by_run["metrics"]} == {
        k: v for k, v in m.items() if k != "clip_score"
    }


def test_captions_cli_generates_with_rs_coca(models, parser, rs_real, tmp_path):
    out = tmp_path / "cap.json"
    _run(
        parser,
        [
            "eval",
            "captions",
            "--model",
            str(models["coca"]),
            "--trust-remote-code",
            "--karpathy",
            str(rs_real / "ucm_captions/dataset_ucm_subset.json"),
            "--images",
            str(rs_real / "ucm_captions/images"),
            "--max-new-tokens",
            "6",
            "--metrics",
            "BLEU",
            "ROUGE_L",
            "--out",
            str(out),
        ],
    )
    result = json.loads(out.read_text())
    preds = result["details"]["predictions"]
    assert len(preds) == 63 and all(isinstance(v, str) and v for v in preds.values())
    assert result["model"]["class"].startswith("RSCoCa") and len(result["model"]["weights_sha256"]) == 64
    assert {m["type"] for m in result["metrics"]} == {"BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "ROUGE_L"}
