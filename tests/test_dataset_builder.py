"""HQRS-IT builder and export: configs, splits without leakage, contamination guard, formats, resume."""

from __future__ import annotations

import argparse
import json
import shutil
import tarfile
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml
from PIL import Image

from hqrs.dataset_builder.builder import FEATURES, HQRSIT
from hqrs.dataset_builder.export import EXIT_SKIPPED, export_dataset
from hqrs.dataset_builder.planning import near_duplicate_groups, split_of
from hqrs.dataset_builder.records import file_content_id
from hqrs.scripts import build as build_cmd


@pytest.fixture(autouse=True)
def _loopback_and_unix_sockets():
    """datatrove's local executor and datasets' num_proc pool use AF_UNIX sockets (local by nature):
    keep pytest-socket's loopback-only rule but allow those."""
    from pytest_socket import socket_allow_hosts

    socket_allow_hosts(["127.0.0.1", "::1"], allow_unix_socket=True)
    yield


def _noise_image(path: Path, seed: int, fmt="PNG", quality=95):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((64, 64), Image.Resampling.BICUBIC)
    img.save(path, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return path


@pytest.fixture
def caption_csv(tmp_path):
    """24 distinct images, 3 near-duplicate pairs (same picture, JPEG at two qualities), 2 captions each."""
    img = tmp_path / "img"
    img.mkdir()
    rows = ["filepath,caption"]
    for i in range(24):
        _noise_image(img / f"{i:02d}.png", i)
        rows += [f"img/{i:02d}.png,caption one of image {i}", f"img/{i:02d}.png,caption two of image {i}"]
    for i in range(3):
        _noise_image(img / f"dup{i}_a.jpg", 100 + i, "JPEG", 95)
        _noise_image(img / f"dup{i}_b.jpg", 100 + i, "JPEG", 70)
        rows += [f"img/dup{i}_a.jpg,near duplicate {i} a", f"img/dup{i}_b.jpg,near duplicate {i} b"]
    (tmp_path / "caps.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "caps.csv"


def _cli(*argv):
    parser = argparse.ArgumentParser()
    build_cmd.register(parser.add_subparsers(), [])
    args = parser.parse_args(["build", *argv])
    return args.func(args)


def test_roundtrip_all_configs_and_no_leakage(caption_csv, tmp_path):
    out = tmp_path / "out"
    report = export_dataset(
        out, captions_csv=str(caption_csv), shard_size=4, split_ratios=(0.5, 0.25, 0.25), progress=False
    )
    assert report["images"] == 30 and report["skipped"] == 0
    assert report["near_duplicates"]["groups_with_more_than_one_image"] == 3
    ds = datasets.load_dataset(str(out))
    assert set(ds) == {"train", "validation", "test"}
    assert ds["train"].features == FEATURES["default"]
    assert list(ds["train"].features) == [
        "image",
        "image_id",
        "source",
        "captions",
        "label",
        "width",
        "height",
        "gsd",
    ]
    assert sum(len(d) for d in ds.values()) == 30
    row = ds["train"][0]
    assert (
        row["image"].size == (64, 64)
        and len(row["captions"]) == 2
        and row["gsd"] is None
        and row["label"] == ""
    )
    pairs = datasets.load_dataset(str(out), "pairs")
    assert sum(len(d) for d in pairs.values()) == 24 * 2 + 6 and pairs["train"].features == FEATURES["pairs"]
    full = datasets.load_dataset(str(out), "full")
    assert full["test"].features == FEATURES["full"]
    assert full["test"][0]["caption_provenance"][0]["sources"] == ["released"]
    # every image exactly once; near-duplicate pairs never straddle splits
    split_of_id = {r: s for s, d in ds.items() for r in d["image_id"]}
    assert len(split_of_id) == 30
    for i in range(3):
        a = file_content_id(caption_csv.parent / f"img/dup{i}_a.jpg")
        b = file_content_id(caption_csv.parent / f"img/dup{i}_b.jpg")
        assert split_of_id[a] == split_of_id[b]
    names = sorted(p.name for p in (out / "data/default").iterdir())
    assert all(n.endswith(".parquet") and "-of-" in n for n in names)
    card = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    assert [c["config_name"] for c in card["configs"]] == ["default", "full", "pairs"]
    assert {i["config_name"]: i["splits"][0]["num_examples"] for i in card["dataset_info"]} == {
        "default": len(ds["train"]),
        "full": len(ds["train"]),
        "pairs": len(pairs["train"]),
    }


def test_split_hash_and_groups_are_deterministic():
    assert split_of("abc", (0.9, 0.05, 0.05), "s") == split_of("abc", (0.9, 0.05, 0.05), "s")
    counts = {s: 0 for s in ("train", "validation", "test")}
    for i in range(2000):
        counts[split_of(f"{i:016x}", (0.8, 0.1, 0.1), "s")] += 1
    assert 1500 < counts["train"] < 1700 and counts["test"] > 150
    base = 0x0F0F_F0F0_1234_5678
    groups = near_duplicate_groups([base, base ^ 0b101, 0xFFFF_0000_FFFF_0000, None, base ^ 0xFF00], 4)
    assert groups[:3] == [0, 0, 2] and groups[3] == 3 and groups[4] == 4


def test_byte_size_shards_are_contiguous(caption_csv, tmp_path):
    """Byte-limited shards: images larger than the limit get one shard each, numbered without gaps."""
    out = tmp_path / "out"
    report = export_dataset(
        out, captions_csv=str(caption_csv), shard_size="1KB", configs=("default",), progress=False
    )
    assert report["images"] == 30
    for split in ("train", "validation", "test"):
        files = sorted((out / "data" / "default").glob(f"{split}-*.parquet"))
        total = int(files[0].name.split("-of-")[1].split(".")[0])
        assert [f.name for f in files] == [f"{split}-{k:05d}-of-{total:05d}.parquet" for k in range(total)]
    ds = datasets.load_dataset(str(out))
    assert sum(len(d) for d in ds.values()) == 30
    assert len(list((out / "data" / "default").glob("*.parquet"))) == 30  # every image is over 1 KB


def test_bad_split_ratios_are_a_clear_error(caption_csv, tmp_path):
    with pytest.raises(ValueError, match="split ratios must be three non-negative numbers.*'a,b,c'"):
        export_dataset(tmp_path / "out", captions_csv=str(caption_csv), split_ratios="a,b,c", progress=False)


def test_contamination_guard_real(rs_real, tmp_path):
    """UCM-Captions test images (real) in the input are removed from train; counted in the report."""
    rows = ["filepath,caption"]
    names = sorted((rs_real / "ucm_captions/images").iterdir())[:12]
    for p in names:
        rows.append(f"{p},a scene")
    _noise_image(tmp_path / "own.png", 7)
    rows.append(f"{tmp_path / 'own.png'},our own image")
    (tmp_path / "c.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    report = export_dataset(
        out,
        captions_csv=f"openclip-csv:{tmp_path / 'c.csv'}?allow_outside_root=true",  # absolute paths
        split_ratios=(1, 0, 0),
        configs=("default",),
        contamination=(f"karpathy:{rs_real}/ucm_captions/dataset_ucm_subset.json?splits=test",),
        progress=False,
    )
    assert report["contamination"]["removed_from_train"] == 12
    assert report["contamination"]["reference_images"] == 63
    ds = datasets.load_dataset(str(out))
    assert ds["train"]["image_id"] == [file_content_id(tmp_path / "own.png")]
    # the UCM TIFFs are embedded as lossless PNG
    report = export_dataset(
        tmp_path / "out2",
        captions_csv=f"openclip-csv:{tmp_path / 'c.csv'}?allow_outside_root=true",  # absolute paths
        configs=("default",),
        split_ratios=(1, 0, 0),
        progress=False,
    )
    ds = datasets.load_dataset(str(tmp_path / "out2"))
    assert len(ds["train"]) == 13 and ds["train"][0]["image"].format == "PNG"


def test_rerun_skips_finished_shards(caption_csv, tmp_path):
    out = tmp_path / "out"
    first = export_dataset(
        out,
        captions_csv=str(caption_csv),
        shard_size=5,
        configs=("default",),
        split_ratios=(1, 0, 0),
        progress=False,
    )
    shards = sorted((out / "data/default").glob("*.parquet"))
    assert len(shards) == 6 and first["shards"]["written"] == 6
    stamps = {p.name: p.stat().st_mtime_ns for p in shards}
    shards[2].unlink()
    second = export_dataset(
        out,
        captions_csv=str(caption_csv),
        shard_size=5,
        configs=("default",),
        split_ratios=(1, 0, 0),
        progress=False,
    )
    assert second["shards"] == {**first["shards"], "written": 1, "reused": 5}
    after = {p.name: p.stat().st_mtime_ns for p in (out / "data/default").glob("*.parquet")}
    assert [n for n in after if after[n] != stamps[n]] == [shards[2].name]
    assert not list(out.rglob("*.tmp"))
    assert len(datasets.load_dataset(str(out))["train"]) == 30
    # another plan into the same folder (other shard size, other splits): no old shard is kept or reused
    third = export_dataset(
        out,
        captions_csv=str(caption_csv),
        shard_size=7,
        configs=("default",),
        split_ratios=(0.5, 0.5, 0),
        progress=False,
    )
    assert third["shards"]["reused"] == 0
    names = sorted(p.name for p in (out / "data/default").glob("*.parquet"))
    assert names == sorted(Path(f).name for f in third["shards"]["files"])
    assert not any("-of-00006" in n for n in names)  # the first plan's 6 train shards are gone
    ds = datasets.load_dataset(str(out))
    assert sum(len(d) for d in ds.values()) == 30 and set(ds) == {"train", "validation"}


def test_bad_input_build_completes_and_strict_fails(caption_csv, tmp_path):
    img = caption_csv.parent / "img"
    (img / "empty.png").write_bytes(b"")
    (img / "text.png").write_text("hello")
    shutil.copy(img / "00.png", img / "copy.png")
    with open(caption_csv, "a") as f:
        f.write(
            "img/empty.png,zero bytes\nimg/text.png,not an image\nimg/missing.png,no file\n,no path\n"
            "img/copy.png,same bytes\nimg/01.png,too,many,fields\n"
        )
    out = tmp_path / "out"
    assert (
        _cli("--captions-csv", str(caption_csv), "--out", str(out), "--config", "default", "--no-progress")
        == 0
    )
    report = json.loads((out / "build_report.json").read_text())
    assert report["images"] == 30 and report["skipped"] == 6
    files = {Path(i["file"].split(":")[0]).name for i in report["skipped_items"]}
    assert {"empty.png", "text.png", "caps.csv", "copy.png"} <= files
    assert all(i["reason"] for i in report["skipped_items"])
    assert sum(len(d) for d in datasets.load_dataset(str(out)).values()) == 30
    assert (
        _cli("--captions-csv", str(caption_csv), "--out", str(out), "--strict", "--no-progress")
        == EXIT_SKIPPED
    )
    # that rerun reused the staged plan: the input's skips and record counts are reported all the same
    rerun = json.loads((out / "build_report.json").read_text())
    assert rerun["skipped_items"] == report["skipped_items"] and rerun["records"] == report["records"]


def test_webdataset_and_open_clip_csv(caption_csv, tmp_path):
    wds = tmp_path / "wds"
    export_dataset(
        wds,
        captions_csv=str(caption_csv),
        fmt="webdataset",
        shard_size=10,
        split_ratios=(1, 0, 0),
        progress=False,
    )
    tars = sorted(wds.glob("train-*.tar"))
    assert len(tars) == 3
    with tarfile.open(tars[0]) as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile([n for n in names if n.endswith(".json")][0]).read())
    assert {n.rsplit(".", 1)[1] for n in names} >= {"png", "txt", "json"} and len(meta["captions"]) == 2
    csv_out = tmp_path / "csv"
    export_dataset(
        csv_out, captions_csv=str(caption_csv), fmt="open_clip-csv", split_ratios=(1, 0, 0), progress=False
    )
    lines = (csv_out / "train.csv").read_text().splitlines()
    assert lines[0] == "filepath\tcaption" and len(lines) == 1 + 54
    first = lines[1].split("\t")[0]
    assert (csv_out / first).is_file()


def test_builder_download_and_prepare_num_proc(caption_csv, tmp_path):
    builder = HQRSIT(
        config_name="pairs",
        captions_csv=str(caption_csv),
        cache_dir=str(tmp_path / "cache"),
        shard_size=4,
        split_ratios=(1, 0, 0),
    )
    builder.download_and_prepare(num_proc=2)
    ds = builder.as_dataset()
    assert list(ds) == ["train"] and len(ds["train"]) == 54
    assert sorted(set(ds["train"]["caption_index"])) == [0, 1]


def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    assert _cli("--demo", "--out", str(out), "--no-progress") == 0
    report = json.loads((out / "build_report.json").read_text())
    assert report["images"] == 16 and report["skipped"] == 0
    ds = datasets.load_dataset(str(out))
    assert set(ds) == {"train", "validation", "test"}
    row = ds["train"][0]
    assert row["source"] == "hqrs-demo" and row["gsd"] == pytest.approx(0.5) and len(row["captions"]) >= 1
    full = datasets.load_dataset(str(out), "full")
    assert full["train"][0]["rule_text"] and full["train"][0]["perspectives"][0]["generator"] == "rule"


def test_image_bytes_kept_tiff_converted_and_num_proc_same(rs_real, tmp_path):
    """JPEG / PNG bytes are embedded as they are; TIFF becomes a lossless PNG (or stays TIFF with
    keep_original); num_proc=2 writes exactly the same rows as num_proc=1."""
    import io

    import pyarrow.parquet as pq

    files = [
        *sorted((rs_real / "rsicd").rglob("*.jpg"))[:3],
        *sorted((rs_real / "ucm_captions").rglob("*.tif"))[:3],
        *sorted((rs_real / "detection_dota").rglob("*.png"))[:1],
    ]
    rows = ["filepath,caption"] + [f"{f},a caption of {f.stem}" for f in files]
    (tmp_path / "caps.csv").write_text("\n".join(rows) + "\n")

    def table(name, **kw):
        export_dataset(
            tmp_path / name,
            captions_csv=f"openclip-csv:{tmp_path / 'caps.csv'}?allow_outside_root=true",
            configs=("default",),
            split_ratios="1,0,0",
            progress=False,
            **kw,
        )
        return pq.read_table(next((tmp_path / name / "data/default").glob("train-*.parquet"))).to_pylist()

    by_id = {file_content_id(f): f for f in files}
    one = table("np1")
    assert len(one) == len(files)
    for row in one:
        src = by_id[row["image_id"]]
        cell = row["image"]
        if src.suffix == ".tif":
            assert cell["path"].endswith(".png") and cell["bytes"].startswith(b"\x89PNG\r\n\x1a\n")
            with Image.open(io.BytesIO(cell["bytes"])) as png, Image.open(src) as tif:
                assert np.array_equal(np.asarray(png), np.asarray(tif.convert("RGB")))
        else:
            assert cell["bytes"] == src.read_bytes() and cell["path"].endswith(src.suffix)
    assert table("np2", num_proc=2) == one
    kept = {row["image_id"]: row["image"] for row in table("keep", keep_original=True)}
    for image_id, src in by_id.items():
        assert kept[image_id]["bytes"] == src.read_bytes()
