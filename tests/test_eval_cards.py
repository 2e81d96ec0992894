"""Cards say what happened (#15.5), results belong to the pushed model (#15.6), and card/plot polish
(#15.12): whole-number statistics, axis titles and ticks, no PNG next to /dev/null, readable files."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
import tiny_models
from huggingface_hub import DatasetCard

from hqrs.evaluation.plots import nice_ticks
from hqrs.hub_cards.cards import caption_summary, sources_from_report
from hqrs.scripts import cli


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("m")
    return tiny_models.tiny_clip_dir(root / "a"), tiny_models.tiny_clip_dir(root / "b", image_size=64)


@pytest.fixture(scope="module")
def aid_build(tmp_path_factory, rs_real):
    """An offline build (recipe `offline`, no model) of 2 AID classes, under a folder named AID."""
    root = tmp_path_factory.mktemp("aid")
    for cls in ("Beach", "Pond"):
        shutil.copytree(rs_real / "aid_classification" / cls, root / "AID" / cls)
    old = os.umask(0o022)
    try:
        assert cli.main(["-q", "build", "--source", f"folder:{root / 'AID'}", "--out", str(root / "b")]) == 0
    finally:
        os.umask(old)
    return root / "b"


def test_offline_build_card_states_what_happened(aid_build, tmp_path):
    readme = (aid_build / "README.md").read_text()
    assert "PATH_OR_REPO_ID" not in readme and "https://github.com/)" not in readme
    assert 'load_dataset("b")' in readme
    for name in ("README.md", "build_report.json"):  # readable like any file the user writes
        assert stat.S_IMODE((aid_build / name).stat().st_mode) == 0o644
    out = tmp_path / "stage"
    argv = ["-q", "push", "dataset", str(aid_build), "--repo-id", "me/aid", "--dry-run", str(out)]
    assert cli.main(argv) == 0
    card = DatasetCard.load(out / "README.md").text
    assert "MLLM perspectives" not in card and "an LLM" not in card
    assert "recipe `offline`" in card and "Models: none (no MLLM or LLM was called)" in card
    assert "No source datasets were recorded" not in card
    assert "| AID | folder | 10 | no licence stated by the authors | AID (Xia et al., TGRS 2017) |" in card


def test_card_summary_and_sources_from_report_and_manifest():
    manifest = {"recipe": "gpu-vllm", "models": {"qwen": "Qwen/Qwen2.5-VL-7B"}, "integrator": "openai"}
    text = caption_summary({}, manifest)
    assert "`Qwen/Qwen2.5-VL-7B` (qwen)" in text and "LLM integrator (backend `openai`)" in text
    assert "no model ran" in caption_summary({"input": {"captions_csv": "x.tsv"}}, {})
    report = {
        "input": {
            "sources": [
                "dota:/data/DOTA/labelTxt?images=/data/DOTA/images",
                "voc:/data/DIOR/Annotations?images=/data/DIOR/JPEGImages",
                "karpathy:/data/rsicd/dataset_rsicd.json?images=/data/rsicd/images&name=RSICD",
                "folder:/data/UCMerced_LandUse/Images",
                "folder:/data/mine?name=my-scenes",
                "karpathy:/data/sydney/dataset.json?name=Sydney",
            ]
        },
        # counted by source name: the name= option, else the kind
        "records": {"dota": 3, "voc": 1, "RSICD": 5, "folder": 2, "my-scenes": 4, "Sydney": 2},
    }
    rows = sources_from_report(report, [{"name": "my-scenes", "license": "cc-by-4.0"}])
    assert [(r["name"], r["images"]) for r in rows] == [
        ("DOTA", 3),
        ("DIOR", 1),
        ("RSICD", 5),
        ("UCMerced_LandUse", 2),
        ("my-scenes", 4),
        ("Sydney", 2),
    ]
    licences = [r["license"] for r in rows]
    assert licences[0].startswith("academic purposes only") and licences[4] == "cc-by-4.0"
    assert licences[3].startswith("USGS public-domain") and licences[5] == "no licence stated by the authors"


def test_results_of_another_model_are_refused(clips, rs_real, tmp_path, capsys):
    a, b = clips
    zs = tmp_path / "zs.json"
    argv = ["-q", "eval", "zeroshot", "--model", str(a), "--dataset", str(rs_real / "aid_classification")]
    assert cli.main([*argv, "--num-workers", "0", "--out", str(zs)]) == 0
    model = json.loads(zs.read_text())["model"]
    assert model["class"] == "CLIPModel" and len(model["weights_sha256"]) == 64
    push = ["-q", "push", "model", "--repo-id", "me/clip", "--results", str(zs), "--dry-run"]
    assert cli.main([*push, str(tmp_path / "ok"), str(a)]) == 0  # measured on this folder
    assert cli.main([*push, str(tmp_path / "other"), str(b)]) == 1
    err = capsys.readouterr().err
    assert "results from another model" in err and str(a) in err and "--allow-other-model-results" in err
    assert not (tmp_path / "other").exists()
    assert cli.main([*push, str(tmp_path / "forced"), str(b), "--allow-other-model-results"]) == 0
    # a results file that records no weights hash cannot prove where it came from
    raw = json.loads(zs.read_text())
    raw["model"].pop("weights_sha256")
    (tmp_path / "old.json").write_text(json.dumps(raw))
    push[push.index(str(zs))] = str(tmp_path / "old.json")
    assert cli.main([*push, str(tmp_path / "old"), str(a)]) == 1
    assert "no weights hash recorded" in capsys.readouterr().err


def test_out_dev_null_writes_no_png_beside_it(clips, rs_real, tmp_path, capsys):
    before = os.path.exists("/dev/null_confusion.png")
    argv = [
        "-q",
        "eval",
        "zeroshot",
        "--model",
        str(clips[0]),
        "--dataset",
        str(rs_real / "aid_classification"),
    ]
    assert cli.main([*argv, "--num-workers", "0", "--out", "/dev/null"]) == 0
    assert os.path.exists("/dev/null_confusion.png") == before == False  # noqa: E712
    assert "confusion matrix:" not in capsys.readouterr().out
    png = tmp_path / "cm.png"
    assert cli.main([*argv, "--num-workers", "0", "--out", "/dev/null", "--confusion-png", str(png)]) == 0
    assert png.stat().st_size > 0


def test_push_commands_describe_themselves(capsys):
    for sub in ("model", "dataset"):
        with pytest.raises(SystemExit):
            cli.main(["push", sub, "--help"])
        assert "check every staged file for secrets" in " ".join(capsys.readouterr().out.split())


def test_histogram_ticks_are_round_values_between_the_ends():
    assert nice_ticks(0, 100) == [0, 20, 40, 60, 80, 100]
    assert nice_ticks(3, 47) == [10, 20, 30, 40]
    assert nice_ticks(0.13, 2.4) == [0.5, 1.0, 1.5, 2.0]
    assert nice_ticks(5, 5) == [5]
