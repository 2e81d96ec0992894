"""Source adapters on the real RS samples and on generated edge cases (bad input → skip with reason)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hqrs.dataset_builder.records import file_content_id
from hqrs.dataset_builder.sources import SkipReport, load_source, load_sources


def _records(spec, **kw):
    report = SkipReport()
    return list(load_source(spec, **kw).records(report)), report


# ------------------------------------------------------------------------------------------ real data


def test_dota_real(rs_real):
    recs, report = _records(f"dota:{rs_real}/detection_dota/labelTxt")
    assert len(report) == 0
    by_file = {r.meta["file"]: r for r in recs}
    assert set(by_file) == {"P0075.txt", "P0706.txt", "P1888.txt"}
    p0706 = by_file["P0706.txt"]
    assert (p0706.width, p0706.height) == (1111, 1182)
    cats = [o.category for o in p0706.objects]
    assert cats.count("ship") == 531 and cats.count("harbor") == 5
    assert p0706.gsd == pytest.approx(0.255589285596)
    assert p0706.objects[0].obox is not None and p0706.meta["imagesource"] == "GoogleEarth"
    assert "small-vehicle" in p0706.exhaustive_classes
    assert p0706.image_id == file_content_id(rs_real / "detection_dota/images/P0706.png")
    assert len(p0706.meta["phash"]) == 16


def test_dota_tiling_real(rs_real, tmp_path):
    spec = f"dota:{rs_real}/detection_dota/labelTxt/P0706.txt?images={rs_real}/detection_dota/images"
    recs, report = _records(
        spec + f"&large=tile&max_side=800&tile_size=600&tile_overlap=100&cache_dir={tmp_path}"
    )
    assert len(recs) == 9  # 1111×1182, tiles of 600 stepping 500: origins 0, 500, last flush (511 / 582)
    for r in recs:
        assert r.width <= 600 and r.height <= 600 and Path(r.image).parent == tmp_path
        for o in r.objects:
            x0, y0, x1, y1 = o.bbox
            assert 0 <= x0 < x1 <= r.width and 0 <= y0 < y1 <= r.height
        assert r.meta["scene"].endswith("P0706.png") and len(r.meta["tile"]) == 4
    # overlapping tiles: every ship is in at least one tile
    assert sum(o.category == "ship" for r in recs for o in r.objects) >= 531 * 0.95


def test_dior_voc_real(rs_real):
    recs, report = _records(f"voc:{rs_real}/detection_dior/Annotations/Oriented Bounding Boxes?classes=dior")
    assert len(report) == 0 and len(recs) == 1
    (obj,) = recs[0].objects
    assert obj.category == "golffield"
    assert obj.obox == (133, 237, 684, 237, 684, 672, 133, 672)
    assert obj.bbox == (133, 237, 684, 672)
    assert "windmill" in recs[0].exhaustive_classes


def test_isaid_mask_real(rs_real):
    recs, report = _records(f"mask:{rs_real}/segmentation_isaid/train/images?palette=isaid")
    assert len(report) == 0 and len(recs) == 1
    r = recs[0]
    assert r.image.endswith("P0005.png") and (r.width, r.height) == (884, 977)
    assert set(r.mask.class_fractions) == {"large-vehicle", "small-vehicle"}
    assert r.mask.class_fractions["large-vehicle"] == pytest.approx(135058 / (884 * 977), abs=1e-5)
    assert r.mask.instance_counts == {"large-vehicle": 99, "small-vehicle": 32}
    assert len(r.objects) == 131


def test_karpathy_real(rs_real):
    ucm, report = _records(
        f"karpathy:{rs_real}/ucm_captions/dataset_ucm_subset.json?labels=labels.csv&label_column=ucmerced_class"
    )
    assert len(report) == 0 and len(ucm) == 63
    assert ucm[0].source == "ucm" and ucm[0].split == "test" and ucm[0].labels == ["agricultural"]
    assert len(ucm[0].references) == 5
    rsicd, report = _records(f"karpathy:{rs_real}/rsicd/dataset_rsicd_subset.json")
    assert len(report) == 0 and len(rsicd) == 95 and rsicd[0].labels == ["Airport"]
    train_only, _ = _records(f"karpathy:{rs_real}/sydney_captions/dataset_sydney_subset.json?splits=train")
    assert len(train_only) == 2 and all(r.split == "train" for r in train_only)


def test_splits_no_entry_has_names_the_splits_found(rs_real, tmp_path, capsys):
    """A ``splits=`` value no entry has (a typo, the wrong file) is not an empty build: an error when nothing
    matched, a counted file skip when another listed split did; both list the splits the source holds."""
    from hqrs.scripts import cli

    rsicd = f"{rs_real}/rsicd/dataset_rsicd_subset.json"
    with pytest.raises(ValueError) as exc:
        _records(f"karpathy:{rsicd}?splits=tset")
    assert str(exc.value) == (
        f"source 'karpathy:{rsicd}': splits=tset: no entry has split 'tset'; the splits in it: test (95)"
    )
    recs, report = _records(f"karpathy:{rsicd}?splits=test,tset")
    assert len(recs) == 95 and len(report) == 1
    assert (
        report.items[0]["reason"]
        == "splits=test,tset: no entry has split 'tset'; the splits in it: test (95)"
    )
    # a format whose entries carry no split
    with pytest.raises(
        ValueError, match=r"splits=test: no entry has split 'test'; its entries carry no split$"
    ):
        _records(f"folder:{rs_real}/aid_classification?splits=test")
    # through the CLI: one error line, no traceback
    argv = [
        "build",
        "--out",
        str(tmp_path / "o"),
        "--source",
        f"karpathy:{rsicd}?images={rs_real}/rsicd/images&splits=tset",
    ]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"hqrs: error: source 'karpathy:{rsicd}': splits=tset: no entry has split 'tset'; the splits in it: test (95)"
    )


@pytest.mark.parametrize(
    "query, message",
    [
        ("large=shrink", "bad value for option 'large': expected one of keep, tile, resize, got 'shrink'"),
        (
            "tile_size=-4",
            "bad value for option 'tile_size': expected an integer of at least 16 (pixels), got '-4'",
        ),
        (
            "bands=0",
            "bad value for option 'bands': expected 1 or 3 one-based band indices, e.g. 4,3,2, got '0'",
        ),
        (
            "stretch=98,2",
            "bad value for option 'stretch': expected two percentiles LOW,HIGH with 0 <= LOW < HIGH <= 100, "
            "e.g. 2,98, got '98,2'",
        ),
        (
            "max_pixels=lots",
            "bad value for option 'max_pixels': expected a positive number of pixels (e.g. 4e8), got 'lots'",
        ),
        (
            "max_memory=inf",
            "bad value for option 'max_memory': expected a positive number of bytes (e.g. 8e9), got 'inf'",
        ),
        (
            "min_clip_fraction=2",
            "bad value for option 'min_clip_fraction': expected a fraction in (0, 1], got '2'",
        ),
        ("verify=perhaps", "bad value for option 'verify': expected a boolean (true/false), got 'perhaps'"),
        ("tile_overlap=2000", "tile_overlap must be in [0, tile_size=1024), got 2000"),
        (
            "label_from_filename=maybe",
            "bad value for option 'label_from_filename': expected a boolean (true/false), got 'maybe'",
        ),
    ],
)
def test_option_errors_name_source_option_value_and_expected(tmp_path, query, message):
    """#3: every option error (shared image options, a format's own, checks across options) names the source,
    the option, the bad value and what it takes."""
    (tmp_path / "d.json").write_text('{"images": []}')
    with pytest.raises(ValueError) as exc:
        load_source(f"karpathy:{tmp_path}/d.json?{query}")
    assert str(exc.value) == f"source 'karpathy:{tmp_path}/d.json': {message}"


def test_option_errors_from_a_yaml_mapping_refuse_a_bool_for_a_number(tmp_path):
    with pytest.raises(ValueError) as exc:
        load_source({"kind": "folder", "path": str(tmp_path), "tile_size": True})
    assert str(exc.value) == (
        f"source 'folder:{tmp_path}': bad value for option 'tile_size': expected an integer of at least 16 "
        "(pixels), got True"
    )
    source = load_source({"kind": "folder", "path": str(tmp_path), "tile_size": 512, "stretch": [1, 99]})
    assert source.image_settings.tile_size == 512 and source.image_settings.stretch == (1.0, 99.0)


def test_folder_real(rs_real):
    recs, report = _records(f"folder:{rs_real}/aid_classification")
    assert len(report) == 0 and len(recs) == 150
    assert len({r.labels[0] for r in recs}) == 30


def test_same_images_twice_are_counted_duplicates_real(rs_real):
    """The same real folder given twice (and through a link): every second copy is a counted skip."""
    from hqrs.dataset_builder.sources import iter_records

    report = SkipReport()
    specs = [f"folder:{rs_real}/aid_classification", f"images:{rs_real}/aid_classification/Airport"]
    recs = list(iter_records(load_sources(specs), report))
    assert len(recs) == 150 and len({r.image_id for r in recs}) == 150
    assert len(report) == 5 and report.count("same image bytes as") == 5  # the 5 Airport images
    assert report.records == {"folder": 150, "images": 0}


def test_openclip_tsv_separator_detected_and_paths_absolute_or_relative(rs_real, tmp_path, monkeypatch):
    """A TSV in the layout `--format open_clip-csv` writes reads without sep=; PATH absolute or relative."""
    images = sorted((rs_real / "rsicd").rglob("*.jpg"))[:3]
    (tmp_path / "images").mkdir()
    for f in images:
        (tmp_path / "images" / f.name).symlink_to(f)  # a link inside the root to a file outside it
    rows = "".join(f"images/{f.name}\ta caption, with a comma\n" for f in images)
    (tmp_path / "train.csv").write_text("filepath\tcaption\n" + rows)
    monkeypatch.chdir(tmp_path)
    for spec in (f"openclip-csv:{tmp_path}/train.csv", "openclip-csv:train.csv?sep=tab"):
        recs, report = _records(spec + ("&" if "?" in spec else "?") + "allow_outside_root=true")
        assert len(recs) == 3 and len(report) == 0
        assert recs[0].references == ["a caption, with a comma"]
    recs, report = _records(f"openclip-csv:{tmp_path}/train.csv")  # the links leave the root
    assert recs == [] and len(report) == 3 and "resolves to" in report.items[0]["reason"]


# ------------------------------------------------------------------------------------ generated cases


def _png(path: Path, size=(64, 48), colour=(10, 120, 200)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def test_tiff_16bit_and_multiband(tmp_path):
    import tifffile

    rng = np.random.default_rng(0)
    root = tmp_path / "scenes" / "cls"
    root.mkdir(parents=True)
    tifffile.imwrite(root / "one16.tif", (rng.random((40, 50)) * 4000).astype("uint16"))
    tifffile.imwrite(root / "four16.tif", (rng.random((40, 50, 4)) * 4000).astype("uint16"))
    Image.new("L", (30, 30), 90).save(root / "gray.png")
    recs, report = _records(f"folder:{tmp_path}/scenes?bands=4,3,2&cache_dir={tmp_path}/cache")
    assert len(report) == 0
    by = {Path(r.meta.get("original", r.image)).name: r for r in recs}
    four = Image.open(by["four16.tif"].image)
    assert four.mode == "RGB" and four.size == (50, 40) and "4-band" in by["four16.tif"].meta["converted"]
    one = Image.open(by["one16.tif"].image)
    assert one.mode == "L" and np.asarray(one).max() == 255 and np.asarray(one).min() == 0
    assert by["gray.png"].image.endswith("gray.png") and "converted" not in by["gray.png"].meta
    assert by["four16.tif"].image_id == file_content_id(by["four16.tif"].image)


def test_resize_large_scene_scales_boxes_and_gsd(tmp_path):
    _png(tmp_path / "images/a.png", size=(400, 200))
    (tmp_path / "labelTxt").mkdir()
    (tmp_path / "labelTxt/a.txt").write_text("gsd:0.5\n10 10 50 10 50 30 10 30 plane 0\n")
    recs, _ = _records(f"dota:{tmp_path}/labelTxt?large=resize&max_side=100&cache_dir={tmp_path}/c")
    (r,) = recs
    assert (r.width, r.height) == (100, 50) and r.gsd == pytest.approx(2.0)
    assert r.objects[0].bbox == pytest.approx((2.5, 2.5, 12.5, 7.5))


def test_bad_inputs_are_skipped_with_reasons(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labelTxt"
    _png(images / "good.png", size=(100, 100))
    _png(images / "big.png", size=(300, 300))
    (images / "empty.png").write_bytes(b"")
    (images / "text.png").write_text("not an image")
    data = (images / "good.png").read_bytes()
    Image.new("RGB", (200, 200), (5, 5, 5)).save(images / "trunc.jpg", quality=95)
    (images / "trunc.jpg").write_bytes((images / "trunc.jpg").read_bytes()[:300])
    assert data
    labels.mkdir()
    box = "10 10 40 10 40 30 10 30"
    (labels / "good.txt").write_text(
        "imagesource:x\ngsd:0.3\n"
        f"{box} plane 0\n"
        "500 500 600 500 600 600 500 600 ship 0\n"  # outside the image
        "10 10 10 10 10 10 10 10 ship 0\n"  # degenerate
        f"{box} spaceship 0\n"  # unknown class
        "1 2 3 plane\n"  # malformed line
        "-20 10 30 10 30 30 -20 30 ship 1\n"  # partly outside: clipped
    )
    for name in ("big", "empty", "text", "trunc", "missing"):
        (labels / f"{name}.txt").write_text(f"{box} plane 0\n")
    recs, report = _records(f"dota:{labels}?max_pixels=50000")
    assert [r.meta["file"] for r in recs] == ["good.txt"]
    (good,) = recs
    assert [o.category for o in good.objects] == ["plane", "ship"]
    assert good.objects[1].bbox == (0.0, 10.0, 30.0, 30.0)
    reasons = {
        Path(i["file"].split(":")[0].split("#")[0]).name + ":" + i["kind"]: i["reason"] for i in report.items
    }
    assert "decompression-bomb" in reasons["big.png:image"]
    assert "0 bytes" in reasons["empty.png:image"]
    assert "not an image" in reasons["text.png:image"]
    assert "truncated" in reasons["trunc.jpg:image"]
    assert "image not found" in reasons["missing.txt:image"]
    assert sum(i["kind"] == "object" for i in report.items) == 3
    assert any("unknown class 'spaceship'" in i["reason"] for i in report.items)
    assert any("outside" in i["reason"] for i in report.items)
    assert any(i["kind"] == "row" and i["file"].endswith(":7") for i in report.items)


def test_voc_malformed_and_coco(tmp_path):
    _png(tmp_path / "JPEGImages/a.png", size=(80, 80))
    ann = tmp_path / "Annotations"
    ann.mkdir()
    (ann / "a.xml").write_text(
        "<annotation><filename>a.png</filename><object><name>car</name><bndbox><xmin>1</xmin><ymin>2</ymin>"
        "<xmax>30</xmax><ymax>40</ymax></bndbox></object><object><name>car</name></object>"
        "<object><name>car</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>30</xmax></bndbox></object>"
        "<size><width>inf</width><height>80</height></size></annotation>"
    )
    (ann / "b.xml").write_text("<annotation><object>")
    recs, report = _records(f"voc:{ann}")
    assert len(recs) == 1 and recs[0].objects[0].bbox == (1, 2, 30, 40)
    assert (recs[0].width, recs[0].height) == (80, 80)  # a non-finite <size> falls back to the image
    assert {i["kind"] for i in report.items} == {"object", "file"}
    assert any(i["reason"] == "bad box: <bndbox> has no <ymax>" for i in report.items)
    assert any("malformed XML" in i["reason"] and i["file"].endswith("b.xml") for i in report.items)

    coco = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 80, "height": 80},
            {"id": 2, "file_name": "gone.png"},
        ],
        "annotations": [
            {"image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10]},
            {"image_id": 1, "category_id": 9, "bbox": [5, 5, 10, 10]},
            {"image_id": 7, "category_id": 1, "bbox": [5, 5, 10, 10]},
            {"image_id": 1, "category_id": 1},
        ],
        "categories": [{"id": 1, "name": "car"}],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    recs, report = _records(f"coco:{tmp_path}/coco.json?images={tmp_path}/JPEGImages")
    assert len(recs) == 1 and [o.category for o in recs[0].objects] == ["car"]
    assert recs[0].exhaustive_classes == ["car"]
    assert len(report) == 4  # unknown category, unknown image id, malformed annotation, missing image
    (tmp_path / "bad.json").write_text("{not json")
    recs, report = _records(f"coco:{tmp_path}/bad.json")
    assert recs == [] and "malformed COCO JSON" in report.items[0]["reason"]


def test_karpathy_malformed(tmp_path):
    _png(tmp_path / "images/1.png")
    data = {
        "images": [
            {"filename": "1.png", "split": "train", "sentences": [{"raw": "a field ."}, {"tokens": []}]},
            {"split": "test"},
            {"filename": "2.png", "sentences": []},
        ]
    }
    (tmp_path / "d.json").write_text(json.dumps(data))
    recs, report = _records(f"karpathy:{tmp_path}/d.json")
    assert len(recs) == 1 and recs[0].references == ["a field ."]
    assert sorted(i["kind"] for i in report.items) == ["image", "row", "row"]


@pytest.mark.parametrize("kind", ["coco", "karpathy"])
@pytest.mark.parametrize(
    "text, why",
    [
        ("{not json", "JSONDecodeError"),
        ("[" * 100_000, "RecursionError"),  # before: a RecursionError escaped the reader
        ("null", "the top level is a NoneType, not an object"),
        ('[{"images": []}]', "the top level is a list, not an object"),
    ],
)
def test_json_annotation_file_that_is_not_an_object_is_one_file_skip(tmp_path, kind, text, why):
    (tmp_path / "a.json").write_text(text)
    recs, report = _records(f"{kind}:{tmp_path}/a.json")
    assert recs == [] and [i["kind"] for i in report.items] == ["file"]
    assert "malformed" in report.items[0]["reason"] and why in report.items[0]["reason"]
    assert report.items[0]["file"].endswith("a.json")


def test_splits_option_reads_only_those_splits(tmp_path):
    """`splits=test` (a contamination set): other splits' images are not opened or reported."""
    _png(tmp_path / "images/t.png")
    data = {
        "images": [
            {"filename": "t.png", "split": "test", "sentences": [{"raw": "a field ."}]},
            {"filename": "gone.png", "split": "train", "sentences": [{"raw": "a road ."}]},
        ]
    }
    (tmp_path / "d.json").write_text(json.dumps(data))
    recs, report = _records(f"karpathy:{tmp_path}/d.json?splits=test")
    assert [r.split for r in recs] == ["test"] and len(report) == 0
    recs, report = _records(f"karpathy:{tmp_path}/d.json")
    assert len(recs) == 1 and "image not found" in report.items[0]["reason"]


def test_openclip_csv_grouping_and_bad_rows(tmp_path):
    _png(tmp_path / "img/a.png", colour=(1, 2, 3))
    _png(tmp_path / "img/b.png", colour=(200, 2, 3))
    rows = [
        "path|text|cls",
        "a.png|first caption|farm",
        "b.png|other|city",
        "a.png|second caption|farm",
        "a.png|extra|farm|oops",
        "b.png||city",
        "c.png|no image|x",
        "b.png|short",
    ]
    (tmp_path / "caps.csv").write_text("\n".join(rows) + "\n")
    recs, report = _records(
        f"openclip-csv:{tmp_path}/caps.csv?images={tmp_path}/img&sep=|&img_key=path&caption_key=text&label_key=cls"
    )
    by = {Path(r.image).name: r for r in recs}
    assert by["a.png"].references == ["first caption", "second caption"] and by["a.png"].labels == ["farm"]
    assert by["b.png"].references == ["other"]
    assert sorted(i["kind"] for i in report.items) == ["image", "row", "row", "row"]
    with pytest.raises(ValueError, match="unknown option 'colour'"):
        load_source(f"openclip-csv:{tmp_path}/caps.csv?colour=1")
    # not UTF-8: the rows before the bad bytes are kept, the rest is one counted file skip
    good = "".join(f"a.png,a field number {i}\n" for i in range(3000)).encode()  # past the first read
    (tmp_path / "latin1.csv").write_bytes(b"filepath,caption\n" + good + b"b.png,caf\xe9\n")
    recs, report = _records(f"openclip-csv:{tmp_path}/latin1.csv?images={tmp_path}/img")
    (rec,) = recs
    assert 0 < len(rec.references) < 3000  # decoding fails on the whole read block holding the bad byte
    (item,) = report.items
    assert item["kind"] == "file" and "not UTF-8" in item["reason"]
    assert item["file"].endswith(f":{len(rec.references) + 1}")  # the last line read (header + rows)
    (tmp_path / "latin1.csv").write_bytes(b"filepath,caption\nb.png,caf\xe9\n")  # fails in the header read
    recs, report = _records(f"openclip-csv:{tmp_path}/latin1.csv?images={tmp_path}/img")
    assert recs == [] and "not UTF-8" in report.items[0]["reason"]


def test_yaml_source_list(tmp_path, rs_real):
    (tmp_path / "sources.yaml").write_text(
        f"sources:\n  - dota:{rs_real}/detection_dota/labelTxt\n"
        f"  - {{kind: folder, path: {rs_real}/aid_classification, name: aid}}\n"
    )
    sources = load_sources(str(tmp_path / "sources.yaml"))
    assert [s.kind for s in sources] == ["dota", "folder"] and sources[1].source_name == "aid"
    with pytest.raises(ValueError, match="unknown source kind"):
        load_source("tiles:/x")


# ------------------------------------------------------------------------- one decode, fast paths


def test_phash_is_imagehash_phash_and_reduced_decode_is_near_full(rs_real):
    """Our numpy DCT hash equals ``imagehash.phash`` bit for bit; the JPEG reduced (DCT-scaled) decode
    used by load_image / file_perceptual_hash lands within a few bits of the full decode's hash."""
    import imagehash

    from hqrs.dataset_builder.sources import ImageSettings, file_perceptual_hash, load_image, perceptual_hash
    from hqrs.dataset_builder.sources.images import hamming

    files = (
        sorted((rs_real / "rsicd").rglob("*.jpg"))[:10]
        + sorted((rs_real / "ucm_captions").rglob("*.tif"))[:5]
    )
    for f in files:
        with Image.open(f) as im:
            im.load()
            factor = max(1, min(im.size) // 128)  # our box reduction, then exactly imagehash's phash
            assert perceptual_hash(im) == str(imagehash.phash(im.reduce(factor) if factor > 1 else im))
    large = [
        *sorted((rs_real / "detection_dior").rglob("*.jpg")),
        *sorted((rs_real / "detection_dota").rglob("*.png")),
    ]
    assert large
    settings = ImageSettings(cache_dir=str(rs_real / "never-written"))
    for f in large:
        with Image.open(f) as im:
            im.load()
            full = perceptual_hash(im.convert("RGB"))
        loaded = load_image(f, settings)
        assert loaded.phash == file_perceptual_hash(f)  # one hash function everywhere
        assert hamming(loaded.phash, full) <= 4, f  # = the default near-duplicate distance
        assert loaded.image_id == file_content_id(f)


def test_truncated_jpeg_detected_by_the_reduced_decode(rs_real, tmp_path):
    from hqrs.dataset_builder.sources import ImageSettings, load_image

    (src,) = sorted((rs_real / "detection_dior").rglob("*.jpg"))[:1]  # 800 px: decoded at 1/4 size
    data = src.read_bytes()
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(data[: len(data) - 400])
    from hqrs.dataset_builder.sources.images import SkipItem

    with pytest.raises(SkipItem, match="truncated or corrupt image data"):
        load_image(bad, ImageSettings())


def test_image_cell_is_not_bound_by_pillows_default_pixel_limit(tmp_path, monkeypatch):
    """The source already checked the size against its own max_pixels; the export must not apply
    Pillow's global limit again (a 180 Mpx TIFF would crash the export otherwise)."""
    from hqrs.dataset_builder.sources.images import image_cell

    Image.new("RGB", (64, 64), (9, 8, 7)).save(tmp_path / "a.tif")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 px > 2x: DecompressionBombError
    cell = image_cell(str(tmp_path / "a.tif"), "a")
    assert Image.MAX_IMAGE_PIXELS == 1000  # restored
    monkeypatch.undo()
    assert cell["path"] == "a.png" and Image.open(io.BytesIO(cell["bytes"])).getpixel((0, 0)) == (9, 8, 7)


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_cell_png_is_lossless(mode):
    from hqrs.dataset_builder.sources.images import cell_png_bytes

    rng = np.random.default_rng(1)
    bands = len(mode)
    array = rng.integers(0, 256, (37, 53, bands), dtype=np.uint8)
    image = Image.fromarray(array[..., 0] if bands == 1 else array, mode=mode)
    import io

    decoded = Image.open(io.BytesIO(cell_png_bytes(image)))
    assert decoded.format == "PNG" and decoded.mode == mode and decoded.size == (53, 37)
    assert np.array_equal(np.asarray(decoded), np.asarray(image))


def test_records_with_a_pool_equal_sequential(rs_real, tmp_path):
    """Analysis in worker processes gives the same records, in the same order, and the same skips."""
    from hqrs.dataset_builder.parallel import make_pool

    folder = tmp_path / "scenes"
    for cls in ("Airport", "Beach"):
        (folder / cls).mkdir(parents=True)
        for f in sorted((rs_real / "aid_classification" / cls).glob("*.jpg"))[:6]:
            (folder / cls / f.name).write_bytes(f.read_bytes())
    (folder / "Beach" / "empty.jpg").write_bytes(b"")
    (folder / "Beach" / "cut.jpg").write_bytes(
        (folder / "Airport").glob("*.jpg").__next__().read_bytes()[:900]
    )
    spec = f"folder:{folder}"
    seq_report, par_report = SkipReport(), SkipReport()
    seq = list(load_source(spec).records(seq_report))
    with make_pool(2) as pool:
        par = list(load_source(spec).records(par_report, pool))
    n_good = sum(1 for f in folder.rglob("*.jpg") if f.name not in ("empty.jpg", "cut.jpg"))
    assert [r.to_dict() for r in par] == [r.to_dict() for r in seq] and len(seq) == n_good >= 8
    assert sorted(map(str, par_report.items)) == sorted(map(str, seq_report.items)) and len(seq_report) == 2


# ---------------------------------------------- the base, the analysis step, one pool for every format


def test_every_format_gives_the_same_records_and_skips_with_a_pool(rs_real, tmp_path):
    """Every kind, read with a 2-worker pool, gives the records (in order) and the skips of the
    sequential read, including a resized scene (its pixels come back from the worker) and a mask
    source (analysed in this process: ``pooled = False``)."""
    from hqrs.dataset_builder.parallel import make_pool
    from hqrs.dataset_builder.sources import SOURCE_KINDS

    aid = tmp_path / "aid"
    for cls in ("Airport", "Beach"):
        (aid / cls).mkdir(parents=True)
        for f in sorted((rs_real / "aid_classification" / cls).glob("*.jpg"))[:2]:
            (aid / cls / f.name).write_bytes(f.read_bytes())
    (aid / "Beach" / "cut.jpg").write_bytes((aid / "Beach").glob("*.jpg").__next__().read_bytes()[:700])
    _png(tmp_path / "img/a.png", size=(80, 60), colour=(1, 2, 3))
    _png(tmp_path / "img/b.png", size=(40, 40), colour=(9, 2, 3))
    (tmp_path / "img/bad.png").write_text("not an image")
    coco = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 80, "height": 60},
            {"id": 2, "file_name": "bad.png"},
            {"id": 3, "file_name": "b.png", "width": 41, "height": 40},  # wrong size: a row skip
        ],
        "annotations": [{"image_id": 1, "category_id": 1, "bbox": [70, 5, 30, 10]}],  # clipped to 80
        "categories": [{"id": 1, "name": "car"}],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    (tmp_path / "c.csv").write_text("filepath,caption\nimg/a.png,one\nimg/bad.png,two\nimg/gone.png,x\n")
    dota = f"{rs_real}/detection_dota/labelTxt?large=resize&max_side=720&cache_dir={tmp_path}/cache"
    specs = {
        "folder": f"folder:{aid}",
        "images": f"images:{tmp_path}/img",
        "karpathy": f"karpathy:{rs_real}/sydney_captions/dataset_sydney_subset.json",
        "dota": f"dota:{dota}",
        "voc": f"voc:{rs_real}/detection_dior/Annotations/Oriented Bounding Boxes?classes=dior",
        "coco": f"coco:{tmp_path}/coco.json?images={tmp_path}/img",
        "mask": f"mask:{rs_real}/segmentation_isaid/train/images?palette=isaid",
        "openclip-csv": f"openclip-csv:{tmp_path}/c.csv",
    }
    assert set(specs) == set(SOURCE_KINDS)
    sequential = {}
    for kind, spec in specs.items():
        report = SkipReport()
        sequential[kind] = [r.to_dict() for r in load_source(spec).records(report)], report.to_dict()
    with make_pool(2) as pool:
        for kind, spec in specs.items():
            report = SkipReport()
            records = [r.to_dict() for r in load_source(spec).records(report, pool)]
            expected, expected_report = sequential[kind]
            assert records == expected, kind
            # the same skips; with a pool the reader runs ahead, so its skips can come earlier
            pooled_report = report.to_dict()
            assert sorted(map(str, pooled_report.pop("items"))) == sorted(map(str, expected_report["items"]))
            assert pooled_report == {k: v for k, v in expected_report.items() if k != "items"}, kind
    resized = [r for r in sequential["dota"][0] if "resized_from" in r["meta"]]
    assert len(resized) == 2 and all(max(r["width"], r["height"]) == 720 for r in resized)
    assert tuple(sequential["coco"][0][0]["objects"][0]["bbox"]) == (70.0, 5.0, 80.0, 15.0)
    skips = {
        kind: [(i["kind"], Path(i["file"]).name) for i in rep["items"]]
        for kind, (_, rep) in sequential.items()
    }
    assert skips["folder"] == [("image", "cut.jpg")] and skips["images"] == [("image", "bad.png")]
    assert skips["coco"] == [("image", "bad.png"), ("row", "coco.json#images[2]")]
    assert skips["openclip-csv"] == [("image", "bad.png"), ("image", "c.csv:4")]
    assert not any(skips[k] for k in ("karpathy", "dota", "voc", "mask"))


def test_readers_yield_annotations_and_the_analysis_step_reads_the_images(tmp_path):
    """The two steps of a source are explicit: a reader yields one AnnotatedImage per image without
    opening it; analyse() reads each once (LoadedImage or SkipItem); to_records() makes the records."""
    from hqrs.dataset_builder.sources import AnnotatedImage, analyse, to_records
    from hqrs.dataset_builder.sources.images import LoadedImage, SkipItem

    _png(tmp_path / "scenes/farm/a.png", size=(30, 20))
    (tmp_path / "scenes/farm/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "scenes/farm/notes.txt").write_text("x")
    source = load_source(f"folder:{tmp_path}/scenes?name=fields")
    report = SkipReport()
    items = list(source.read(report))
    assert all(type(i) is AnnotatedImage for i in items) and [i.image.name for i in items] == [
        "a.png",
        "broken.png",
    ]
    assert (
        items[0].fields == {"labels": ["farm"], "meta": {"file": "farm/a.png"}}
        and items[0].source == "fields"
    )
    assert [i["reason"] for i in report.items] == [
        "not an image file extension (.txt)"
    ]  # the reader's only skip
    analysed = list(analyse(items, source.image_settings))
    assert isinstance(analysed[0].image, LoadedImage) and isinstance(analysed[1].image, SkipItem)
    assert analysed[0].image.image_id == file_content_id(tmp_path / "scenes/farm/a.png")
    records = list(to_records(analysed, source.image_settings, report))
    assert [(r.source, r.labels, r.width, r.height) for r in records] == [("fields", ["farm"], 30, 20)]
    assert len(report) == 2 and "Pillow cannot identify" in report.items[1]["reason"]
    assert report.records == {}  # only Source.records() counts what it yields
    assert [r.to_dict() for r in load_source(f"folder:{tmp_path}/scenes?name=fields").records()] == [
        r.to_dict() for r in records
    ]


def test_a_new_format_on_the_base(tmp_path):
    """The extension contract (README, sources): a Source subclass with ``kind``, an ``Options``
    dataclass and ``read()`` gets option parsing, root confinement, image checks and counting."""
    from collections.abc import Iterator
    from dataclasses import dataclass

    from hqrs.dataset_builder.sources.base import AnnotatedImage, Source, option, parse_bool

    @dataclass(frozen=True)
    class ListOptions:
        sep: str = option(" ", str)
        lower: bool = option(False, parse_bool)

    class LabelList(Source):
        """``<image> <label>`` per line; images next to the list."""

        kind = "label-list"
        Options = ListOptions

        def read(self, report: SkipReport) -> Iterator[AnnotatedImage]:
            for lineno, line in enumerate((self.read_text(report, self.path) or "").splitlines(), 1):
                name, _, label = line.partition(self.options.sep)
                label = label.lower() if self.options.lower else label
                yield from self.emit(
                    report, self.images_root() / name, annotation_file=f"{self.path}:{lineno}", labels=[label]
                )

    _png(tmp_path / "data/a.png")
    _png(tmp_path / "outside.png")
    (tmp_path / "data/list.txt").write_text("a.png;Farm\n../outside.png;City\nmissing.png;Road\n")
    source = LabelList(tmp_path / "data/list.txt", {"sep": ";", "lower": "yes", "phash": "false"})
    assert source.options == ListOptions(sep=";", lower=True) and source.image_settings.phash is False
    report = SkipReport()
    (record,) = source.records(report)
    assert record.labels == ["farm"] and record.source == "label-list" and "phash" not in record.meta
    assert report.records == {"label-list": 1} and [i["file"][-2:] for i in report.items] == [":2", ":3"]
    assert "resolves outside the source root" in report.items[0]["reason"]
    assert "image not found" in report.items[1]["reason"]
    with pytest.raises(ValueError, match=r"unknown option 'colour'; known: .*\blower\b.*\bsep\b"):
        LabelList(tmp_path / "data/list.txt", {"colour": "1"})
    with pytest.raises(ValueError, match=r"bad value for option 'lower': expected a boolean .*'maybe'"):
        LabelList(tmp_path / "data/list.txt", {"lower": "maybe"})


def test_options_are_typed_dataclasses():
    from hqrs.dataset_builder.sources.detection import DIOR_CLASSES, DOTA_CLASSES
    from hqrs.dataset_builder.sources.dota import DotaOptions
    from hqrs.dataset_builder.sources.mask import MaskOptions
    from hqrs.dataset_builder.sources.voc import VocOptions

    assert DotaOptions().classes == DOTA_CLASSES and VocOptions().classes is None
    assert MaskOptions().palette == {"preset": "isaid"} and MaskOptions().palette is not MaskOptions().palette
    source = load_source({"kind": "voc", "path": ".", "classes": "dior", "splits": "test,val"})
    assert source.options == VocOptions(classes=DIOR_CLASSES) and source.splits == {"test", "val"}


def test_geometry_clips_an_object_to_a_tile():
    from hqrs.dataset_builder.records import ObjectAnnotation
    from hqrs.dataset_builder.sources.geometry import clip_object, tile_origins

    assert tile_origins(1111, 600, 100) == [0, 500, 511] and tile_origins(500, 600, 100) == [0]
    inside = ObjectAnnotation("ship", obox=(110, 110, 130, 110, 130, 120, 110, 120))
    moved = clip_object(inside, (100, 100, 200, 200), 0.7)
    assert moved.obox == (10, 10, 30, 10, 30, 20, 10, 20) and moved.bbox == (10, 10, 30, 20)
    half = ObjectAnnotation("ship", bbox=(90, 100, 110, 110))  # half of it inside the tile
    assert clip_object(half, (100, 100, 200, 200), 0.7) is None
    cut = clip_object(half, (100, 100, 200, 200), 0.5)
    assert cut.bbox == (0, 0, 10, 10) and cut.obox is None
