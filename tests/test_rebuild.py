"""Rebuilding into the same ``--out``: rows come from this build's input only, a format switch leaves
what a fresh build of that format writes, options that cannot apply are errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

from hqrs.dataset_builder.build_folder import BuildFolder
from hqrs.dataset_builder.export import export_dataset
from hqrs.dataset_builder.parallel import available_cpus, effective_num_proc
from hqrs.hub_cards.cards import render_dataset_card
from hqrs.scripts.cli import main


@pytest.fixture(autouse=True)
def _loopback_and_unix_sockets():
    """datatrove's local executor uses AF_UNIX sockets (local by nature)."""
    from pytest_socket import socket_allow_hosts

    socket_allow_hosts(["127.0.0.1", "::1"], allow_unix_socket=True)
    yield


def _dota(rs_real: Path) -> str:
    d = rs_real / "detection_dota"
    return f"dota:{d / 'labelTxt'}?images={d / 'images'}"


def _sydney(rs_real: Path, extra: str = "") -> str:
    d = rs_real / "sydney_captions"
    return f"karpathy:{d / 'dataset_sydney_subset.json'}?images={d / 'images'}{extra}"


def _hqrs(capsys, *argv: str) -> tuple[int, str]:
    code = main(["build", "--no-progress", *argv])
    captured = capsys.readouterr()
    return code, captured.err


def _sources_column(out: Path) -> list[str]:
    folder = BuildFolder(out)
    return sorted(
        s
        for f in folder.config_shards("default")
        for s in pq.read_table(f, columns=["source"])["source"].to_pylist()
    )


def _files(out: Path) -> list[str]:
    """The build's outputs (the MpGI run, staging and demo scenes are its working files)."""
    skip = {"mpgi_run", ".staging", ".cache", "demo_scenes"}
    return sorted(
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and not skip & set(p.relative_to(out).parts)
    )


def test_rebuild_with_other_sources_keeps_only_this_input(rs_real, tmp_path, capsys):
    out = tmp_path / "X"
    assert _hqrs(capsys, "--out", str(out), "--source", _dota(rs_real))[0] == 0
    assert _sources_column(out) == ["dota"] * 3
    # the same OUT/mpgi_run with another input: its rows only (it held 5 = 2 sydney + 3 dota before)
    assert _hqrs(capsys, "--out", str(out), "--source", _sydney(rs_real))[0] == 0
    report = json.loads((out / "build_report.json").read_text())
    assert report["images"] == 2 and report["records"] == {"sydney": 2}
    assert _sources_column(out) == ["sydney", "sydney"]
    # back to the first input: its 3 images again (its MpGI results are reused, not its old plan)
    assert _hqrs(capsys, "--out", str(out), "--source", _dota(rs_real))[0] == 0
    assert _sources_column(out) == ["dota"] * 3
    # the same input again resumes: every shard reused
    assert _hqrs(capsys, "--out", str(out), "--source", _dota(rs_real))[0] == 0
    report = json.loads((out / "build_report.json").read_text())
    assert report["shards"] == {**report["shards"], "written": 0, "reused": 3}


def test_failing_input_into_an_earlier_build_gives_none_of_its_images(rs_real, tmp_path, capsys):
    out = tmp_path / "X"
    assert _hqrs(capsys, "--out", str(out), "--source", _dota(rs_real))[0] == 0
    # every entry of this input is skipped (its images folder is empty): the build reads no image
    empty = tmp_path / "no_images"
    empty.mkdir()
    sydney = rs_real / "sydney_captions" / "dataset_sydney_subset.json"
    code, err = _hqrs(capsys, "--out", str(out), "--source", f"karpathy:{sydney}?images={empty}")
    assert code == 1
    assert err.startswith("hqrs: error: the build read no usable image") and err.count("\n") == 1
    # no shard, no card of the earlier build: nothing loads as if it were this input's
    assert _files(out) == [".hqrs_export.json", "build_report.json"]
    assert json.loads((out / "build_report.json").read_text())["images"] == 0


@pytest.mark.parametrize(
    ("first", "then"),
    [
        ("parquet", "webdataset"),
        ("parquet", "open_clip-csv"),
        ("open_clip-csv", "parquet"),
        ("webdataset", "parquet"),
    ],
)
def test_format_switch_leaves_what_a_fresh_build_writes(rs_real, tmp_path, first, then):
    fresh, mixed = tmp_path / "fresh", tmp_path / "mixed"
    common = dict(captions_csv=None, sources=[_sydney(rs_real)], progress=False)
    export_dataset(mixed, fmt=first, mpgi_dir=str(mixed / "mpgi_run"), **common)
    export_dataset(mixed, fmt=then, mpgi_dir=str(mixed / "mpgi_run"), **common)
    export_dataset(fresh, fmt=then, mpgi_dir=str(fresh / "mpgi_run"), **common)
    assert _files(mixed) == _files(fresh)
    assert BuildFolder(mixed).format() == then
    if then == "parquet":
        assert datasets.load_dataset(str(mixed))["train"].num_rows == 2
    elif then == "webdataset":  # a parquet card would send load_dataset to data files that are gone
        loaded = datasets.load_dataset(str(mixed))
        assert loaded["train"].num_rows == datasets.load_dataset(str(fresh))["train"].num_rows == 2
    else:
        assert (mixed / "train.csv").read_text() == (fresh / "train.csv").read_text()


def test_csv_rebuild_of_another_input_drops_the_earlier_images(rs_real, tmp_path):
    out = tmp_path / "csv"
    for source in (_dota(rs_real), _sydney(rs_real)):
        export_dataset(out, sources=[source], fmt="open_clip-csv", progress=False)
    listed = {line.split("\t")[0] for line in (out / "train.csv").read_text().splitlines()[1:]}
    on_disk = {f"images/{p.name}" for p in (out / "images").iterdir()}
    assert on_disk == listed and len(on_disk) == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--from-run", "runs/X", "--recipe", "gpu-vllm"],
            "hqrs: error: --recipe 'gpu-vllm' applies to a new MpGI run (--source, --demo); --from-run "
            "reuses that run's recipe: drop --recipe",
        ),
        (
            ["--from-run", "runs/X", "--run-dir", "r"],
            "hqrs: error: --run-dir 'r' applies to a new MpGI run (--source, --demo); --from-run "
            "reuses that run's recipe: drop --run-dir",
        ),
        (
            ["--captions-csv", "caps.csv", "--recipe", "offline"],
            "hqrs: error: --recipe 'offline' applies to a new MpGI run (--source, --demo); --captions-csv "
            "holds the final captions (no MpGI run): drop --recipe",
        ),
        (
            ["--demo", "--format", "webdataset", "--config", "pairs"],
            "hqrs: error: --config pairs applies to --format parquet; --format webdataset writes one "
            "layout (drop --config)",
        ),
        (
            ["--demo", "--split-ratios", "0,0,0"],
            "hqrs: error: split ratios must sum to more than 0 (e.g. 0.9,0.05,0.05), got '0,0,0' (sum 0)",
        ),
    ],
)
def test_options_that_cannot_apply_are_errors(tmp_path, capsys, argv, message):
    code, err = _hqrs(capsys, "--out", str(tmp_path / "out"), *argv)
    assert code == 1 and err == message + "\n"
    assert not (tmp_path / "out" / "data").exists()


def test_num_proc_beyond_the_cpus_is_capped_with_a_warning(tmp_path, capsys, caplog):
    """`--num-proc 1000000` used to try to start a million interpreters (hung, leaked semaphores)."""
    cpus = available_cpus()
    assert effective_num_proc(1) == 1 and effective_num_proc(cpus) == cpus
    with caplog.at_level(logging.WARNING, logger="hqrs.parallel"):
        assert effective_num_proc(1_000_000) == cpus
    assert f"num_proc=1000000 is more than the {cpus} available CPUs; using {cpus} processes" in caplog.text
    out = tmp_path / "demo"
    code, err = _hqrs(capsys, "--demo", "--out", str(out), "--num-proc", "1000000")
    assert code == 0, err
    assert json.loads((out / "build_report.json").read_text())["images"] > 0


def test_pushed_card_says_run_totals_are_the_run_directorys(rs_real, tmp_path, capsys):
    """The MpGI run of `OUT/mpgi_run` keeps earlier inputs' records: its totals are labelled as the run's,
    and the build's own image count is the build report's."""
    out = tmp_path / "X"
    assert _hqrs(capsys, "--out", str(out), "--source", _dota(rs_real))[0] == 0
    assert _hqrs(capsys, "--out", str(out), "--source", _sydney(rs_real))[0] == 0
    text = str(render_dataset_card(out, "me/x"))
    assert "- **MpGI run totals** (every record of the run directory, which can also hold records of" in text
    assert "5 captioned" in text  # 3 DOTA + 2 Sydney records in the run directory
    assert "- **images:** 2;" in text  # this build: the two Sydney images
