"""Hostile inputs to the sources, run directories and writers (issues #11.4, #12.5-#12.7, #15.10-#15.12).

Every case here failed before the fix (a file written outside ``--out``, an image from outside the data
root or ``/etc/passwd`` embedded, a crash or a silent loss) and is a refusal or a counted skip naming the
file and the reason now. The fuzz test at the end feeds every file-based source adapter random type
mutations of valid files.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from hqrs.dataset_builder.export import export_dataset
from hqrs.dataset_builder.records import check_image_id, file_content_id, inside
from hqrs.dataset_builder.sources import SkipReport, load_source

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]


def _png(path: Path, colour=(10, 120, 200), size=(48, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", size, colour)
    for x in range(0, size[0], 8):  # some structure, so the perceptual hashes differ
        for y in range(size[1]):
            im.putpixel((x, y), (colour[1], colour[2], colour[0]))
    im.save(path)
    return path


def _records(spec: str):
    report = SkipReport()
    return list(load_source(spec).records(report)), report


def _reasons(report: SkipReport) -> str:
    return "\n".join(f"{i['kind']} {i['file']}: {i['reason']}" for i in report.items)


def _build(out: Path, **kw) -> dict:
    return export_dataset(out, progress=False, split_ratios="1,0,0", near_dup_distance=-1, **kw)


# ------------------------------------------------------------------ #12.5 run directories and writers


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    """A real finished MpGI run (offline recipe) over three small images: ``RUN/mpgi_run``."""
    root = tmp_path_factory.mktemp("run")
    for i in range(3):
        _png(root / "scenes" / "farm" / f"f{i}.png", COLOURS[i])
    out = root / "out"
    _build(out, sources=[f"folder:{root / 'scenes'}"], configs=("default",), mpgi_dir=str(out / "mpgi_run"))
    return root


def _tampered_run(small_run: Path, tmp_path: Path, edit) -> tuple[Path, dict]:
    """A copy of the run whose first final-stage document is changed by ``edit(doc)``."""
    run = tmp_path / "run"
    shutil.copytree(small_run / "out" / "mpgi_run", run)
    (output,) = run.glob("passes/*/stages/*/output/*.jsonl")
    docs = [json.loads(line) for line in output.read_text().splitlines() if line.strip()]
    edit(docs[0])
    output.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return run, docs[0]


def _set_id(doc: dict, image_id: str) -> None:
    doc["id"] = doc["metadata"]["record"]["image_id"] = image_id


@pytest.mark.parametrize("fmt", ["open_clip-csv", "webdataset", "parquet"])
@pytest.mark.parametrize("kind", ["relative", "absolute"])
def test_run_dir_image_id_cannot_write_outside_out(small_run, tmp_path, fmt, kind):
    target = tmp_path / "escaped" / "x"
    bad = "../../../escaped/x" if kind == "relative" else str(target)
    run, doc = _tampered_run(small_run, tmp_path, lambda d: _set_id(d, bad))
    report = _build(tmp_path / "a" / "b" / "out", run_dir=str(run), fmt=fmt)
    assert not (tmp_path / "escaped").exists()  # before: escaped/x.png written, or tar members ../…
    assert report["images"] == 2
    (item,) = report["skipped_items"]
    assert (
        item["file"] == doc["metadata"]["record"]["image"] and f"image_id {bad!r:.80}" in item["reason"]
    )  # long values are cut at 80 characters
    assert "is not an image id" in item["reason"]


def test_check_image_id_and_inside():
    assert check_image_id("0123456789abcdef") == "0123456789abcdef"
    for bad in ["../../tmp/x", "/tmp/x", "0123456789ABCDEF", "0123456789abcde", "", None, 7, ["a"]]:
        with pytest.raises(ValueError, match="is not an image id"):
            check_image_id(bad)


def test_writers_refuse_names_and_links_that_leave_the_output_folder(tmp_path):
    from hqrs.dataset_builder import export

    out = tmp_path / "out"
    (tmp_path / "elsewhere").mkdir()
    out.mkdir()
    assert inside(out, "images", "a.png") == out / "images" / "a.png"
    for parts in [("..", "x.png"), ("/tmp/x.png",), ("images", "../../x.png")]:
        with pytest.raises(ValueError, match="outside the output folder"):
            inside(out, *parts)
    # a pre-planted link out/images -> elsewhere: the CSV writer refuses to write through it
    (out / "images").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="outside the output folder"):
        inside(out, "images", "a.png")
    from hqrs.dataset_builder.planning import PlannedImage, StagedImagesWriter
    from hqrs.dataset_builder.records import Caption, ImageRecord, MpGIResult
    from hqrs.dataset_builder.sources.images import ImageCell, image_cell

    image = _png(tmp_path / "src" / "a.png")
    image_id = file_content_id(image)
    cells = tmp_path / "images.arrow"
    with StagedImagesWriter(cells) as writer:
        writer.append(ImageCell(**image_cell(str(image), image_id)))
    record = ImageRecord(image_id=image_id, image=str(image), source="t", width=8, height=8)
    planned = PlannedImage(MpGIResult(record, "", captions=[Caption("a caption", "short")]), 0, 1)
    staged = tmp_path / "staged.jsonl"
    staged.write_text(json.dumps(planned.to_dict()) + "\n")
    task = export._Task(
        "csv", "pairs", "train", 0, 1, [str(staged)], str(out / ".parts" / "t.tsv"), str(cells)
    )
    with pytest.raises(ValueError, match="outside the output folder"):
        export._run_task(task)
    assert list((tmp_path / "elsewhere").iterdir()) == []
    # a staged result with a traversal id (from_dict does not check ids): the tar writer refuses it
    doc = planned.to_dict()
    doc["result"]["record"]["image_id"] = "../../evil"
    staged.write_text(json.dumps(doc) + "\n")
    task = export._Task(
        "wds", "default", "train", 0, 1, [str(staged)], str(tmp_path / "w" / "s.tar"), str(cells)
    )
    with pytest.raises(ValueError, match="is not an image id"):
        export._run_task(task)
    assert not (tmp_path / "w" / "s.tar").exists()


@pytest.mark.parametrize("fmt", ["parquet", "webdataset"])
def test_a_planted_link_in_out_is_neither_written_nor_cleaned_through(small_run, tmp_path, fmt):
    """OUT/data (or a shard) linking to another folder: no shard is written or deleted there."""
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "default").mkdir(parents=True)
    victim = elsewhere / "default" / "train-00000-of-00009.parquet"
    victim.write_bytes(b"not ours")
    out = tmp_path / "out"
    out.mkdir()
    (out / "data").symlink_to(elsewhere, target_is_directory=True)
    run = str(small_run / "out" / "mpgi_run")
    if fmt == "parquet":
        with pytest.raises(ValueError, match="outside the output folder"):
            _build(out, run_dir=run, fmt=fmt)
    else:
        _build(out, run_dir=run, fmt=fmt)  # stale-shard cleaning does not follow the link
    assert victim.read_bytes() == b"not ours" and sorted(elsewhere.rglob("*")) == [
        elsewhere / "default",
        victim,
    ]


def test_webdataset_members_are_plain_names(small_run, tmp_path):
    _build(tmp_path / "wds", run_dir=str(small_run / "out" / "mpgi_run"), fmt="webdataset")
    for shard in (tmp_path / "wds").glob("*.tar"):
        with tarfile.open(shard) as tar:
            for name in tar.getnames():
                assert "/" not in name and ".." not in name
                check_image_id(name.split(".", 1)[0])


# ------------------------------------------------------------------ #12.6 run directories embed any file


def test_run_dir_symlink_to_a_non_image_is_not_embedded(small_run, tmp_path):
    """A record whose image is a link to /etc/passwd (and that carries a phash) is a skip."""
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    link = tmp_path / "evil.png"
    link.symlink_to(secret)

    def edit(doc):
        rec = doc["metadata"]["record"]
        rec["image"] = doc["text"] = str(link)
        rec["meta"]["phash"] = "0f0f0f0f0f0f0f0f"

    run, _ = _tampered_run(small_run, tmp_path, edit)
    report = _build(tmp_path / "out", run_dir=str(run), configs=("default",))
    assert report["images"] == 2
    (item,) = report["skipped_items"]
    assert item["file"] == str(link) and "hash to" in item["reason"]

    # the same with the id forged to match the secret's bytes: the decode check refuses it
    run2, _ = _tampered_run(
        small_run, tmp_path / "2", lambda d: (edit(d), _set_id(d, file_content_id(secret)))
    )
    report = _build(tmp_path / "out2", run_dir=str(run2), configs=("default",))
    (item,) = report["skipped_items"]
    assert "is not an image" in item["reason"]
    import pyarrow.parquet as pq

    for shard in (tmp_path / "out2" / "data" / "default").glob("*.parquet"):
        for row in pq.read_table(shard).to_pylist():
            assert b"root:x:0:0" not in row["image"]["bytes"]


def test_allow_root_limits_the_images_of_a_run(small_run, tmp_path):
    run = str(small_run / "out" / "mpgi_run")
    with pytest.raises(ValueError, match="no usable image"):
        _build(tmp_path / "out", run_dir=run, allowed_roots=[str(tmp_path)])
    items = json.loads((tmp_path / "out" / "build_report.json").read_text())["skipped_items"]
    assert len(items) == 3 and all("outside the allowed roots" in i["reason"] for i in items)
    report = _build(tmp_path / "ok", run_dir=run, allowed_roots=[str(small_run / "scenes")])
    assert report["images"] == 3


# ------------------------------------------------------------------ #12.7 sources escape their root


@pytest.fixture
def outside(tmp_path) -> Path:
    return _png(tmp_path / "outside" / "x.png", (1, 2, 3))


def test_karpathy_filename_and_filepath_cannot_leave_the_root(tmp_path, outside):
    data = tmp_path / "data"
    _png(data / "images" / "ok.png")
    entries = [
        {"filename": "ok.png", "sentences": [{"raw": "fine"}]},
        {"filename": "../../outside/x.png", "sentences": [{"raw": "traversal"}]},
        {"filename": "x.png", "filepath": str(outside.parent), "sentences": [{"raw": "absolute"}]},
    ]
    (data / "d.json").write_text(json.dumps({"images": entries}))
    recs, report = _records(f"karpathy:{data / 'd.json'}")
    assert [r.references for r in recs] == [["fine"]]
    assert len(report) == 2 and all("outside the source root" in i["reason"] for i in report.items)
    assert {i["file"].rsplit("#", 1)[1] for i in report.items} == {"images[1]", "images[2]"}


def test_voc_filename_cannot_leave_the_root(tmp_path, outside):
    ann = tmp_path / "data" / "Annotations"
    ann.mkdir(parents=True)
    (tmp_path / "data" / "JPEGImages").mkdir()
    (ann / "a.xml").write_text(
        "<annotation><filename>../../outside/x.png</filename><object><name>ship</name>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>"
    )
    recs, report = _records(f"voc:{ann}")
    assert recs == [] and "outside the source root" in report.items[0]["reason"]


def test_symlinked_files_and_class_folders_cannot_leave_the_root(tmp_path, outside):
    root = tmp_path / "scenes"
    _png(root / "farm" / "ok.png")
    (root / "farm" / "linked.png").symlink_to(outside)
    (root / "port").symlink_to(outside.parent, target_is_directory=True)
    _png(root / "farm" / "inner.png", (9, 9, 9))
    (root / "farm" / "alias.png").symlink_to(root / "farm" / "inner.png")  # a link inside: fine
    recs, report = _records(f"folder:{root}")
    assert sorted(Path(r.image).name for r in recs) == ["alias.png", "inner.png", "ok.png"]
    assert sorted(Path(i["file"]).name for i in report.items) == ["linked.png", "x.png"]
    assert all("outside the source root" in i["reason"] for i in report.items)
    recs, report = _records(f"images:{root / 'farm'}")
    assert len(recs) == 3 and "linked.png" in _reasons(report)


def test_openclip_csv_absolute_paths_need_allow_outside_root(tmp_path, outside):
    csv = tmp_path / "data" / "c.csv"
    csv.parent.mkdir()
    csv.write_text(f"filepath,caption\n{outside},an absolute path\n../outside/x.png,a relative escape\n")
    recs, report = _records(f"openclip-csv:{csv}")
    assert recs == [] and len(report) == 2
    assert all("allow_outside_root=true" in i["reason"] for i in report.items)
    recs, report = _records(f"openclip-csv:{csv}?allow_outside_root=true")
    assert [r.references for r in recs] == [["an absolute path"], ["a relative escape"]] and len(report) == 0


# ------------------------------------------------------------------ #11.4 nothing lost without a trace


def test_unclosed_quote_reports_the_damaged_lines(tmp_path):
    for i in range(4):
        _png(tmp_path / f"{i}.png", COLOURS[i])
    lines = ["filepath,caption", "0.png,fine", '1.png,"opens a quote', "2.png,swallowed", "3.png,too"]
    (tmp_path / "c.csv").write_text("\n".join(lines) + "\n")
    recs, report = _records(f"openclip-csv:{tmp_path / 'c.csv'}")
    assert [r.references for r in recs] == [["fine"]]
    assert [i["file"].rsplit(":", 1)[1] for i in report.items] == ["3", "4", "5"]
    assert all("quote opened on line 3" in i["reason"] for i in report.items)
    # a legitimately quoted multi-line caption is kept
    (tmp_path / "m.csv").write_text('filepath,caption\n0.png,"two\nlines"\n1.png,next\n')
    recs, report = _records(f"openclip-csv:{tmp_path / 'm.csv'}")
    assert [r.references for r in recs] == [["two\nlines"], ["next"]] and len(report) == 0


def test_unclosed_quote_fails_strict(tmp_path):
    from hqrs.scripts import cli

    for i in range(3):
        _png(tmp_path / f"{i}.png", COLOURS[i])
    (tmp_path / "c.csv").write_text('filepath,caption\n0.png,fine\n1.png,"opens\n2.png,gone\n')
    code = cli.main(
        ["build", "--captions-csv", str(tmp_path / "c.csv"), "--out", str(tmp_path / "o"), "--strict"]
        + ["--no-progress", "--split-ratios", "1,0,0", "-q"]
    )
    assert code == 3  # before: 0, with one image and the last row's text swallowed


def test_exact_duplicates_are_counted_on_every_path(tmp_path):
    scenes = tmp_path / "scenes" / "farm"
    _png(scenes / "a.png", COLOURS[0])
    _png(scenes / "b.png", COLOURS[1])
    shutil.copy(scenes / "a.png", scenes / "a_copy.png")
    report = _build(tmp_path / "src", sources=[f"folder:{tmp_path / 'scenes'}"], configs=("default",))
    (tmp_path / "c.csv").write_text(
        "filepath,caption\nfarm/a.png,one\nfarm/b.png,two\nfarm/a_copy.png,three\n"
    )
    shutil.copytree(tmp_path / "scenes", tmp_path / "csvroot")
    shutil.move(tmp_path / "c.csv", tmp_path / "csvroot" / "c.csv")
    csv_report = _build(
        tmp_path / "csv", captions_csv=str(tmp_path / "csvroot" / "c.csv"), configs=("default",)
    )
    for rep in (report, csv_report):
        assert rep["images"] == 2 and rep["exact_duplicates"] == 1, rep["skipped_items"]
        (item,) = rep["skipped_items"]
        assert item["file"].endswith("a_copy.png") and item["reason"].startswith("same image bytes as")
        assert item["kind"] == "image"
    # `hqrs mpgi run --source`: the same skip (the engine used to ignore the second copy unseen)
    from hqrs.scripts.mpgi import iter_source_records

    mpgi_report = SkipReport()
    assert len(list(iter_source_records([str(tmp_path / "scenes")], mpgi_report))) == 2
    assert mpgi_report.count("same image bytes as") == 1


def test_lone_surrogate_caption_is_a_skip_not_a_crash(tmp_path):
    data = tmp_path / "data"
    _png(data / "images" / "a.png", COLOURS[0])
    _png(data / "images" / "b.png", COLOURS[1])
    text = (
        '{"images": [{"filename": "a.png", "sentences": [{"raw": "bad \\ud800 text"}]},'
        ' {"filename": "b.png", "sentences": [{"raw": "good text"}]},'
        ' {"filename": "\\udcff.png", "sentences": [{"raw": "x"}]}]}'
    )
    (data / "d.json").write_text(text)
    # a file name that is not UTF-8 (Latin-1 bytes on disk) reads as a lone surrogate too
    _png(Path(os.fsdecode(os.fsencode(tmp_path / "scenes" / "farm") + b"/caf\xe9.png")), COLOURS[2])
    sources = [f"karpathy:{data / 'd.json'}", f"folder:{tmp_path / 'scenes'}"]
    report = _build(tmp_path / "out", sources=sources, configs=("default",))
    assert report["images"] == 1  # before: TypeError from the JSON writer, nothing built
    items = report["skipped_items"]
    assert [i["file"].rsplit("/", 1)[1] for i in items] == [
        "d.json#images[0]",
        "d.json#images[2]",
        "caf\\udce9.png",
    ]
    assert "lone surrogate" in items[0]["reason"] and "lone surrogate" in items[2]["reason"]
    assert "image not found" in items[1]["reason"]
    (tmp_path / "out" / "build_report.json").read_text(encoding="utf-8")  # valid UTF-8


def test_malformed_coco_is_a_skip_naming_the_file_and_entry(tmp_path):
    _png(tmp_path / "images" / "a.png", COLOURS[0])
    _png(tmp_path / "images" / "b.png", COLOURS[1])
    cats = [{"id": 1, "name": "ship"}]
    ann = {"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}
    base = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}], "categories": cats}
    (tmp_path / "null.json").write_text(json.dumps({**base, "annotations": None}))
    recs, report = _records(f"coco:{tmp_path / 'null.json'}?images={tmp_path / 'images'}")
    assert (
        recs == []
        and report.items[0]["kind"] == "file"
        and "'annotations' must be a list" in _reasons(report)
    )
    listy = {
        **base,
        "images": [{"id": [1], "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
        "annotations": [{**ann, "image_id": [1]}, {**ann, "image_id": 2, "category_id": [1]}, ann],
    }
    (tmp_path / "list.json").write_text(json.dumps(listy))
    recs, report = _records(f"coco:{tmp_path / 'list.json'}?images={tmp_path / 'images'}")
    assert [r.meta["file"] for r in recs] == ["b.png"]
    files = sorted(i["file"].rsplit("#", 1)[1] for i in report.items)
    assert files == ["annotations[0]", "annotations[1]", "annotations[2]", "images[0]"], _reasons(report)


def test_dangling_and_looping_symlinks_are_counted(tmp_path):
    root = tmp_path / "scenes" / "farm"
    _png(root / "ok.png")
    (root / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (root / "loop.png").symlink_to(root / "loop.png")
    for spec in (f"folder:{tmp_path / 'scenes'}", f"images:{root}"):
        recs, report = _records(spec)
        assert len(recs) == 1
        reasons = {Path(i["file"]).name: i["reason"] for i in report.items}
        assert set(reasons) == {"dangling.png", "loop.png"}  # before: both vanished uncounted
        assert "dangling symbolic link" in reasons["dangling.png"] and "loop" in reasons["loop.png"]


# ------------------------------------------------------------------ fuzz corpus: XML, zip-slip names


def test_voc_entity_bombs_and_external_entities_are_refused(tmp_path):
    ann = tmp_path / "Annotations"
    ann.mkdir()
    _png(tmp_path / "JPEGImages" / "a.png")
    # billion laughs, kept small (3 * 10**5 characters if expanded)
    ents = '<!ENTITY l0 "lol">' + "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 6))
    bomb = f'<?xml version="1.0"?><!DOCTYPE a [{ents}]><annotation><filename>&l5;</filename></annotation>'
    (ann / "a.xml").write_text(bomb)
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    (ann / "b.xml").write_text(
        f'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file://{secret}">]>'
        "<annotation><filename>&x;</filename></annotation>"
    )
    recs, report = _records(f"voc:{ann}")
    assert recs == [] and len(report) == 2
    assert all(i["kind"] == "file" and "refused" in i["reason"] for i in report.items), _reasons(report)


def test_zip_slip_names_in_every_format(tmp_path, outside):
    """Traversal names (``../``, absolute, backslashes, NUL) in each format's file-name field."""
    data = tmp_path / "data"
    _png(data / "images" / "ok.png")
    names = ["../outside/x.png", "../../" * 8 + str(outside)[1:], str(outside), "images/../../outside/x.png"]
    rows = "".join(f"{n},slip\n" for n in names)
    (data / "c.csv").write_text(f"filepath,caption\nimages/ok.png,fine\n{rows}")
    recs, report = _records(f"openclip-csv:{data / 'c.csv'}")
    assert len(recs) == 1 and len(report) == len(names)
    coco = {
        "images": [{"id": i, "file_name": n} for i, n in enumerate(names + ["nul\x00.png", "ok.png"])],
        "annotations": [],
        "categories": [],
    }
    (data / "c.json").write_text(json.dumps(coco))
    recs, report = _records(f"coco:{data / 'c.json'}?images={data / 'images'}")
    assert len(recs) == 1 and len(report) == len(names) + 1, _reasons(report)


# ------------------------------------------------------------------ #15.10 / #15.11 / #15.12


def test_build_reads_the_tsv_it_writes_with_absolute_and_relative_specs(small_run, tmp_path, monkeypatch):
    _build(tmp_path / "oc", run_dir=str(small_run / "out" / "mpgi_run"), fmt="open_clip-csv")
    tsv = tmp_path / "oc" / "train.csv"
    assert tsv.read_text().splitlines()[0] == "filepath\tcaption"
    monkeypatch.chdir(tmp_path)
    for spec in (str(tsv), "oc/train.csv", f"openclip-csv:{tsv}?sep=tab", "openclip-csv:oc/train.csv"):
        report = _build(tmp_path / "again" / str(abs(hash(spec))), captions_csv=spec, configs=("default",))
        assert report["images"] == 3 and report["skipped"] == 0, (spec, report["skipped_items"])


def test_zero_images_is_an_error_and_leaves_no_lock(tmp_path):
    from hqrs.scripts import cli

    (tmp_path / "c.tsv").write_text("path\ttext\nmissing.png\tno such image\n")
    out = tmp_path / "o"
    code = cli.main(
        ["build", "--captions-csv", str(tmp_path / "c.tsv"), "--out", str(out), "-q", "--no-progress"]
    )
    assert code == 1  # before: "0 images ()" and exit 0
    assert json.loads((out / "build_report.json").read_text())["skipped"] == 1
    assert not list(out.rglob("*.lock"))


def test_build_help_lists_every_source_kind(capsys):
    from hqrs.dataset_builder.sources import SOURCE_KINDS
    from hqrs.scripts import cli
    from hqrs.scripts.build import SOURCE_KIND_NAMES

    assert SOURCE_KIND_NAMES == tuple(SOURCE_KINDS)

    with pytest.raises(SystemExit):
        cli.main(["build", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for kind in SOURCE_KINDS:
        assert kind in text
    assert "kinds: folder images karpathy" in text


# ------------------------------------------------------------------ property test: type mutations


HOSTILE_VALUES = [
    None,
    True,
    0,
    -1,
    1.5,
    float("nan"),
    "",
    "x",
    "\ud800",
    "../../x.png",
    "/etc/passwd",
    [],
    [1, 2],
    ["a"],
    {},
    {"a": 1},
    [[1]],
]


def _paths(value, prefix=()):
    """Every (path, value) of a JSON document, containers included."""
    yield prefix, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


def _mutate(doc, path, new):
    if not path:
        return new
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = new
    return doc


def _valid_files(root: Path) -> dict[str, tuple[str, object, list[str]]]:
    """kind -> (spec, document, the entries' file-name key) of a valid file of each JSON-based kind."""
    names = [f"f{i}.png" for i in range(3)]
    for i, n in enumerate(names):
        _png(root / "images" / n, COLOURS[i])
    karpathy = {
        "images": [{"filename": n, "split": "train", "sentences": [{"raw": f"caption {n}"}]} for n in names]
    }
    coco = {
        "images": [{"id": i + 1, "file_name": n, "width": 48, "height": 40} for i, n in enumerate(names)],
        "annotations": [
            {"id": i, "image_id": i + 1, "category_id": 1, "bbox": [2, 2, 10, 10]} for i in range(3)
        ],
        "categories": [{"id": 1, "name": "ship"}],
    }
    return {
        # (verify / phash off: the adapters' parsing is under test, not the image checks; faster)
        "karpathy": (f"karpathy:{root / 'k.json'}?verify=false&phash=false", karpathy, "filename"),
        "coco": (
            f"coco:{root / 'c.json'}?images={root / 'images'}&verify=false&phash=false",
            coco,
            "file_name",
        ),
    }


def _check_accounting(recs, report, doc, name_key):
    """Records in = records out + skips: every entry still in the mutated file gave a record or a skip
    naming it; a file whose entry list is gone or not a list is a skip of the whole file."""
    for item in report.items:
        assert item["file"] and item["reason"]
    if any(i["kind"] == "file" for i in report.items):
        return
    entries = doc.get("images") if isinstance(doc, dict) else None
    assert isinstance(entries, list), f"no entry list, and no file skip:\n{_reasons(report)}"
    for i, entry in enumerate(entries):
        name = entry.get(name_key) if isinstance(entry, dict) else None
        has_record = isinstance(name, str) and any(r.meta.get("file") == name for r in recs)
        has_skip = any(item["file"].endswith(f"#images[{i}]") for item in report.items)
        assert has_record or has_skip, f"entry {i} ({entry!r:.80}) vanished:\n{_reasons(report)}"
    assert len(recs) <= len(entries)


def _run_adapter(spec):
    try:
        source = load_source(spec)
    except ValueError:
        return None  # a clear hqrs error about the spec / options
    report = SkipReport()
    try:
        recs = list(source.records(report))
    except ValueError as exc:  # a clear error is allowed; it must name the problem
        assert str(exc)
        return None
    for r in recs:  # what was produced is storable
        json.dumps(r.to_dict(), ensure_ascii=False, allow_nan=True).encode("utf-8")
    return recs, report


def test_every_single_type_mutation_of_every_json_adapter(tmp_path):
    """Exhaustive: every value of a valid Karpathy / COCO file replaced by every hostile value, one at a
    time (before: ``"annotations": null`` or a list-valued id ended in a TypeError)."""
    valid = _valid_files(tmp_path)
    runs = 0
    for spec, doc, name_key in valid.values():
        file = Path(spec.split(":", 1)[1].split("?", 1)[0])
        for path, _ in list(_paths(doc)):
            for value in HOSTILE_VALUES:
                mutated = _mutate(copy.deepcopy(doc), path, copy.deepcopy(value))
                file.write_text(json.dumps(mutated))
                out = _run_adapter(spec)
                if out is not None:
                    _check_accounting(*out, mutated, name_key)
                runs += 1
    assert runs > 500


def test_fuzz_type_mutations_of_every_json_adapter(tmp_path):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    valid = _valid_files(tmp_path)
    paths = {kind: [p for p, _ in _paths(doc)] for kind, (_, doc, _) in valid.items()}

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(kind=st.sampled_from(sorted(valid)), data=st.data(), n=st.integers(min_value=2, max_value=4))
    def check(kind, data, n):
        spec, doc, name_key = valid[kind]
        doc = json.loads(json.dumps(doc))
        for _ in range(n):
            live = [p for p, _ in _paths(doc)]
            path = data.draw(st.sampled_from(live))
            doc = _mutate(doc, path, copy.deepcopy(data.draw(st.sampled_from(HOSTILE_VALUES))))
        file = Path(spec.split(":", 1)[1].split("?", 1)[0])
        file.write_text(json.dumps(doc))
        out = _run_adapter(spec)
        if out is not None:
            recs, report = out
            _check_accounting(recs, report, doc, name_key)

    assert all(paths.values())
    check()


def test_fuzz_text_mutations_of_csv_dota_and_voc(tmp_path):
    """Random hostile characters inserted into valid CSV / DOTA / VOC files: never an exception other
    than a clear ValueError, every skip has a file and a reason, and every CSV entry is accounted for."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    names = [f"f{i}.png" for i in range(3)]
    for i, n in enumerate(names):
        _png(tmp_path / "images" / n, COLOURS[i])
    (tmp_path / "labelTxt").mkdir()
    (tmp_path / "Annotations").mkdir()
    files = {
        "csv": (
            tmp_path / "c.csv",
            "filepath,caption\n" + "".join(f"images/{n},caption {n}\n" for n in names),
            f"openclip-csv:{tmp_path / 'c.csv'}",
        ),
        "dota": (
            tmp_path / "labelTxt" / "f0.txt",
            "imagesource:GoogleEarth\ngsd:0.5\n1 1 20 1 20 20 1 20 ship 0\n2 2 9 2 9 9 2 9 plane 1\n",
            f"dota:{tmp_path / 'labelTxt'}",
        ),
        "voc": (
            tmp_path / "Annotations" / "f1.xml",
            "<annotation><filename>f1.png</filename><size><width>48</width><height>40</height></size>"
            "<object><name>ship</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax>"
            "</bndbox></object></annotation>",
            f"voc:{tmp_path / 'Annotations'}?images={tmp_path / 'images'}",
        ),
    }
    alphabet = [
        '"',
        "\n",
        ",",
        "\t",
        "<",
        ">",
        "&",
        "/",
        "..",
        "\x00",
        "\r",
        "'",
        ";",
        "\ufeff",
        " ",
        "-1",
        "é",
    ]

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(kind=st.sampled_from(sorted(files)), data=st.data())
    def check(kind, data):
        path, text, spec = files[kind]
        edits = data.draw(
            st.lists(st.tuples(st.integers(0, len(text)), st.sampled_from(alphabet)), min_size=1, max_size=4)
        )
        for pos, piece in sorted(edits, reverse=True):
            text = text[:pos] + piece + text[pos:]
        path.write_text(text, encoding="utf-8")
        out = _run_adapter(spec)
        if out is None:
            return
        recs, report = out
        for item in report.items:
            assert item["file"] and item["reason"]
        if kind == "csv" and not any(i["kind"] == "file" for i in report.items):
            # every physical body line is a record's caption or named by a skip (no silent swallow)
            captions = [c for r in recs for c in r.references]
            lines = re.split(r"\r\n|\r|\n", text.removeprefix("\ufeff"))
            for lineno, line in enumerate(lines[1:], 2):
                if not line.strip() or "," not in line:
                    continue
                named = any(i["file"].endswith(f":{lineno}") for i in report.items)
                assert named or any(c in line or line in c for c in captions), (
                    lineno,
                    line,
                    _reasons(report),
                )

    check()


def test_planning_skips_a_result_with_invalid_unicode(tmp_path):
    """A result (e.g. a generated caption) with a lone surrogate is a skip, not a crash of the staging."""
    from hqrs.dataset_builder.planning import SplitSettings, make_plan
    from hqrs.dataset_builder.records import Caption, ImageRecord, MpGIResult

    results = []
    for i, text in enumerate(["fine caption", "bad \ud800 caption"]):
        image = _png(tmp_path / f"{i}.png", COLOURS[i])
        record = ImageRecord(
            image_id=file_content_id(image), image=str(image), source="t", width=48, height=40
        )
        results.append(MpGIResult(record=record, rule_text="", captions=[Caption(text, "short")]))
    report = SkipReport()
    plan = make_plan(results, SplitSettings(ratios=(1, 0, 0)), tmp_path / "staging", "fp", report)
    assert plan.stats["images"] == 1
    (item,) = report.items
    assert item["file"].endswith("1.png") and "lone surrogate" in item["reason"]


@pytest.mark.parametrize("mode", ["color", "index"])
def test_mask_palette_type_mutations_are_clear_errors(tmp_path, mode):
    """Every hostile palette value is a ValueError naming the class (before: raw TypeError for index
    palettes, and [-1, 0, 300] or 2**70 accepted as colours)."""
    import numpy as np

    (tmp_path / "m").mkdir()
    _png(tmp_path / "m" / "a.png")
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(tmp_path / "m" / "a_mask.png")
    for value in [*HOSTILE_VALUES, [-1, 0, 300], [1, 2, 3, 4], 2**70, [1.5, 2, 3]]:
        if (mode == "index" and _is_plain_int(value) and value >= 0) or (
            mode == "color" and value in ([1, 2, 3],)
        ):
            continue
        valid = {"ship": [0, 0, 63], "water": [0, 0, 0]} if mode == "color" else {"ship": 2, "water": 0}
        (tmp_path / "pal.json").write_text(json.dumps({**valid, "ship": value}))
        with pytest.raises(ValueError, match="'ship'"):
            list(
                load_source(
                    f"mask:{tmp_path / 'm'}?palette={tmp_path / 'pal.json'}&suffix=_mask.png&mode={mode}"
                ).records()
            )


def _is_plain_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
