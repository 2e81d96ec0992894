"""`hqrs eval` on the folders `hqrs build` writes: one config (``default`` unless told), the split asked
for, and a results JSON that states the split and config actually read (#15.2)."""

from __future__ import annotations

import json
import shutil

import pytest
import tiny_models

from hqrs.scripts import cli


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_models.tiny_clip_dir(tmp_path_factory.mktemp("m") / "clip")


@pytest.fixture(scope="module")
def aid_build(tmp_path_factory, rs_real):
    """`hqrs build` of a 4-class AID class folder (20 real images): labelled default rows in 3 splits."""
    root = tmp_path_factory.mktemp("aid")
    for cls in ("Beach", "Forest", "Pond", "Port"):
        shutil.copytree(rs_real / "aid_classification" / cls, root / "set" / cls)
    assert cli.main(["-q", "build", "--source", f"folder:{root / 'set'}", "--out", str(root / "b")]) == 0
    return root


def _zs(clip_dir, dataset, out, *extra):
    argv = ["-q", "eval", "zeroshot", "--model", str(clip_dir), "--dataset", str(dataset)]
    return cli.main([*argv, "--num-workers", "0", "--out", str(out), *extra])


def test_zeroshot_on_a_build_folder_reads_one_config_and_the_split_it_names(clip_dir, aid_build, tmp_path):
    build = aid_build / "b"
    splits = json.loads((build / "build_report.json").read_text())["splits"]
    sizes = {s: v["images"] for s, v in splits.items()}
    assert sum(sizes.values()) == 20
    for extra, split, n in [
        ((), "test", sizes["test"]),  # default: test
        (("--split", "train"), "train", sizes["train"]),
        (("--split", "all"), "all", 20),
        (("--config", "full", "--split", "validation"), "validation", sizes["validation"]),
    ]:
        out = tmp_path / f"zs-{split}.json"
        assert _zs(clip_dir, build, out, *extra) == 0
        res = json.loads(out.read_text())
        assert (res["dataset"]["split"], res["dataset"]["num_images"]) == (split, n)
        assert res["dataset"]["config"] == ("full" if "full" in extra else "default")
        # classes come from every split, so a small test split still ranks against all four
        assert res["dataset"]["num_classes"] == 4 and len(res["details"]["confusion_matrix"]) == 4
        assert sum(map(sum, res["details"]["confusion_matrix"])) == n
    # the data/ folder inside a build is the build
    assert _zs(clip_dir, build / "data", tmp_path / "d.json") == 0
    assert json.loads((tmp_path / "d.json").read_text())["dataset"]["num_images"] == sizes["test"]


def test_zeroshot_folder_errors_name_the_fix(clip_dir, aid_build, rs_real, tmp_path, capsys):
    build = aid_build / "b"
    cases = [
        ((build, "--split", "nope"), "has splits ['train', 'validation', 'test'], not 'nope'"),
        ((build, "--config", "nope"), "has no config 'nope'; configs: ['default', 'full', 'pairs']"),
        ((build, "--config", "pairs"), "no label column found"),
        ((aid_build / "set", "--split", "test"), "is a class folder: it has no splits; drop --split"),
        ((build / "data" / "default" / "test-00000-of-00001.parquet", "--split", "test"), "has no splits"),
    ]
    for (dataset, *extra), message in cases:
        capsys.readouterr()
        assert _zs(clip_dir, dataset, tmp_path / "x.json", *extra) == 1
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]
        assert last.startswith("hqrs: error:") and message in last and "Traceback" not in err
    assert not (tmp_path / "x.json").exists()


def test_zeroshot_on_an_unlabelled_build_is_a_clear_error(clip_dir, tmp_path, capsys):
    assert cli.main(["-q", "build", "--demo", "--out", str(tmp_path / "demo")]) == 0
    assert _zs(clip_dir, tmp_path / "demo", tmp_path / "x.json", "--split", "all") == 1
    assert "none of its 16 rows has a single label in column 'label'" in capsys.readouterr().err


def test_dataset_quality_honours_split_and_config(aid_build, tmp_path):
    build = aid_build / "b"
    sizes = {s: v for s, v in json.loads((build / "build_report.json").read_text())["splits"].items()}
    for extra, split, n in [((), "all", 20), (("--split", "train"), "train", sizes["train"]["images"])]:
        out = tmp_path / split
        assert cli.main(["-q", "eval", "dataset", str(build), "--out-dir", str(out), *extra]) == 0
        res = json.loads((out / "dataset_quality.json").read_text())
        assert (res["dataset"]["split"], res["dataset"]["num_images"]) == (split, n)
        m = {x["type"]: x["value"] for x in res["metrics"]}
        assert m["num_captions"] == sizes[split]["rows"]["pairs"] if split != "all" else 20 * 6
    out = tmp_path / "pairs"
    assert cli.main(["-q", "eval", "dataset", str(build), "--config", "pairs", "--out-dir", str(out)]) == 0
    assert json.loads((out / "dataset_quality.json").read_text())["dataset"]["config"] == "pairs"
