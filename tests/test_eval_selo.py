"""SeLo (#17.3): the AIR-SLT indicators against the reference formulas on synthetic maps with answers
worked out by hand, the multi-scale tiling, AIR-SLT folder checks, and `hqrs eval selo` end to end."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import tiny_models

from hqrs.evaluation.selo import (
    attention_peaks,
    load_air_slt,
    polygon_mask,
    probability_map,
    ras,
    rda,
    region_circles,
    rmi,
    rsu,
    selo_metrics,
    tile_boxes,
)
from hqrs.scripts import cli

SQUARE = [[200, 200], [400, 200], [400, 400], [200, 400]]  # centre (300, 300), r = int(1.5 * 100√2) = 212


def test_rsu_by_hand():
    prob = np.full((100, 100), 0.25)
    prob[20:40, 20:40] = 1.0
    mask = polygon_mask(prob.shape, [[[20, 20], [39, 20], [39, 39], [20, 39]]])
    assert mask.sum() == 400  # edges included, as OpenCV's fillPoly
    # inside 400, outside 0.25 * 9600 = 2400; (400 / 2400) * (9600 / 400) = 4
    assert rsu(prob, mask) == pytest.approx(1 - math.exp(-0.707 * 4), abs=1e-9)
    prob[:] = 0
    prob[20:40, 20:40] = 1.0
    assert rsu(prob, mask) == pytest.approx(1.0)  # nothing outside: the ratio explodes
    assert rsu(np.zeros((100, 100)), mask) == 0.0
    with pytest.raises(ValueError, match="cover no pixel"):
        rsu(prob, np.zeros_like(prob))


def test_region_circle_ras_rda_rmi_by_hand():
    assert region_circles([SQUARE]) == [(300, 300, 212)]
    prob = np.zeros((600, 600))
    # one peak 100 px from the centre: g = 100 / 212
    g = 100 / 212
    assert ras([SQUARE], prob, peaks=[(300, 400)]) == pytest.approx((math.exp(3 * g) - 1) / (math.exp(3) - 1))
    assert ras([SQUARE], prob, peaks=[(300, 300)]) == 0.0
    assert ras([SQUARE], prob, peaks=[]) == 1.0  # no attention at all
    assert ras([SQUARE], prob, peaks=[(590, 590)]) == 1.0  # outside the circle: offset = r
    far = [[900, 900], [1000, 900], [1000, 1000], [900, 1000]]  # a second region no peak reaches
    g2 = (100 / 212 + 1) / 2
    assert ras([SQUARE, far], prob, peaks=[(300, 400)]) == pytest.approx(
        (math.exp(3 * g2) - 1) / (math.exp(3) - 1)
    )
    assert rda([SQUARE], prob, peaks=[]) == 0.0
    assert rda([SQUARE], prob, peaks=[(300, 300)]) == 1.0
    # two peaks 50 px either side of the centre: 0.5 * (1 - 50 / 212) + exp(-0.5 * (2 + 2))
    assert rda([SQUARE], prob, peaks=[(300, 250), (300, 350)]) == pytest.approx(
        0.5 * (1 - 50 / 212) + math.exp(-2)
    )
    assert rda([SQUARE, far], prob, peaks=[(300, 300)]) == 0.5  # mean over regions (1 and 0)
    assert rmi(0.8, 0.2, 0.6) == pytest.approx(0.4 * 0.8 + 0.35 * 0.8 + 0.25 * 0.6)


def _blob(prob, cx, cy, half, value):
    prob[cy - half : cy + half, cx - half : cx + half] = value


def test_attention_peaks_strongest_first_and_weak_ones_dropped():
    prob = np.zeros((1400, 1400))
    _blob(prob, 300, 300, 60, 0.8)
    _blob(prob, 1000, 1050, 60, 1.0)
    _blob(prob, 1100, 200, 60, 0.4)  # below 0.5: not an attention centre
    peaks = attention_peaks(prob)
    assert len(peaks) == 2
    (x1, y1), (x2, y2) = peaks
    assert abs(x1 - 1000) <= 4 and abs(y1 - 1050) <= 4  # the 1.0 blob first
    assert abs(x2 - 300) <= 4 and abs(y2 - 300) <= 4
    # blobs closer than half the 1000 px window: only the stronger is a peak
    near = np.zeros((800, 800))
    _blob(near, 200, 200, 40, 0.9)
    _blob(near, 500, 500, 40, 1.0)
    assert len(attention_peaks(near)) == 1


def test_selo_metrics_on_a_map_that_hits_and_one_that_misses():
    hit = np.zeros((600, 600))
    _blob(hit, 300, 300, 100, 1.0)  # exactly the annotated square
    m = selo_metrics(hit, [SQUARE])
    # the 200x200 blob fills the 201x201 mask (edges included): inside 40000, outside 0 -> Rsu = 1
    assert m["Rsu"] == pytest.approx(1.0)
    assert m["Rda"] == 1.0 and m["Ras"] < 0.01
    assert m["Rmi"] == pytest.approx(0.4 + 0.35 * (1 - m["Ras"]) + 0.25)
    miss = np.zeros((600, 600))
    _blob(miss, 520, 80, 60, 1.0)  # attention in a corner, far from the region
    m = selo_metrics(miss, [SQUARE])
    assert m["Rsu"] == 0.0 and m["Ras"] == 1.0 and m["Rda"] == 0.0 and m["Rmi"] == 0.0


def test_tiles_and_probability_map():
    boxes = tile_boxes(512, 512)
    # 256 px at stride 256: offsets {0, 256}² (4 tiles); shifted by 128: offsets {128, 384 -> anchored
    # at 256}² (4 tiles, one already there) -> 7; 512 px: the whole image once; 768 px: left out
    assert len(boxes) == 8 and len(set(boxes)) == 8
    assert (0, 256, 128, 384) not in boxes  # the grids are not mixed
    assert (0, 512, 0, 512) in boxes and (128, 384, 128, 384) in boxes
    assert all(r1 - r0 == c1 - c0 and r1 <= 512 and c1 <= 512 for r0, r1, c0, c1 in boxes)
    assert tile_boxes(200, 900) == []  # smaller than every scale
    # two tiles: left half 0.2, right half 0.6 -> min-max scaled 0 / 255, median keeps the halves
    prob = probability_map([0.2, 0.6], [(0, 300, 0, 300), (0, 300, 300, 600)], (300, 600))
    assert prob.shape == (300, 600) and prob[:, :50].max() == 0 and prob[:, -50:].min() == 1.0
    flat = probability_map([0.5, 0.5], [(0, 300, 0, 300), (0, 300, 300, 600)], (300, 600))
    assert flat.max() == 0.0  # no contrast: no attention
    with pytest.raises(ValueError, match="smaller than the smallest scale"):
        probability_map([0.5], [(0, 100, 0, 100)], (300, 600))


def _air_slt(root, rs_real):
    """An AIR-SLT-layout folder from a real DOTA image and its harbour polygons."""
    (root / "imgs").mkdir(parents=True)
    (root / "annotations").mkdir()
    src = rs_real / "detection_dota"
    shutil.copy(src / "images" / "P0706.png", root / "imgs" / "0.png")
    harbours = []
    for line in (src / "labelTxt" / "P0706.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 9 and parts[8] == "harbor":
            xy = [float(v) for v in parts[:8]]
            harbours.append([[xy[i], xy[i + 1]] for i in range(0, 8, 2)])
    anno = [
        {"caption": "ships are moored along the harbor.", "jpg_name": "0.png", "points": harbours},
        {"caption": "a harbor on the coast.", "jpg_name": "0.png", "points": harbours[:1]},
    ]
    (root / "annotations" / "anno.json").write_text(json.dumps(anno))
    return root


def test_eval_selo_cli_writes_hqrs_eval_results(rs_real, tmp_path, capsys):
    data = _air_slt(tmp_path / "AIR-SLT", rs_real)
    model = tiny_models.tiny_clip_dir(tmp_path / "clip")
    out = tmp_path / "selo.json"
    argv = ["-q", "eval", "selo", "--model", str(model), "--dataset", str(tmp_path), "--num-workers", "0"]
    assert cli.main([*argv, "--out", str(out)]) == 0  # the parent of AIR-SLT/ works too
    res = json.loads(out.read_text())
    assert res["schema"] == "hqrs-eval/1" and res["task"]["type"] == "semantic-localization"
    m = {x["type"]: x["value"] for x in res["metrics"]}
    assert set(m) == {"Rsu", "Ras", "Rda", "Rmi"} and all(0 <= v <= 1 for v in m.values())
    per = res["details"]["per_sample"]
    assert len(per) == 2 and res["dataset"]["num_images"] == 1 and res["dataset"]["num_texts"] == 2
    assert m["Rmi"] == pytest.approx(np.mean([p["Rmi"] for p in per]))
    assert m["Rmi"] == pytest.approx(0.4 * m["Rsu"] + 0.35 * (1 - m["Ras"]) + 0.25 * m["Rda"])
    assert len(res["model"]["weights_sha256"]) == 64
    from hqrs.hub_cards.cards import load_eval_results

    assert {r.metric_type for r in load_eval_results([out], model)} == {"Rsu", "Ras", "Rda", "Rmi"}
    assert data.exists()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: (r / "annotations" / "anno.json").unlink(), "is not an AIR-SLT folder"),
        (lambda r: (r / "annotations" / "anno.json").write_text("{oops"), "anno.json' is not valid JSON"),
        (lambda r: (r / "annotations" / "anno.json").write_text("{}"), "non-empty JSON list"),
        (lambda r: _edit(r, 1, caption=" "), "entry 1: 'caption' must be a non-empty string"),
        (lambda r: _edit(r, 0, jpg_name="../0.png"), "entry 0: 'jpg_name' must be a file name"),
        (
            lambda r: _edit(r, 1, points=[[[1, 2], [3, 4]]]),
            r"entry 1 \(0.png\): points\[0\] must be a polygon",
        ),
        (lambda r: _edit(r, 0, points=[[[1, 2], [3, "x"], [5, 6]]]), r"points\[0\] must be a polygon"),
        (lambda r: (r / "imgs" / "0.png").unlink(), "1 image\\(s\\) named in .* are missing"),
    ],
)
def test_malformed_air_slt_folders(rs_real, tmp_path, mutate, message):
    root = _air_slt(tmp_path / "AIR-SLT", rs_real)
    mutate(root)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_air_slt(root)


def test_malformed_folder_is_one_cli_error_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = ["-q", "eval", "selo", "--model", str(tmp_path / "nomodel"), "--dataset", str(tmp_path / "empty")]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hqrs: error:") and "annotations/anno.json" in err[0]


def _edit(root, index, **fields):
    path = root / "annotations" / "anno.json"
    anno = json.loads(path.read_text())
    anno[index].update(fields)
    path.write_text(json.dumps(anno))
