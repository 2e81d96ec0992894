"""BuildFolder (the one owner of a build folder's layout), the typed build API and the single source of
the split defaults."""

from __future__ import annotations

import argparse
import inspect
import json
from dataclasses import fields

import pytest
from PIL import Image

from hqrs.dataset_builder.build_folder import BuildFolder
from hqrs.dataset_builder.builder import HQRSITConfig
from hqrs.dataset_builder.export import BuildConfig, BuildInput, BuildReport, build, export_dataset
from hqrs.dataset_builder.split_settings import SplitSettings, parse_size
from hqrs.scripts import build as build_cmd


def test_split_defaults_have_one_source():
    """export_dataset's keywords, HQRSITConfig's fields and `hqrs build`'s options default to SplitSettings'."""
    default = SplitSettings()
    sig = inspect.signature(export_dataset).parameters
    cfg = {f.name: f.default for f in fields(HQRSITConfig)}
    parser = argparse.ArgumentParser()
    build_cmd.register(parser.add_subparsers(), [])
    args = parser.parse_args(["build", "--out", "x"])
    for ours, theirs, cli in [
        ("ratios", "split_ratios", None),
        ("seed", "seed", "seed"),
        ("near_dup_distance", "near_dup_distance", "near_dup_distance"),
        ("contamination_distance", "contamination_distance", "contamination_distance"),
        ("shard_size", "shard_size", "shard_size"),
    ]:
        want = getattr(SplitSettings, ours)
        assert sig[theirs].default == want and cfg[theirs] == want, ours
        if cli:
            assert str(getattr(args, cli)) == str(want), ours
    assert SplitSettings(ratios=build_cmd.DEFAULT_RATIOS).ratios == default.ratios


def test_shard_size_is_read_by_datasets_helper():
    assert parse_size(2000) == ("rows", 2000) and parse_size("500MB") == ("bytes", 500_000_000)
    assert parse_size("500mb") == ("bytes", 500_000_000)  # not megabits
    assert parse_size("2GiB") == ("bytes", 2 << 30)
    for bad in ["abc", "0MB", "-5MB", "MB", 0]:
        with pytest.raises(ValueError, match=f"got {bad!r}"):
            parse_size(bad)


def test_build_folder_paths_are_confined_and_readers_find_the_layout(tmp_path):
    folder = BuildFolder(tmp_path / "out")
    assert (
        folder.parquet_shard("pairs", "train", 1, 3)
        == tmp_path / "out/data/pairs/train-00001-of-00003.parquet"
    )
    assert folder.wds_shard("test", 0, 1).name == "test-00000-of-00001.tar"
    assert folder.csv_part("train", 0, 2) == tmp_path / "out/.parts/train-00000-of-00002.tsv"
    for name in ["../../x.png", "/tmp/x.png"]:
        with pytest.raises(ValueError, match="outside the output folder"):
            folder.image_file(name)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".staging").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="outside the output folder"):
        folder.staging  # noqa: B018
    assert folder.configs() == [] and not folder.is_build() and folder.card_configs() == []


def test_build_returns_a_typed_report_and_the_folder_reads_it_back(tmp_path):
    img = tmp_path / "img"
    img.mkdir()
    rows = ["filepath,caption"]
    for i in range(5):
        Image.new("RGB", (32, 32), (40 * i, 10, 200 - 30 * i)).save(img / f"{i}.png")
        rows.append(f"img/{i}.png,caption of image {i}")
    (tmp_path / "caps.csv").write_text("\n".join(rows) + "\n")
    config = BuildConfig(configs=("default", "pairs"), progress=False, split=SplitSettings(ratios=(1, 0, 0)))
    report = build(BuildInput(captions_csv=str(tmp_path / "caps.csv")), tmp_path / "out", config)
    assert isinstance(report, BuildReport) and report.images == 5
    folder = BuildFolder(tmp_path / "out")
    assert folder.read_report() == json.loads(json.dumps(report.to_dict()))
    assert folder.configs() == ["default", "pairs"] == sorted(folder.card_configs())
    assert folder.splits("pairs") == ["train"] and len(folder.shard_files("pairs")["train"]) == 1
    with pytest.raises(ValueError, match="exactly one input"):
        BuildInput(run_dir="r", captions_csv="c")
    with pytest.raises(ValueError, match="format must be one of"):
        BuildConfig(fmt="zip")
