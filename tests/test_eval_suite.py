"""`hqrs eval suite` (#17.4): named suites over local datasets, skips with reasons, the paper-style
table with cited reference rows, one suite JSON the model card reads, and reuse on rerun."""

from __future__ import annotations

import json
import shutil

import pytest
import tiny_models

from hqrs.evaluation.suite import format_table, load_suite, suite_names
from hqrs.scripts import cli


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("m")
    return tiny_models.tiny_clip_dir(root / "a"), tiny_models.tiny_clip_dir(root / "b", image_size=64)


def _suite(model, suite, root, out, *extra):
    argv = ["-q", "eval", "suite", str(suite), "--model", str(model), "--data-root", str(root)]
    return cli.main([*argv, "--num-workers", "0", "--out-dir", str(out), *extra])


def test_rs_real_suite_runs_reuses_and_feeds_the_card(clips, rs_real, tmp_path, capsys):
    out = tmp_path / "suite"
    assert _suite(clips[0], "rs-real", rs_real, out) == 0
    printed = capsys.readouterr().out
    assert (
        "[1/3] AID (rs_real): zeroshot ..." in printed and "[3/3] RSICD (rs_real): retrieval ..." in printed
    )
    assert "AID (rs_real) top-1 %" in printed and "UCM (rs_real) mR %" in printed
    summary = json.loads((out / "suite.json").read_text())
    assert summary["schema"] == "hqrs-eval-suite/1" and summary["skipped"] == []
    by_name = {r["dataset"]["name"]: r for r in summary["results"]}
    assert {n: r["dataset"]["num_images"] for n, r in by_name.items()} == {
        "AID (rs_real)": 150,
        "UCM (rs_real)": 63,
        "RSICD (rs_real)": 95,
    }
    row = summary["table"]["rows"][0]
    top1 = next(m["value"] for m in by_name["AID (rs_real)"]["metrics"] if m["type"] == "top1_accuracy")
    mr = {
        n: next(m["value"] for m in by_name[n]["metrics"] if m["type"] == "mean_recall")
        for n in ("UCM (rs_real)", "RSICD (rs_real)")
    }
    assert row["values"] == [top1, mr["UCM (rs_real)"], mr["RSICD (rs_real)"]] and row["source"] == "this run"
    # a rerun reuses every finished entry (same entry, paths and weights)
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "entries").glob("*.json")}
    assert _suite(clips[0], "rs-real", rs_real, out) == 0
    assert capsys.readouterr().out.count(": reused ") == 3
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (out / "entries").glob("*.json")}
    # the suite JSON goes into the card as one result per entry and metric
    stage = tmp_path / "stage"
    push = ["-q", "push", "model", str(clips[0]), "--repo-id", "me/m", "--results", str(out / "suite.json")]
    assert cli.main([*push, "--dry-run", str(stage)]) == 0
    card = (stage / "README.md").read_text()
    assert "| zero-shot-image-classification | AID (rs_real) | " in card and "RSICD (rs_real)" in card
    # ...and not into the card of another model
    assert cli.main(["-q", "push", "model", str(clips[1]), *push[4:], "--dry-run", str(tmp_path / "s2")]) == 1


def test_absent_datasets_are_skipped_with_what_is_missing(clips, rs_real, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(rs_real / "aid_classification" / "Beach", root / "AID" / "Beach")
    shutil.copytree(rs_real / "aid_classification" / "Pond", root / "AID" / "Pond")
    assert _suite(clips[0], "hqrs-paper", root, tmp_path / "o") == 0
    printed = capsys.readouterr().out
    assert "[1/10] AID: zeroshot ..." in printed
    assert f"[2/10] RESISC45: skipped, dataset {str(root / 'NWPU-RESISC45')!r} not found" in printed
    assert f"[7/10] RSICD: skipped, karpathy {str(root / 'RSICD/dataset_rsicd.json')!r} not found" in printed
    assert (
        "[10/10] AIR-SLT: skipped" in printed and "suite hqrs-paper: 1 of 10 entries (9 skipped)" in printed
    )
    summary = json.loads((tmp_path / "o" / "suite.json").read_text())
    assert len(summary["skipped"]) == 9 and len(summary["results"]) == 1


def test_suite_file_with_reference_rows_and_model_change(clips, rs_real, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(rs_real / "aid_classification" / "Beach", root / "set" / "Beach")
    shutil.copytree(rs_real / "aid_classification" / "Pond", root / "set" / "Pond")
    suite = tmp_path / "mine.yaml"
    suite.write_text(
        "entries:\n  - {name: Two, task: zeroshot, dataset: set, templates: satellite_photo}\n"
        "references:\n  - {model: Example-CLIP, source: 'made-up row for this test', values: {Two: 42.5}}\n"
    )
    assert _suite(clips[0], suite, root, tmp_path / "o") == 0
    printed = capsys.readouterr().out
    assert "Example-CLIP  42.50" in printed and "Example-CLIP: made-up row for this test" in printed
    # another model's run does not reuse the first one's entry
    assert _suite(clips[1], suite, root, tmp_path / "o") == 0
    assert ": reused " not in capsys.readouterr().out


@pytest.mark.parametrize(
    "text, message",
    [
        ("entries: []\n", "non-empty 'entries' list"),
        ("entries:\n  - {name: A, task: detect, dataset: x}\n", "task 'detect' is not one of"),
        ("entries:\n  - {name: A, task: retrieval, karpathy: k.json}\n", "missing \\['images'\\]"),
        ("entries:\n  - {name: A, task: selo, dataset: x, bogus: 1}\n", "unknown keys \\['bogus'\\]"),
        (
            "entries:\n  - {name: A, task: selo, dataset: x}\nreferences:\n  - {model: M, values: {A: 1}}\n",
            "needs 'model' and 'source'",
        ),
        (
            "entries:\n  - {name: A, task: selo, dataset: x}\nreferences:\n  - {model: M, source: s, values: {B: 1}}\n",
            "'B' is not an entry",
        ),
    ],
)
def test_bad_suite_files(tmp_path, text, message):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_suite(path)


def test_shipped_suites_are_valid_and_cite_every_reference():
    assert suite_names() == ["hqrs-paper", "rs-real"]
    for name in suite_names():
        suite = load_suite(name)
        assert all(r["source"] for r in suite["references"])
    with pytest.raises(ValueError, match="unknown suite 'nope'"):
        load_suite("nope")
    table = {
        "columns": [{"entry": "A", "metric": "Rmi"}],
        "rows": [{"model": "m", "values": [None], "source": "x"}],
    }
    assert "m      -" in format_table(table)
