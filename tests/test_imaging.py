"""Image ingest (issue #11.2 / #11.3): one orientation everywhere; every band count, bit depth, photometric
tag and compression converts the same way; bounded conversion memory with an up-front refusal."""

from __future__ import annotations

import io
from pathlib import Path

import datasets
import numpy as np
import pytest
import tifffile
from PIL import Image

from hqrs.dataset_builder.imaging import decode_image
from hqrs.dataset_builder.sources import SkipReport, load_source
from hqrs.dataset_builder.sources import images as images_mod
from hqrs.dataset_builder.sources.images import ImageSettings, SkipItem, load_image

ORIENTATION = 0x0112


def _settings(tmp_path: Path, **kw) -> ImageSettings:
    return ImageSettings(cache_dir=str(tmp_path / "cache"), **kw)


def _datasets_decode(data: bytes) -> Image.Image:
    """What ``datasets.load_dataset`` gives for an image cell holding ``data``."""
    return datasets.Image().decode_example({"bytes": data, "path": None})


def _scene(width=300, height=200) -> np.ndarray:
    """A grey scene with a red square in the top-right corner of the stored frame."""
    arr = np.full((height, width, 3), 40, np.uint8)
    arr[5:60, width - 60 : width - 5] = (250, 0, 0)
    return arr


# ----------------------------------------------------------------------------------- orientation


def test_exif_orientation_6_one_frame_through_build_and_load_dataset(tmp_path):
    """The issue's example: JPEG stored 300×200, Orientation=6, a plane box in the stored top right."""
    from hqrs.scripts.cli import main

    root = tmp_path / "dota"
    (root / "images").mkdir(parents=True)
    (root / "labelTxt").mkdir()
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    original = root / "images" / "a.jpg"
    Image.fromarray(_scene()).save(original, quality=95, exif=exif)
    (root / "labelTxt" / "a.txt").write_text("gsd:0.5\n250 10 290 10 290 50 250 50 plane 0\n")
    out = tmp_path / "out"
    rc = main(["build", "--source", f"dota:{root}/labelTxt", "--out", str(out), "--no-progress"])
    assert rc == 0
    full = datasets.load_dataset(str(out), "full")
    (split,) = full.values()
    row = split[0]
    image = row["image"]  # datasets' decoding (it would apply an Orientation tag)
    assert image.size == (row["width"], row["height"]) == (300, 200)
    assert np.abs(np.asarray(image.convert("RGB"))[30, 270].astype(int) - (250, 0, 0)).max() < 12
    assert row["objects"][0]["bbox"] == [250.0, 10.0, 290.0, 50.0]
    assert "plane is in the top right" in row["rule_text"]
    # the stored bytes carry no rotation and differ from the original JPEG only in that tag
    cell = split.cast_column("image", datasets.Image(decode=False))[0]["image"]
    stored = Image.open(io.BytesIO(cell["bytes"]))
    assert stored.format == "JPEG" and stored.getexif().get(ORIENTATION) in (None, 1)
    src = original.read_bytes()
    assert len(cell["bytes"]) == len(src) and sum(a != b for a, b in zip(cell["bytes"], src)) == 1
    # training and evaluation decode the same pixels as load_dataset
    from hqrs.evaluation.data import load_image as eval_load_image

    ref = np.asarray(image.convert("RGB"))
    assert np.array_equal(np.asarray(decode_image(cell)), ref)
    assert np.array_equal(np.asarray(eval_load_image(cell)), ref)


def _tagged(path: Path, fmt: str, orientation: int) -> np.ndarray:
    arr = _scene(48, 32)
    image = Image.fromarray(arr)
    if fmt == "jpeg-xmp":
        xmp = (
            '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-'
            'syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
            f'tiff:Orientation="{orientation}"/></rdf:RDF></x:xmpmeta>'
        )
        image.save(path, "JPEG", quality=95, xmp=xmp.encode())
    else:
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        image.save(path, {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt], exif=exif, lossless=True)
    with Image.open(path) as im:
        assert im.getexif().get(ORIENTATION) == orientation  # the file really is tagged
        return np.asarray(im.convert("RGB"))  # stored-frame pixels


@pytest.mark.parametrize("fmt", ["jpeg", "jpeg-xmp", "png", "webp"])
@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_every_orientation_is_dropped_and_pixels_stay_in_the_stored_frame(tmp_path, fmt, orientation):
    suffix = {"jpeg": ".jpg", "jpeg-xmp": ".jpg", "png": ".png", "webp": ".webp"}[fmt]
    path = tmp_path / f"a{suffix}"
    stored = _tagged(path, fmt, orientation)
    loaded = load_image(path, _settings(tmp_path))
    assert (loaded.width, loaded.height) == (48, 32)
    assert loaded.path != path and f"Orientation={orientation}" in loaded.converted
    data = loaded.path.read_bytes()
    assert loaded.image_id == images_mod.content_id(data)
    with Image.open(io.BytesIO(data)) as im:
        assert im.getexif().get(ORIENTATION) in (None, 1)
    decoded = _datasets_decode(data)
    assert decoded.size == (48, 32)
    assert np.array_equal(np.asarray(decoded.convert("RGB")), stored)  # lossless: no re-encoding
    assert np.array_equal(np.asarray(decode_image(data)), stored)
    if fmt.startswith("jpeg"):  # the JPEG is patched in place, not re-encoded
        src = path.read_bytes()
        assert len(data) == len(src) and sum(a != b for a, b in zip(data, src)) == 1


def test_tiff_orientation_tag_is_dropped_too(tmp_path):
    rgb = _scene(30, 20)
    tifffile.imwrite(tmp_path / "o.tif", rgb, photometric="rgb", extratags=[(274, "H", 1, 6, True)])
    with Image.open(tmp_path / "o.tif") as im:
        assert im.getexif().get(ORIENTATION) == 6 and _datasets_decode(
            (tmp_path / "o.tif").read_bytes()
        ).size == (20, 30)
    loaded = load_image(tmp_path / "o.tif", _settings(tmp_path))
    assert (loaded.width, loaded.height) == (30, 20) and "Orientation=6 dropped" in loaded.converted
    data = loaded.path.read_bytes()
    assert np.array_equal(np.asarray(_datasets_decode(data)), rgb)


def test_untagged_and_orientation_1_files_are_used_as_they_are(tmp_path):
    plain = tmp_path / "plain.jpg"
    Image.fromarray(_scene(48, 32)).save(plain)
    one = tmp_path / "one.jpg"
    exif = Image.Exif()
    exif[ORIENTATION] = 1
    Image.fromarray(_scene(48, 32)).save(one, exif=exif)
    for path in (plain, one):
        loaded = load_image(path, _settings(tmp_path))
        assert loaded.path == path and loaded.converted is None


def test_training_decode_agrees_with_datasets_on_foreign_tagged_images(tmp_path):
    """Datasets not built by hqrs may carry the tag: decode_image rotates exactly as datasets does."""
    path = tmp_path / "t.jpg"
    _tagged(path, "jpeg", 6)
    data = path.read_bytes()
    ref = np.asarray(_datasets_decode(data).convert("RGB"))
    assert ref.shape == (48, 32, 3)
    assert np.array_equal(np.asarray(decode_image(data)), ref)
    assert np.array_equal(np.asarray(decode_image({"bytes": None, "path": str(path)})), ref)


# ----------------------------------------------------------------------------------- bands / bits


def _reference(array: np.ndarray, bands=None, stretch=(2.0, 98.0)) -> np.ndarray:
    """The documented conversion, written the plain float64 way (the pre-#11.3 formula)."""
    if array.ndim == 2 or array.shape[2] == 1:
        sel = array.reshape(array.shape[0], array.shape[1], 1)
    else:
        n = array.shape[2]
        bands = bands or ((1, 2, 3) if n >= 3 else (1,))
        sel = array[..., [b - 1 for b in bands]]
    if sel.dtype == np.uint8:
        out = sel.copy()
    else:
        out = np.empty(sel.shape, np.uint8)
        for j in range(sel.shape[2]):
            v = sel[..., j].astype(np.float64)
            finite = v[np.isfinite(v)]
            lo, hi = np.percentile(finite, stretch)
            hi = lo + 1.0 if hi <= lo else hi
            out[..., j] = np.clip(np.rint((np.nan_to_num(v, nan=lo) - lo) * (255.0 / (hi - lo))), 0, 255)
    return out[..., 0] if out.shape[2] == 1 else out


def _data(dtype: str, shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "uint8":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    if dtype == "int16":
        return rng.integers(-3000, 9000, shape).astype(np.int16)
    if dtype == "float32":
        return (rng.standard_normal(shape) * 100).astype(np.float32)
    return (rng.gamma(2.0, 600.0, shape)).astype(dtype)  # skewed, many ties, like reflectances


def _pixels(loaded) -> np.ndarray:
    with Image.open(loaded.path) as im:
        return np.asarray(im)


_LAYOUTS = [("minisblack", n) for n in (1, 2, 3, 4, 5)] + [("planar", n) for n in (2, 3, 4)]
_LAYOUTS += [("rgb", n) for n in (3, 4, 5)] + [("alpha", n) for n in (4, 5)]


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "uint32", "float32"])
@pytest.mark.parametrize("layout,samples", _LAYOUTS)
def test_tiff_bands_for_every_sample_count_bit_depth_and_photometric_tag(tmp_path, dtype, samples, layout):
    array = _data(dtype, (23, 37, samples) if samples > 1 else (23, 37))
    kw = {}
    if layout == "minisblack" or (layout == "planar" and samples > 1):
        kw = {"photometric": "minisblack", "planarconfig": "separate" if layout == "planar" else "contig"}
    elif layout == "rgb":
        kw = {"photometric": "rgb", "extrasamples": ["unspecified"] * (samples - 3)}
    elif layout == "alpha":  # NAIP: R, G, B, NIR with the 4th sample tagged as (unassociated) alpha
        kw = {"photometric": "rgb", "extrasamples": ["unassalpha"] + ["unspecified"] * (samples - 4)}
    if layout == "planar" and samples > 1:
        tifffile.imwrite(tmp_path / "x.tif", np.moveaxis(array, -1, 0), **kw)
    else:
        tifffile.imwrite(tmp_path / "x.tif", array, **kw)
    choices = [None, (1,)] + ([(3, 2, 1)] if samples >= 3 else []) + ([(4, 3, 2)] if samples >= 4 else [])
    for bands in choices:
        loaded = load_image(tmp_path / "x.tif", _settings(tmp_path, bands=bands))
        got = _pixels(loaded)
        assert (loaded.width, loaded.height) == (37, 23)
        assert np.array_equal(got, _reference(array, bands)), (bands, loaded.converted)
    if samples == 2 or samples >= 3 and dtype == "uint8":
        with pytest.raises(SkipItem, match=f"asks for band {samples + 1} but .* has {samples}"):
            load_image(tmp_path / "x.tif", _settings(tmp_path, bands=(samples + 1, 1, 1)))


def test_naip_rgbn_tiff_is_rgb_by_default_and_bands_pick_nir(tmp_path):
    rgbn = _data("uint8", (40, 60, 4), seed=3)
    tifffile.imwrite(tmp_path / "naip.tif", rgbn, photometric="rgb", extrasamples=["unassalpha"])
    with Image.open(tmp_path / "naip.tif") as im:
        assert im.mode == "RGBA"  # what Pillow (and the old code) makes of it: NIR as transparency
    default = load_image(tmp_path / "naip.tif", _settings(tmp_path))
    assert Image.open(default.path).mode == "RGB" and np.array_equal(_pixels(default), rgbn[..., :3])
    nir = load_image(tmp_path / "naip.tif", _settings(tmp_path, bands=(4, 3, 2)))
    assert np.array_equal(_pixels(nir), rgbn[..., [3, 2, 1]])
    for samples in (3, 4):  # the same data tagged MINISBLACK: read, not "not an image"
        tifffile.imwrite(
            tmp_path / f"mb{samples}.tif",
            rgbn[..., :samples],
            photometric="minisblack",
            planarconfig="contig",
        )
        loaded = load_image(tmp_path / f"mb{samples}.tif", _settings(tmp_path))
        assert np.array_equal(_pixels(loaded), rgbn[..., :3])


def test_png_and_tiff_mean_the_same_for_stretch_and_bands(tmp_path):
    import imagecodecs

    for samples in (1, 2, 3, 4):
        for dtype in ("uint8", "uint16"):
            array = _data(dtype, (21, 34, samples) if samples > 1 else (21, 34), seed=samples)
            (tmp_path / "p.png").write_bytes(imagecodecs.png_encode(array))
            extra = {"extrasamples": ["unassalpha"]} if samples in (2, 4) else {}
            photometric = "rgb" if samples >= 3 else "minisblack"
            tifffile.imwrite(tmp_path / "t.tif", array, photometric=photometric, **extra)
            bands_choices = (
                [None] + ([(3, 2, 1)] if samples >= 3 else []) + ([(4, 3, 2)] if samples == 4 else [])
            )
            for bands in bands_choices:
                for stretch in ((2.0, 98.0), (0.0, 100.0)):
                    s = _settings(tmp_path, bands=bands, stretch=stretch)
                    png, tif = load_image(tmp_path / "p.png", s), load_image(tmp_path / "t.tif", s)
                    ref = _reference(array, bands, stretch)
                    assert np.array_equal(_pixels(png), ref), (samples, dtype, bands, stretch, png.converted)
                    assert np.array_equal(_pixels(tif), ref), (samples, dtype, bands, stretch, tif.converted)


@pytest.mark.parametrize(
    "compression,kw",
    [
        ("lzw", {"predictor": 2}),
        ("adobe_deflate", {"predictor": 2}),
        ("zstd", {}),
        ("lzma", {}),
        ("packbits", {}),
        ("lerc", {}),
        ("jpeg2000", {}),
    ],
)
@pytest.mark.parametrize("tiled", [False, True])
def test_every_compression_of_a_16bit_geotiff(tmp_path, compression, kw, tiled):
    array = _data("uint16", (45, 70, 3), seed=7)
    layout = {"tile": (16, 32)} if tiled else {"rowsperstrip": 7}
    tifffile.imwrite(tmp_path / "g.tif", array, photometric="rgb", compression=compression, **kw, **layout)
    loaded = load_image(tmp_path / "g.tif", _settings(tmp_path))
    expected = _reference(tifffile.imread(tmp_path / "g.tif"))  # lossy codecs: what the file decodes to
    assert np.array_equal(_pixels(loaded), expected)


@pytest.mark.parametrize("compression", ["jpeg", "webp", "zstd", "lzw"])
def test_8bit_compressions_pillow_cannot_read_go_through_tifffile(tmp_path, compression):
    array = _scene(64, 48)
    tifffile.imwrite(tmp_path / "e.tif", array, photometric="rgb", compression=compression, tile=(16, 16))
    loaded = load_image(tmp_path / "e.tif", _settings(tmp_path))
    assert (loaded.width, loaded.height) == (64, 48)
    assert np.array_equal(_pixels(loaded), tifffile.imread(tmp_path / "e.tif"))


def test_miniswhite_and_palette_tiffs(tmp_path):
    array = _data("uint16", (20, 30), seed=1)
    tifffile.imwrite(tmp_path / "w.tif", array, photometric="miniswhite")
    loaded = load_image(tmp_path / "w.tif", _settings(tmp_path))
    assert np.array_equal(_pixels(loaded), _reference(65535 - array))  # 0 is white
    index = np.random.default_rng(2).integers(0, 4, (20, 30), dtype=np.uint8)
    cmap = np.zeros((3, 256), np.uint16)
    cmap[:, :4] = np.array([[0, 65535, 0, 0], [0, 0, 65535, 0], [0, 0, 0, 65535]])
    tifffile.imwrite(tmp_path / "p.tif", index, photometric="palette", colormap=cmap)
    for bands in (None, (3, 2, 1)):
        loaded = load_image(tmp_path / "p.tif", _settings(tmp_path, bands=bands))
        rgb = np.asarray(Image.open(loaded.path).convert("RGB"))
        expected = (cmap[:, index] // 257).astype(np.uint8).transpose(1, 2, 0)
        assert np.array_equal(rgb, expected[..., [b - 1 for b in bands]] if bands else expected)


def test_rgba_png_follows_the_band_rule(tmp_path):
    rgba = _data("uint8", (20, 30, 4), seed=5)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert np.array_equal(_pixels(load_image(tmp_path / "a.png", _settings(tmp_path))), rgba[..., :3])
    picked = load_image(tmp_path / "a.png", _settings(tmp_path, bands=(4, 3, 2)))
    assert np.array_equal(_pixels(picked), rgba[..., [3, 2, 1]])


def test_histogram_percentiles_equal_numpy(tmp_path):
    rng = np.random.default_rng(0)
    for values in (
        rng.integers(0, 65536, 5000).astype(np.uint16),
        rng.integers(0, 3, 7).astype(np.uint16),
        np.full(10, 7, np.uint16),
        rng.integers(-32768, 32767, 999).astype(np.int16),
        np.array([5], np.uint16),
    ):
        keys, size = images_mod._small_int_keys(values)
        counts = np.bincount(keys, minlength=size)
        for q in ((2.0, 98.0), (0.0, 100.0), (13.3, 50.0)):
            got = images_mod._histogram_percentiles(counts, q)
            offset = 32768 if values.dtype == np.int16 else 0
            assert np.allclose(np.array(got) - offset, np.percentile(values.astype(np.float64), q), atol=1e-9)


def test_streamed_tiff_blocks_equal_whole_reads(tmp_path, monkeypatch):
    """Uncompressed TIFFs are read row block by row block; tiny blocks exercise every edge."""
    monkeypatch.setattr(images_mod, "_BLOCK_PIXELS", 50)
    array = _data("uint16", (31, 17, 4), seed=9)
    for kw in (
        {"photometric": "rgb", "extrasamples": ["unspecified"]},
        {"photometric": "minisblack", "planarconfig": "separate"},
    ):
        data = np.moveaxis(array, -1, 0) if kw.get("planarconfig") == "separate" else array
        tifffile.imwrite(tmp_path / "s.tif", data, **kw)
        big = tmp_path / "s.tif"
        for bands in (None, (4, 1, 2)):
            loaded = load_image(big, _settings(tmp_path, bands=bands))
            assert np.array_equal(_pixels(loaded), _reference(array, bands))
    tifffile.imwrite(tmp_path / "be.tif", array[..., :3], photometric="rgb", byteorder=">")
    assert np.array_equal(
        _pixels(load_image(tmp_path / "be.tif", _settings(tmp_path))), _reference(array[..., :3])
    )


# ----------------------------------------------------------------------------------- memory


def test_conversion_that_would_not_fit_is_refused_up_front_naming_the_file(tmp_path):
    import imagecodecs

    folder = tmp_path / "scenes" / "cls"
    folder.mkdir(parents=True)
    tifffile.imwrite(folder / "big16.tif", np.zeros((600, 800, 3), np.uint16), photometric="rgb")
    tifffile.imwrite(folder / "small16.tif", np.zeros((20, 30, 3), np.uint16), photometric="rgb")
    (folder / "big16.png").write_bytes(imagecodecs.png_encode(np.zeros((600, 800, 3), np.uint16)))
    # a fixed 64 MiB covers block buffers; an 800×600 RGB conversion needs 0.48 MP × 7 bytes on top
    limit = (64 << 20) + (1 << 20)
    with pytest.raises(SkipItem, match=r"out of memory: converting this 800×600 3-band uint16 RGB TIFF"):
        load_image(folder / "big16.tif", _settings(tmp_path, max_memory=limit))
    report = SkipReport()
    spec = f"folder:{tmp_path}/scenes?cache_dir={tmp_path}/cache&max_memory={limit}"
    recs = list(load_source(spec).records(report))
    assert [Path(r.meta["original"]).name for r in recs] == ["small16.tif"]
    reasons = {Path(i["file"]).name: i["reason"] for i in report.items}
    assert set(reasons) == {"big16.tif", "big16.png"}
    assert all("out of memory" in r and "max_memory" in r and "gdal_translate" in r for r in reasons.values())


def test_multiband_and_16bit_files_through_build_and_load_dataset(tmp_path):
    """NAIP RGBN, MINISBLACK RGBN, 16-bit LZW GeoTIFF and 16-bit PNG through `hqrs build` and back."""
    import json

    import imagecodecs

    from hqrs.scripts.cli import main

    rgbn, rgbn_mb = _data("uint8", (40, 60, 4), seed=11), _data("uint8", (40, 60, 4), seed=13)
    rgbn16, rgb16 = _data("uint16", (40, 60, 4), seed=12), _data("uint16", (40, 60, 3), seed=14)
    root = tmp_path / "scenes"
    for label in ("naip", "minisblack", "lzw", "png"):
        (root / label).mkdir(parents=True)
    tifffile.imwrite(root / "naip" / "n.tif", rgbn, photometric="rgb", extrasamples=["unassalpha"])
    tifffile.imwrite(root / "minisblack" / "m.tif", rgbn_mb, photometric="minisblack", planarconfig="contig")
    tifffile.imwrite(root / "lzw" / "g.tif", rgbn16, photometric="minisblack", planarconfig="contig",
                     compression="lzw", predictor=2, tile=(16, 16))  # fmt: skip
    (root / "png" / "p.png").write_bytes(imagecodecs.png_encode(rgb16))
    cases = {
        (): {
            "naip": rgbn[..., :3],
            "minisblack": rgbn_mb[..., :3],
            "lzw": _reference(rgbn16),
            "png": _reference(rgb16),
        },  # fmt: skip
        ("bands=4,3,2",): {
            "naip": rgbn[..., [3, 2, 1]],
            "minisblack": rgbn_mb[..., [3, 2, 1]],
            "lzw": _reference(rgbn16, (4, 3, 2)),
        },  # fmt: skip
    }
    for options, expected in cases.items():
        out = tmp_path / f"out{len(options)}"
        spec = f"folder:{root}?cache_dir={tmp_path / 'cache'}" + "".join(f"&{o}" for o in options)
        assert main(["build", "--source", spec, "--out", str(out), "--no-progress"]) == 0
        rows = [r for split in datasets.load_dataset(str(out)).values() for r in split]
        got = {r["label"]: r for r in rows}
        assert set(got) == set(expected)
        for label, pixels in expected.items():
            row = got[label]
            assert row["image"].mode == "RGB" and (row["width"], row["height"]) == row["image"].size == (
                60,
                40,
            )
            assert np.array_equal(np.asarray(row["image"]), pixels), (options, label)
        report = json.loads((out / "build_report.json").read_text())
        skipped = [
            i for i in report.get("skipped_items", report.get("skips", [])) if "p.png" in json.dumps(i)
        ]
        assert report["skipped"] == (1 if options else 0) and (not options or skipped)
