"""One dataset card writer (#16.2): the build's README.md and the card `hqrs push dataset` stages are
:func:`hqrs.dataset_builder.dataset_card.dataset_card` with different inputs. The YAML header round-trips
through huggingface_hub and datasets, is the same for the build and the push, and hostile values stay
literal."""

from __future__ import annotations

import ast
import json
import re
import shutil
import sys
from importlib import metadata

import datasets
import pytest
import yaml
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCard

from hqrs.dataset_builder import dataset_card as dc
from hqrs.dataset_builder.builder import FEATURES
from hqrs.hub_cards.cards import render_dataset_card
from hqrs.hub_cards.push import stage_dataset
from hqrs.scripts import cli

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


@pytest.fixture(scope="module")
def demo_build(tmp_path_factory):
    """The real `hqrs build --demo` folder: three configs, three splits, an MpGI run."""
    out = tmp_path_factory.mktemp("card") / "hqrs-it-demo"
    assert cli.main(["-qq", "build", "--demo", "--out", str(out), "--no-progress"]) == 0
    return out


def _yaml_block(text: str) -> str:
    return re.match(r"---\n(.*?)\n---\n", text, flags=re.S).group(1)


def test_build_card_round_trips_through_hub_and_datasets(demo_build):
    """What load_dataset sees (configs, splits, rows, features) is what the build wrote."""
    card = DatasetCard.load(demo_build / "README.md", ignore_metadata_errors=False)
    report = json.loads((demo_build / "build_report.json").read_text())
    built_rows = {
        c: {s: info["rows"][c] for s, info in report["splits"].items()} for c in ("default", "full", "pairs")
    }
    assert [c["config_name"] for c in card.data.configs] == ["default", "full", "pairs"]
    assert [c.get("default", False) for c in card.data.configs] == [True, False, False]
    infos = DatasetInfosDict.from_dataset_card_data(card.data)
    assert sorted(infos) == ["default", "full", "pairs"]
    for config, rows in built_rows.items():
        assert infos[config].features == FEATURES[config]
        assert {s: infos[config].splits[s].num_examples for s in infos[config].splits} == rows
        shard_bytes = {
            s: sum(p.stat().st_size for p in (demo_build / "data" / config).glob(f"{s}-*.parquet"))
            for s in rows
        }
        assert {s: infos[config].splits[s].num_bytes for s in rows} == shard_bytes
        ds = datasets.load_dataset(str(demo_build), config)
        assert {s: ds[s].num_rows for s in ds} == rows
        assert all(ds[s].features == FEATURES[config] for s in ds)
    assert card.data.size_categories == "n<1K" and card.data.license == "other"
    assert 'load_dataset("hqrs-it-demo")' in card.text  # the folder loads by its name


def test_build_card_and_pushed_card_share_the_yaml_block(demo_build, tmp_path):
    """Same build -> the staged card's YAML is the build's, line for line, but for the repo's pretty_name."""
    stage_dataset(demo_build, tmp_path / "stage", "me/hqrs-it", license="other")
    built = (demo_build / "README.md").read_text()
    pushed = (tmp_path / "stage" / "README.md").read_text()

    def without_name(text):
        return [line for line in _yaml_block(text).splitlines() if not line.startswith("pretty_name:")]

    assert without_name(built) == without_name(pushed)
    assert "pretty_name: HQRS-IT" in built and "pretty_name: hqrs-it" in pushed
    # the staged folder loads like the build: same configs, splits and rows
    for config in ("default", "pairs"):
        staged = datasets.load_dataset(str(tmp_path / "stage"), config)
        local = datasets.load_dataset(str(demo_build), config)
        assert {s: d.num_rows for s, d in staged.items()} == {s: d.num_rows for s, d in local.items()}
    # the push adds the MpGI run, build report, statistics and sources; the build's card does not have them
    for section in ("## How the captions were made", "## Statistics", "## Build report"):
        assert section in pushed and section not in built


def test_one_config_build_card(demo_build, tmp_path):
    """A build of one config: `dataset_info` is a mapping (datasets' layout for one config), and the folder
    loads with the split sizes the card gives."""
    out = tmp_path / "pairs-only"
    shutil.copytree(demo_build / "data" / "pairs", out / "data" / "pairs")
    (info,) = dc.infos_from_folder(out)
    rows = {s: v.num_examples for s, v in info.splits.items()}
    sizes = {s: v.num_bytes for s, v in info.splits.items()}
    dc.write_build_card(out, {"pairs": FEATURES["pairs"]}, {"pairs": rows}, {"pairs": sizes})
    card = DatasetCard.load(out / "README.md", ignore_metadata_errors=False)
    assert card.data.dataset_info["config_name"] == "pairs"
    assert [c["config_name"] for c in card.data.configs] == ["pairs"]
    ds = datasets.load_dataset(str(out), "pairs")
    assert {s: d.num_rows for s, d in ds.items()} == rows == {"train": 60, "validation": 24, "test": 12}


PAYLOADS = [
    "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}",
    "{% for x in ().__class__.__base__.__subclasses__() %}{{ x }}{% endfor %}",
    "{{ 7*7 }}",
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_hostile_values_stay_literal(demo_build, tmp_path, payload):
    """Template syntax in every input of the writer (pretty name, repo, sections, source table, statistics)
    comes out as written and runs nothing; table cells cannot add rows or columns."""
    marker = tmp_path / "ran"
    text = payload.replace("MARKER", str(marker))
    out = tmp_path / "b"
    shutil.copytree(demo_build / "data" / "pairs", out / "data" / "pairs")
    card = dc.dataset_card(
        dc.infos_from_folder(out),
        pretty_name=text,
        repo=text,
        license="other",
        summary=text,
        mpgi_text=text,
        stats={text: text},
        build_text=text,
        sources=[{"name": f"{text} | x\n| forged | row |", "kind": text, "images": 1, "license": text}],
        citation=text,
    )
    assert not marker.exists()
    body = card.text
    assert body.count(text) >= 6 and "49" not in body.replace(text, "")
    assert "| forged | row |" not in body and "\\| x \\| forged \\| row \\|" in body
    snippet_arg = re.search(r"ds = load_dataset\((.*)\)  # config", body).group(1)
    assert ast.literal_eval(snippet_arg) == text  # a Python string literal in the usage snippet
    parsed = DatasetCard(str(card), ignore_metadata_errors=False)
    assert parsed.data.pretty_name == text
    assert parsed.data.configs[0]["config_name"] == "pairs"


def test_datasets_compat_range_and_round_trip():
    """`dataset_info` is written by datasets' DatasetInfosDict (not exported nor documented): the installed
    datasets is in the tested range, the range is pyproject's pin, and the block reads back to the infos."""
    version = tuple(int(p) for p in re.findall(r"\d+", metadata.version("datasets"))[:3])
    low, high = dc.DATASETS_TESTED_RANGE
    assert low <= version < high
    pyproject = tomllib.loads((dc.Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert f"datasets>={low[0]},<{high[0]}" in pyproject["project"]["dependencies"]
    infos = [
        dc.config_info(
            "full", FEATURES["full"], {"test": 2, "train": 5, "validation": 0}, {"test": 9, "train": 99}
        ),
        dc.config_info("default", FEATURES["default"], {"train": 5}, {"train": 77}),
    ]
    data = dc.card_data(infos, pretty_name="x")
    back = DatasetInfosDict.from_dataset_card_data(data)
    assert back["full"].features == FEATURES["full"] and back["default"].features == FEATURES["default"]
    assert list(back["full"].splits) == ["train", "test"]  # build order, empty split left out
    assert back["full"].splits["train"].num_bytes == 99 and back["full"].download_size == 108
    assert [c["config_name"] for c in data.configs] == ["default", "full"]
    assert data.configs[1]["data_files"] == [
        {"split": "train", "path": "data/full/train-*.parquet"},
        {"split": "test", "path": "data/full/test-*.parquet"},
    ]
    assert yaml.safe_load(data.to_yaml())["dataset_info"][0]["config_name"] == "default"
    with pytest.raises(ValueError, match="one info per config"):
        dc.card_data([infos[0], infos[0]], pretty_name="x")


def test_folder_that_is_no_build_is_a_clear_error(demo_build, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder written by `hqrs build`"):
        render_dataset_card(tmp_path, "me/x")
    (tmp_path / "data" / "default").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no parquet shards"):
        dc.infos_from_folder(tmp_path)
    (tmp_path / "data" / "default" / "train-00000-of-00001.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match=r"train-00000-of-00001\.parquet: cannot be read as parquet"):
        render_dataset_card(tmp_path, "me/x")
    shutil.copytree(demo_build / "data", tmp_path / "ok" / "data")
    # a stray file, another split's columns, a config folder named like a glob: each named, never a card
    # whose data files miss or mix what is uploaded
    pairs = tmp_path / "ok" / "data" / "pairs"
    (pairs / "notes.parquet").write_bytes((pairs / "test-00000-of-00001.parquet").read_bytes())
    with pytest.raises(ValueError, match=r"notes\.parquet: not a shard name of `hqrs build`"):
        dc.infos_from_folder(tmp_path / "ok")
    (pairs / "notes.parquet").unlink()
    default = tmp_path / "ok" / "data" / "default"
    shutil.copy(pairs / "test-00000-of-00001.parquet", default / "zz-00000-of-00001.parquet")
    with pytest.raises(ValueError, match=r"zz-00000-of-00001\.parquet: its columns differ"):
        dc.infos_from_folder(tmp_path / "ok")
    (default / "zz-00000-of-00001.parquet").unlink()
    shutil.copytree(pairs, tmp_path / "ok" / "data" / "{{ 7*7 }}")
    with pytest.raises(ValueError, match=r"'\{\{ 7\*7 \}\}' is not a config name"):
        dc.infos_from_folder(tmp_path / "ok")
    shutil.rmtree(tmp_path / "ok" / "data" / "{{ 7*7 }}")
    assert [i.config_name for i in dc.infos_from_folder(tmp_path / "ok")] == ["default", "full", "pairs"]
    (tmp_path / "ok" / "build_report.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="build_report.json must hold a JSON object, got list"):
        render_dataset_card(tmp_path / "ok", "me/x")
