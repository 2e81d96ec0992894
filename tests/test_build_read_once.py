"""Each image file is read once and decoded at most once by a build (issue #16.2).

Counted with real mechanisms in a fresh interpreter (audit hooks cannot be removed): ``sys.addaudithook``
sees every ``open`` of an image path, and a counter around ``PIL.ImageFile.ImageFile.load`` sees every
decode (a ``load`` that still has tiles to decode)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path

    import numpy as np
    from PIL import Image, ImageFile

    root = Path(sys.argv[1])
    scenes = root / "scenes" / "farm"
    scenes.mkdir(parents=True)
    rng = np.random.default_rng(0)
    watched = set()
    for i, ext in enumerate(["png", "jpg", "tif", "png", "jpg", "tif"]):
        small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        path = scenes / f"s{i}.{ext}"
        Image.fromarray(small).resize((64, 64), Image.Resampling.BICUBIC).save(path)
        watched.add(str(path.resolve()))
    phase = {"name": None}
    opens, decodes = {}, {}

    def hook(event, args):
        if event == "open" and phase["name"] and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.path.realpath(os.fsdecode(args[0]))
            if path in watched:
                per = opens.setdefault(phase["name"], dict.fromkeys(watched, 0))
                per[path] += 1

    sys.addaudithook(hook)
    load = ImageFile.ImageFile.load

    def counting_load(self):
        if phase["name"] and self.tile:
            decodes[phase["name"]] = decodes.get(phase["name"], 0) + 1
        return load(self)

    ImageFile.ImageFile.load = counting_load
    from hqrs.dataset_builder.export import export_dataset

    kw = dict(configs=("default", "full", "pairs"), split_ratios="1,0,0", near_dup_distance=-1, progress=False)
    csv = root / "caps.csv"
    lines = [f"scenes/farm/{Path(p).name},a farm {i}" for i, p in enumerate(sorted(watched))]
    csv.write_text("filepath,caption\\n" + "\\n".join(lines) + "\\n")
    phase["name"] = "sources"
    a = export_dataset(root / "a", sources=[f"folder:{root / 'scenes'}"], mpgi_dir=str(root / "run"), **kw)
    phase["name"] = "run_dir"
    b = export_dataset(root / "b", run_dir=str(root / "run"), **kw)
    phase["name"] = "captions_csv"
    c = export_dataset(root / "c", captions_csv=str(csv), **kw)
    phase["name"] = "captions_csv_np2"
    d = export_dataset(root / "d", captions_csv=str(csv), num_proc=2, **kw)
    phase["name"] = "rerun"
    export_dataset(root / "c", captions_csv=str(csv), **kw)
    phase["name"] = "sources_rerun"
    export_dataset(root / "a", sources=[f"folder:{root / 'scenes'}"], mpgi_dir=str(root / "run"), **kw)
    phase["name"] = None
    leftovers = [sorted(p.name for p in (root / x / ".staging").iterdir() if p.is_file()) for x in "abcd"]
    import pyarrow.parquet as pq

    def cells(out):  # every config's image cells, by config and content id
        got = {}
        for shard in sorted((out / "data").rglob("*.parquet")):
            for row in pq.read_table(shard, columns=["image_id", "image"]).to_pylist():
                cell = row["image"]
                got[shard.parent.name + ":" + row["image_id"]] = [cell["path"], cell["bytes"].hex()]
        return got

    built = [cells(root / x) for x in "abcd"]
    print(json.dumps({
        "opens": opens,
        "decodes": decodes,
        "images": [x["images"] for x in (a, b, c, d)],
        "cells": len(built[0]),
        "same_cells": all(x == built[0] for x in built),
        "staging_files": leftovers,
    }))
    """
)


@pytest.fixture(scope="module")
def counts(tmp_path_factory):
    root = tmp_path_factory.mktemp("read_once")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(root)], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_build_from_a_run_reads_every_image_once_and_decodes_only_what_it_reencodes(counts):
    """Three configs are written, yet every image file is opened once (verify + hash + cell from one
    read); only the two TIFFs are decoded (for their PNG cell); the perceptual hash comes from the run."""
    assert counts["images"] == [6, 6, 6, 6]
    assert sorted(counts["opens"]["run_dir"].values()) == [1] * 6
    assert counts["decodes"]["run_dir"] == 2


@pytest.mark.parametrize("phase", ["sources", "captions_csv"])
def test_a_build_from_sources_or_a_caption_csv_reads_and_decodes_every_image_once(counts, phase):
    """From sources (MpGI between the analysis and the plan) or a caption CSV: the source analysis reads
    each file once (content id, truncation check, perceptual hash) and hands the image's cell to the
    staging, so the plan does not open it again; a TIFF's PNG cell is encoded from the pixels decoded
    for the hash: one decode per image (all six need one, for the hash), whatever the number of configs."""
    assert sorted(counts["opens"][phase].values()) == [1] * 6
    assert counts["decodes"][phase] == 6


def test_with_a_pool_the_workers_analysis_is_the_only_read(counts):
    """With ``num_proc=2`` the analysis runs in the pool's workers (other processes, not counted here):
    the build's own process then neither opens nor decodes any image."""
    assert not any(counts["opens"].get("captions_csv_np2", {}).values())
    assert counts["decodes"].get("captions_csv_np2", 0) == 0


def test_the_handed_over_cells_are_the_cells_a_run_dir_build_makes(counts):
    """The cells the analysis staged (sources, caption CSV, with and without a pool) are byte for byte
    the cells the plan makes from the files of a run directory."""
    assert counts["cells"] == 6 * 3
    assert counts["same_cells"] is True


def test_a_rerun_reuses_the_staged_plan_and_reads_no_image(counts):
    assert not any(counts["opens"].get("rerun", {}).values())
    assert counts["decodes"].get("rerun", 0) == 0


def test_a_sources_rerun_reads_each_image_once_for_mpgi_and_stages_nothing(counts):
    """A rerun from sources analyses the images again (MpGI takes the records) before the staged plan is
    found reusable: one read each, and no cell is staged only to be thrown away; every build leaves
    just its plan's ``images.arrow`` (no temporary cell file)."""
    assert sorted(counts["opens"]["sources_rerun"].values()) == [1] * 6
    assert counts["staging_files"] == [["images.arrow", "plan.json"]] * 4


def test_handed_over_images_still_pass_the_path_checks(tmp_path):
    """A cell the analysis handed over is embedded only after the plan's path checks: with
    ``allowed_roots`` elsewhere every image of a caption CSV is refused, naming the root to add."""
    import numpy as np
    from PIL import Image

    from hqrs.dataset_builder.export import export_dataset

    (tmp_path / "img").mkdir()
    (tmp_path / "elsewhere").mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "img" / f"{i}.tif")
    csv = tmp_path / "caps.csv"
    csv.write_text("filepath,caption\nimg/0.tif,a field\nimg/1.tif,a road\n")
    kw = dict(captions_csv=str(csv), configs=("default",), split_ratios="1,0,0", progress=False)
    with pytest.raises(ValueError, match="read no usable image"):
        export_dataset(tmp_path / "out", allowed_roots=[str(tmp_path / "elsewhere")], **kw)
    report = json.loads((tmp_path / "out" / "build_report.json").read_text())
    assert [i["reason"] for i in report["skipped_items"]] == [
        f"image refused at build time: {str(tmp_path / 'img' / f'{i}.tif')!r} resolves to "
        f"{str((tmp_path / 'img' / f'{i}.tif').resolve())!r}, outside the allowed roots "
        f"{tmp_path / 'elsewhere'} (add its folder with --allow-root)"
        for i in range(2)
    ]
    assert export_dataset(tmp_path / "ok", allowed_roots=[str(tmp_path / "img")], **kw)["images"] == 2
