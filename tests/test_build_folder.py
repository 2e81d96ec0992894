"""BuildFolder (the one owner of a build folder's layout), the typed build API and the single source of
the split defaults."""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import re
from dataclasses import fields
from pathlib import Path

import pytest
from PIL import Image

from hqrs.dataset_builder import build_folder as layout
from hqrs.dataset_builder import export
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
    # the readers the card and the hub push use
    assert folder.format() == "parquet" and folder.run_dir({}) == tmp_path / "out" / "mpgi_run"
    published = [folder.relative(p) for p in folder.publish_files()]
    assert published == [
        "build_report.json",
        *(folder.relative(p) for c in ("default", "pairs") for p in folder.config_shards(c)),
    ]


def test_shard_names_parse_back():
    name = layout.shard_name("validation", 3, 12, "parquet")
    assert name == "validation-00003-of-00012.parquet"
    assert layout.parse_shard(name, "parquet") == "validation" and layout.parse_shard(name, "tar") is None
    for other in ["train.parquet", "train-0-of-x.parquet", "-00000-of-00001.tar", "a b-00000-of-00001.tar"]:
        assert layout.parse_shard(other) is None, other
    assert BuildFolder.data_files("pairs", "test") == "data/pairs/test-*.parquet"
    assert export.FORMATS == layout.FORMATS  # what `hqrs build --format` accepts is what the folder knows


# --------------------------------------------------------------------------- one owner of the layout

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("dataset_builder", "hub_cards", "modeling", "evaluation", "scripts")
# the names of a build folder's layout; a module that needs one asks BuildFolder
LAYOUT_NAMES = {layout.DATA, layout.REPORT, layout.MPGI_RUN, ".staging"}
LAYOUT_PARTS = (layout.REPORT, layout.MPGI_RUN, ".staging", "-of-")
# (file, literal): what is legitimately not the build layout
ALLOWED = {
    ("hub_cards/cards.py", "data"): "_GENERIC_DIRS: source folder names that say nothing about the source",
}


def layout_literals(source: str) -> list[tuple[int, str]]:
    """String literals of ``source`` that spell a build-folder path: a layout name (``data``,
    ``build_report.json``, ``mpgi_run``, ``.staging``), a ``data/...`` path or a ``-of-`` shard name.
    Docstrings, prose (a literal with whitespace: messages), dict keys and subscripts are not paths."""
    tree = ast.parse(source)
    skip = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant):
                skip.add(id(body[0].value))
        if isinstance(node, ast.Dict):
            skip.update(id(k) for k in node.keys if k is not None)
        if isinstance(node, ast.Subscript):
            skip.add(id(node.slice))
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in skip:
            continue
        text = node.value
        if re.search(r"\s", text):
            continue
        if text in LAYOUT_NAMES or text.startswith("data/") or any(p in text for p in LAYOUT_PARTS):
            found.append((node.lineno, text))
    return found


def test_layout_literals_are_caught():
    planted = '''"""Doc: OUT/build_report.json and data/x-00000-of-00001.parquet are fine here."""
from pathlib import Path
def f(out, split):
    """data/ in a docstring."""
    print(f"{out} has no data/ folder")  # prose
    meta = {"data": 1}["data"]
    return Path(out) / "build_report.json", Path(out, "data"), f"{split}-{0:05d}-of-{1:05d}.tar", out / "mpgi_run"
'''
    assert sorted(t for _, t in layout_literals(planted)) == ["-of-", "build_report.json", "data", "mpgi_run"]


def test_only_build_folder_spells_the_build_layout():
    """dataset, hub, modeling, evaluation and CLI code find build-folder paths through BuildFolder."""
    found = []
    for package in SCANNED:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == "dataset_builder/build_folder.py":
                continue
            for line, text in layout_literals(path.read_text(encoding="utf-8")):
                if (rel, text) not in ALLOWED:
                    found.append(f"{rel}:{line}: {text!r}")
    assert not found, "build-folder paths spelled outside build_folder.py (use BuildFolder):\n" + "\n".join(
        found
    )
