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
    phase["name"] = "sources"
    a = export_dataset(root / "a", sources=[f"folder:{root / 'scenes'}"], mpgi_dir=str(root / "run"), **kw)
    phase["name"] = "run_dir"
    b = export_dataset(root / "b", run_dir=str(root / "run"), **kw)
    phase["name"] = None
    print(json.dumps({"opens": opens, "decodes": decodes, "images": [a["images"], b["images"]]}))
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
    assert counts["images"] == [6, 6]
    assert sorted(counts["opens"]["run_dir"].values()) == [1] * 6
    assert counts["decodes"]["run_dir"] == 2


def test_a_build_from_sources_reads_every_image_twice_analysis_and_plan(counts):
    """From sources, the source analysis (content id, truncation check, perceptual hash) reads each file
    once and the plan once more (MpGI sits between them, so the bytes are not carried across); decodes:
    one per image in the analysis, plus one per TIFF for its PNG cell."""
    assert sorted(counts["opens"]["sources"].values()) == [2] * 6
    assert counts["decodes"]["sources"] == 6 + 2
