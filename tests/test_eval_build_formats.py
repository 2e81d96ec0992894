"""A folder written by `hqrs build` is read only as a build, through its format: the parquet configs, or one
error naming the format and the fix for `--format open_clip-csv` / `webdataset` (never a class folder made of
its sub-folders, never its internal .staging/ files); a truncated shard is one error naming it; `hqrs push`
refuses a --plot that is no image and --results / --stats of the wrong kind."""

from __future__ import annotations

import json
import shutil

import pytest
import tiny_models

from hqrs.modeling.training_data import load_training_dataset
from hqrs.scripts import cli


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_models.tiny_clip_dir(tmp_path_factory.mktemp("m") / "clip")


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """The demo built in the three formats, and a copy of the parquet one with a truncated pairs/train shard."""
    root = tmp_path_factory.mktemp("builds")
    for name, fmt in (("demo", "parquet"), ("demo-csv", "open_clip-csv"), ("demo-wds", "webdataset")):
        assert cli.main(["-q", "build", "--demo", "--out", str(root / name), "--format", fmt]) == 0
    shutil.copytree(root / "demo", root / "corrupt")
    (shard,) = (root / "corrupt" / "data" / "pairs").glob("train-*.parquet")
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    return root


def _error(capsys, argv) -> str:
    """The CLI's stderr for ``argv``, which must fail with exactly one `hqrs: error:` line."""
    capsys.readouterr()
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("hqrs: error:") == 1
    return err.strip().splitlines()[-1]


def _format_error(path, fmt, reader) -> str:
    return (
        f"hqrs: error: {str(path)!r} is an hqrs build in --format {fmt}, which {reader} does not read (it "
        f"reads the parquet configs of a build); rebuild with `hqrs build ... --format parquet --out DIR` and "
        f"give {reader} that folder"
    )


@pytest.mark.parametrize("name, fmt", [("demo-csv", "open_clip-csv"), ("demo-wds", "webdataset")])
def test_non_parquet_builds_are_refused_by_format_never_read_as_class_folders(
    name, fmt, builds, clip_dir, tmp_path, capsys
):
    build = builds / name
    # demo-csv has the sub-folders demo_scenes/ and images/: once read as a 2-class class folder (50 %)
    out = tmp_path / "zs.json"
    zs = ["-q", "eval", "zeroshot", "--model", str(clip_dir), "--dataset", str(build), "--num-workers", "0"]
    assert _error(capsys, [*zs, "--out", str(out)]) == _format_error(build, fmt, "hqrs eval")
    assert _error(capsys, [*zs, "--out", str(out), "--config", "pairs"]) == _format_error(
        build, fmt, "hqrs eval"
    )
    assert not out.exists()
    # once: "demo-wds/.staging/test/00000.jsonl:1: not an MpGI result line"
    q = ["-q", "eval", "dataset", str(build), "--out-dir", str(tmp_path / "q")]
    assert _error(capsys, q) == _format_error(build, fmt, "hqrs eval dataset")
    assert not (tmp_path / "q" / "dataset_quality.json").exists()
    for config in ("pairs", "default"):  # once: datasets' BuilderConfig / CastError tracebacks
        with pytest.raises(ValueError) as exc:
            load_training_dataset(build, config=config)
        assert f"hqrs: error: {exc.value}" == _format_error(build, fmt, "hqrs train")


def test_train_clip_on_a_build_and_on_a_folder_that_is_no_dataset(builds, clip_dir, tmp_path, capsys):
    train = ["-q", "train", "clip", "--model", str(clip_dir), "--output-dir", str(tmp_path / "run")]
    err = _error(capsys, [*train, "--dataset", str(builds / "demo-csv"), "--max-steps", "1"])
    assert err == _format_error(builds / "demo-csv", "open_clip-csv", "hqrs train")
    # a folder of checkpoints (json + pt): no build, no save_to_disk, nothing datasets reads as pairs
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    (ckpt / "mini.json").write_text(json.dumps({"step": 1, "loss": [0.5, 0.4]}))
    (ckpt / "model.json").write_text(json.dumps({"model": {"width": 8}, "step": "last"}))
    (ckpt / "mini.pt").write_bytes(b"\x80\x04not a dataset")
    for config in ("pairs", "default"):
        with pytest.raises(ValueError) as exc:
            load_training_dataset(ckpt, config=config)
        message = str(exc.value)
        assert message.startswith(
            f"dataset folder {str(ckpt)!r} is not an hqrs build (no data/<config>/*.parquet), not a "
            f"save_to_disk folder, and datasets cannot read its config {config!r} split 'train' as a table ("
        )
        assert message.endswith("give a folder written by `hqrs build --format parquet`")
    # the parquet build of the same input trains
    splits = json.loads((builds / "demo" / "build_report.json").read_text())["splits"]
    assert (
        len(load_training_dataset(builds / "demo", config="pairs")) == splits["train"]["rows"]["pairs"] == 60
    )


def test_a_truncated_shard_is_one_error_naming_it(builds, clip_dir, tmp_path, capsys):
    (shard,) = (builds / "corrupt" / "data" / "pairs").glob("train-*.parquet")
    expected = (
        f"hqrs: error: {str(shard)!r} is not a readable parquet shard (ArrowInvalid: Parquet magic bytes not "
        "found in footer. Either the file is corrupted or this is not a parquet file.); it is truncated or "
        "damaged: rebuild the folder with `hqrs build` (or restore the file)"
    )
    corrupt = str(builds / "corrupt")
    zs = ["-q", "eval", "zeroshot", "--model", str(clip_dir), "--dataset", corrupt, "--num-workers", "0"]
    assert (
        _error(capsys, [*zs, "--config", "pairs", "--split", "train", "--out", str(tmp_path / "z")])
        == expected
    )
    q = ["-q", "eval", "dataset", corrupt, "--config", "pairs", "--out-dir", str(tmp_path / "q")]
    assert _error(capsys, q) == expected
    with pytest.raises(ValueError) as exc:
        load_training_dataset(corrupt, config="pairs")
    assert f"hqrs: error: {exc.value}" == expected
    # the intact configs of the same folder still read
    assert cli.main(["-q", "eval", "dataset", corrupt, "--out-dir", str(tmp_path / "ok")]) == 0


def test_push_refuses_plots_that_are_no_images_and_results_of_the_wrong_kind(
    builds, clip_dir, tmp_path, capsys
):
    from PIL import Image

    from hqrs.evaluation.results import make_result, model_identity, write_result

    demo = builds / "demo"
    assert cli.main(["-q", "eval", "dataset", str(demo), "--out-dir", str(tmp_path / "q")]) == 0
    report = tmp_path / "q" / "dataset_quality.json"
    png = sorted((tmp_path / "q").glob("*.png"))[0]  # a plot `hqrs eval dataset` wrote
    push = ["push", "dataset", str(demo), "--repo-id", "hqrs-test/tiny-hqrs-it", "--dry-run"]

    jpeg_named_png = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(jpeg_named_png, format="JPEG")
    for plot, why in [
        (report, "is not an image (UnidentifiedImageError: cannot identify image file"),
        (jpeg_named_png, "is a JPEG image named .png; rename it to photo.jpg"),
    ]:
        err = _error(capsys, [*push, str(tmp_path / "bad"), "--plot", str(png), str(plot)])
        assert err.startswith(f"hqrs: error: plot {str(plot)!r} {why}")
        assert not (tmp_path / "bad").exists()
    assert cli.main([*push, str(tmp_path / "ok"), "--plot", str(png), "--stats", str(report)]) == 0
    assert (tmp_path / "ok" / "stats" / png.name).read_bytes() == png.read_bytes()

    # a dataset report is no evaluation of a model, and a model's result is no dataset report
    model = ["push", "model", str(clip_dir), "--repo-id", "hqrs-test/tiny", "--dry-run", str(tmp_path / "m")]
    assert _error(capsys, [*model, "--results", str(report)]) == (
        f"hqrs: error: evaluation results {str(report)!r} are a dataset report (`hqrs eval dataset`), not an "
        "evaluation of a model (zero-shot-image-classification, image-text-retrieval, image-to-text, "
        "semantic-localization); drop it from --results (it belongs on the dataset card: "
        "`hqrs push dataset --stats`)"
    )
    zeroshot = write_result(
        make_result(
            "zero-shot-image-classification",
            {"top1_accuracy": 71.25},
            dataset={"name": "AID", "type": "aid", "split": "test"},
            protocol={},
            model=model_identity(clip_dir),
        ),
        tmp_path / "zeroshot.json",
    )
    assert cli.main([*model, "--results", str(zeroshot)]) == 0
    err = _error(capsys, [*push, str(tmp_path / "bad"), "--stats", str(zeroshot)])
    assert err == (
        "hqrs: error: dataset statistics are an `hqrs eval` result of task 'zero-shot-image-classification', "
        "not a dataset report (`hqrs eval dataset`'s dataset_quality.json); give that file (a model's results "
        "go to `hqrs push model --results`)"
    )
