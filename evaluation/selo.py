"""Semantic localization (SeLo) on AIR-SLT: Rsu, Ras, Rda and Rmi (Yuan et al., "Learning to Evaluate
Performance of Multi-modal Semantic Localization", the protocol of the HQRS paper's SeLo table).

A SeLo sample is a large remote-sensing image, a caption and the polygons of the regions the caption
describes. The model turns the caption into a probability map over the image; four indicators score it:

* **Rsu** ↑ (salient-area proportion): with ``s_in`` / ``s_out`` the probability mass inside / outside the
  annotated mask and ``A`` the mask area of an ``H×W`` map,
  ``Rsu = 1 - exp(-β · s_in / (s_out + ε) · (H·W - A) / A)``, β = 0.707, ε = 1e-7.
* **Ras** ↓ (attention shift): peaks of the map (5 passes of a 50×50 box filter on the 8-bit map, local
  maxima over a 1000×1000 window, 8-connected plateaus reduced to their centroid, kept where the map is
  ≥ 0.5, strongest first) are compared with each region's centre ``c`` (mean of its vertices, truncated to
  integers) and radius ``r = int(1.5 · mean |vertex - c|)``. Per region ``d`` = mean distance of the peaks
  within ``r`` (``r`` when none; with no peak at all only the first region counts, with ``d = r``);
  ``g = mean(d / r)``, ``Ras = (exp(3g) - 1) / (exp(3) - 1)``.
* **Rda** ↑ (attention dispersion): per region, with ``n`` peaks within ``r``: ``n`` when ``n ≤ 1``, else
  ``0.5 · (1 - m / r) + exp(-0.5 · (n + 2))`` where ``m`` is the peaks' mean distance to their mean; Rda is
  the mean over regions.
* **Rmi** ↑ (combined): ``0.4 · Rsu + 0.35 · (1 - Ras) + 0.25 · Rda``.

The dataset scores are the means over samples. The probability map of a CLIP model follows the
authors' evaluation (``SeLo_test_and_save.py`` of HQRS-210K-and-HQRS-CLIP, which runs RS5M's
``semantic_localization_evaluation``): tiles of 256, 512 and 768 px at strides of the tile size and of
half of it (shifted by half a tile; edge tiles anchored at the image border; a tile counted once) are
resized to 256×256 (bicubic) and embedded; each pixel gets the mean cosine similarity of the caption
with the tiles covering it; the map is min-max scaled to 8 bits and median-filtered (251 px). Two
deliberate differences: tiles and the probability map are kept in memory instead of passing through
JPEG files (no compression noise), and scales larger than the image are left out (the reference
would cut negative offsets); a sample whose image is smaller than the smallest scale is an error.

The metric functions follow the reference formulas exactly (see tests/test_eval_selo.py, which checks
them on synthetic maps with answers computed by hand).

AIR-SLT layout (the public release; ``ROOT`` or ``ROOT/AIR-SLT``)::

    ROOT/annotations/anno.json   [{"caption": str, "jpg_name": "0.jpg", "points": [[[x, y], ...], ...]}, ...]
    ROOT/imgs/0.jpg ...

Example:
    >>> import numpy as np
    >>> prob = np.zeros((100, 100)); prob[20:40, 20:40] = 1.0
    >>> mask = polygon_mask(prob.shape, [[[20, 20], [39, 20], [39, 39], [20, 39]]])
    >>> round(rsu(prob, mask), 4)  # all mass inside the mask
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from hqrs.dataset_builder.io import load_json_utf8

Polygon = Sequence[Sequence[float]]  # [[x, y], ...] in pixels (x = column, y = row)


@dataclass(frozen=True)
class SeLoParams:
    """The protocol's constants (defaults: the reference implementation's)."""

    rsu_beta: float = 0.707
    rsu_eps: float = 1e-7
    ras_expand_factor: float = 1.5
    ras_filter_times: int = 5
    ras_box: int = 50
    ras_peak_window: int = 1000
    ras_min_prob: float = 0.5
    ras_scale_beta: float = 3.0
    rda_eta: float = 0.5
    rmi_weights: tuple[float, float, float] = (0.4, 0.35, 0.25)  # Rsu, 1 - Ras, Rda
    scales: tuple[int, ...] = (256, 512, 768)
    tile_size: int = 256
    median_ksize: int = 251


DEFAULT = SeLoParams()


def _cv2():
    try:
        import cv2
    except ImportError as exc:  # declared dependency; a clear message if the install lacks it
        raise ImportError(
            "hqrs eval selo needs OpenCV (opencv-python-headless, a dependency of hqrs): "
            f"pip install opencv-python-headless ({exc})"
        ) from None
    return cv2


# ------------------------------------------------------------------------------------------ metrics


def polygon_mask(shape: tuple[int, int], regions: Sequence[Polygon]) -> np.ndarray:
    """``[H, W]`` float mask, 1 inside any of the polygons (vertices truncated to integer pixels, edges
    included, as OpenCV's ``fillPoly``)."""
    cv2 = _cv2()
    mask = np.zeros(shape, dtype=np.float64)
    cv2.fillPoly(mask, [np.asarray(p, dtype=np.float64).astype(np.int32) for p in regions], 1)
    return mask


def rsu(prob: np.ndarray, mask: np.ndarray, params: SeLoParams = DEFAULT) -> float:
    """Salient-area proportion (↑, 0..1): see the module docstring.

    Raises:
        ValueError: ``mask`` is empty (no annotated pixel) or shapes differ.
    """
    if prob.shape != mask.shape:
        raise ValueError(f"probability map {prob.shape} and mask {mask.shape} differ in shape")
    area = float(mask.sum())
    if area <= 0:
        raise ValueError("the annotated regions cover no pixel of the image")
    inside = float((prob * mask).sum())
    outside = float(prob.sum()) - inside
    height, width = mask.shape
    ratio = inside / (outside + params.rsu_eps) * (height * width - area) / area
    return 1.0 - math.exp(-params.rsu_beta * ratio)


def region_circles(regions: Sequence[Polygon], params: SeLoParams = DEFAULT) -> list[tuple[int, int, int]]:
    """``(cx, cy, r)`` per region: the vertices' mean (truncated) and ``int(expand · mean distance)``."""
    out = []
    for poly in regions:
        pts = np.asarray(poly, dtype=np.float64)
        cx, cy = int(pts[:, 0].sum() / len(pts)), int(pts[:, 1].sum() / len(pts))
        radius = np.mean(np.linalg.norm(pts - np.array([cx, cy], dtype=np.float64), axis=1))
        out.append((cx, cy, int(radius * params.ras_expand_factor)))
    return out


def attention_peaks(prob: np.ndarray, params: SeLoParams = DEFAULT) -> list[tuple[int, int]]:
    """``[(x, y), ...]`` attention centres of a ``[H, W]`` map in 0..1, strongest first (see Ras)."""
    from scipy import ndimage

    cv2 = _cv2()
    gray = np.asarray(prob * 255.0, dtype=np.uint8)
    for _ in range(params.ras_filter_times):
        gray = cv2.boxFilter(gray, ddepth=-1, ksize=(params.ras_box, params.ras_box))
    local_max = ndimage.maximum_filter(gray, size=params.ras_peak_window)
    peaks = (gray == local_max) & (gray > 0)
    labels, n = ndimage.label(peaks, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return []
    centroids = ndimage.center_of_mass(peaks, labels, range(1, n + 1))
    centres = [(int(col), int(row)) for row, col in centroids]
    centres.sort(key=lambda c: prob[c[1], c[0]], reverse=True)  # stable: ties keep label order
    return [c for c in centres if prob[c[1], c[0]] >= params.ras_min_prob]


def ras(
    regions: Sequence[Polygon],
    prob: np.ndarray,
    params: SeLoParams = DEFAULT,
    peaks: list[tuple[int, int]] | None = None,
) -> float:
    """Attention shift (↓, 0..1): see the module docstring."""
    circles = region_circles(regions, params)
    peaks = attention_peaks(prob, params) if peaks is None else peaks
    if not peaks:
        offsets = [circles[0][2]]
    else:
        offsets = []
        for x, y, r in circles:
            dists = [math.hypot(x - px, y - py) for px, py in peaks]
            near = [d for d in dists if d <= r]
            offsets.append(float(np.mean(near)) if near else r)
    g = float(np.mean([off / c[2] for off, c in zip(offsets, circles)]))
    beta = params.ras_scale_beta
    return (math.exp(beta * g) - 1) / (math.exp(beta) - 1)


def rda(
    regions: Sequence[Polygon],
    prob: np.ndarray,
    params: SeLoParams = DEFAULT,
    peaks: list[tuple[int, int]] | None = None,
) -> float:
    """Attention dispersion (↑): see the module docstring."""
    peaks = attention_peaks(prob, params) if peaks is None else peaks
    values = []
    for x, y, r in region_circles(regions, params):
        near = [p for p in peaks if math.hypot(x - p[0], y - p[1]) <= r]
        if len(near) <= 1:
            values.append(float(len(near)))
            continue
        centre = np.mean(np.asarray(near, dtype=np.float64), axis=0)
        spread = float(np.mean(np.linalg.norm(np.asarray(near, dtype=np.float64) - centre, axis=1))) / r
        values.append(0.5 * (1 - spread) + math.exp(-params.rda_eta * (len(near) + 2)))
    return float(np.mean(values))


def rmi(rsu_value: float, ras_value: float, rda_value: float, params: SeLoParams = DEFAULT) -> float:
    """Combined indicator (↑): ``w_su · Rsu + w_as · (1 - Ras) + w_da · Rda``."""
    w_su, w_as, w_da = params.rmi_weights
    return w_su * rsu_value + w_as * (1 - ras_value) + w_da * rda_value


def selo_metrics(
    prob: np.ndarray, regions: Sequence[Polygon], params: SeLoParams = DEFAULT
) -> dict[str, float]:
    """``{"Rsu", "Ras", "Rda", "Rmi"}`` of one ``[H, W]`` probability map (values 0..1) and its regions."""
    prob = np.asarray(prob, dtype=np.float64)
    if prob.ndim != 2:
        raise ValueError(f"probability map must be [H, W], got shape {prob.shape}")
    mask = polygon_mask(prob.shape, regions)
    peaks = attention_peaks(prob, params)
    su = rsu(prob, mask, params)
    sh = ras(regions, prob, params, peaks)
    da = rda(regions, prob, params, peaks)
    return {"Rsu": su, "Ras": sh, "Rda": da, "Rmi": rmi(su, sh, da, params)}


# -------------------------------------------------------------------------------------- dataset


@dataclass
class SeLoSample:
    image: Path
    caption: str
    regions: list[list[list[float]]]


@dataclass
class SeLoDataset:
    root: Path
    samples: list[SeLoSample] = field(default_factory=list)

    @property
    def num_images(self) -> int:
        return len({s.image for s in self.samples})


def load_air_slt(root: str | Path) -> SeLoDataset:
    """Read and check an AIR-SLT folder (``ROOT`` or ``ROOT/AIR-SLT``; layout in the module docstring).

    Raises:
        FileNotFoundError: no ``annotations/anno.json`` or an image it names is missing.
        ValueError: a malformed annotation; the message names the entry index and the field.
    """
    root = Path(root)
    if not (root / "annotations" / "anno.json").is_file() and (root / "AIR-SLT").is_dir():
        root = root / "AIR-SLT"
    anno = root / "annotations" / "anno.json"
    if not anno.is_file():
        raise FileNotFoundError(
            f"{str(root)!r} is not an AIR-SLT folder: {str(anno)!r} is missing (expected "
            "annotations/anno.json and imgs/ as in the public AIR-SLT release)"
        )
    data = load_json_utf8(anno, "AIR-SLT annotation")
    if not isinstance(data, list) or not data:
        raise ValueError(f"{str(anno)!r} must hold a non-empty JSON list of samples")
    out = SeLoDataset(root)
    missing: list[str] = []
    for i, item in enumerate(data):
        where = f"{anno}: entry {i}"
        if not isinstance(item, dict):
            raise ValueError(f"{where} is {type(item).__name__}, expected an object")
        caption, name, points = item.get("caption"), item.get("jpg_name"), item.get("points")
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"{where}: 'caption' must be a non-empty string, got {caption!r}")
        if not isinstance(name, str) or not name or Path(name).name != name:
            raise ValueError(f"{where}: 'jpg_name' must be a file name inside imgs/, got {name!r}")
        if not isinstance(points, list) or not points:
            raise ValueError(f"{where} ({name}): 'points' must be a non-empty list of polygons")
        for j, poly in enumerate(points):
            ok = isinstance(poly, list) and len(poly) >= 3
            ok = ok and all(
                isinstance(p, list)
                and len(p) == 2
                and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in p
                )
                for p in poly
            )
            if not ok:
                raise ValueError(
                    f"{where} ({name}): points[{j}] must be a polygon of at least 3 [x, y] number pairs"
                )
        image = root / "imgs" / name
        if not image.is_file():
            missing.append(name)
        out.samples.append(SeLoSample(image, caption.strip(), points))
    if missing:
        raise FileNotFoundError(
            f"{len(set(missing))} image(s) named in {str(anno)!r} are missing under "
            f"{str(root / 'imgs')!r}, e.g. {sorted(set(missing))[:5]}"
        )
    return out


# --------------------------------------------------------------------------------- probability map


def tile_boxes(height: int, width: int, params: SeLoParams = DEFAULT) -> list[tuple[int, int, int, int]]:
    """Unique ``(r0, r1, c0, c1)`` tiles of the protocol for an ``H×W`` image (scales that fit)."""
    boxes: dict[tuple[int, int, int, int], None] = {}
    for step in params.scales:
        if step > height or step > width:
            continue
        for gap in (step, step // 2):
            for c in range(step - gap, width, step):
                c0, c1 = (c, c + step) if c + step < width else (width - step, width)
                for r in range(step - gap, height, step):
                    r0, r1 = (r, r + step) if r + step < height else (height - step, height)
                    boxes[(r0, r1, c0, c1)] = None
    return list(boxes)


def probability_map(
    similarities: Sequence[float],
    boxes: Sequence[tuple[int, int, int, int]],
    shape: tuple[int, int],
    params: SeLoParams = DEFAULT,
) -> np.ndarray:
    """``[H, W]`` map in 0..1: per pixel the mean similarity of the tiles covering it, min-max scaled to
    8 bits and median-filtered (``params.median_ksize``), as the reference writes its probability map."""
    cv2 = _cv2()
    total = np.zeros(shape, dtype=np.float64)
    count = np.zeros(shape, dtype=np.float64)
    for s, (r0, r1, c0, c1) in zip(similarities, boxes):
        total[r0:r1, c0:c1] += float(s)
        count[r0:r1, c0:c1] += 1
    if (count == 0).any():
        raise ValueError(
            f"image of {shape[1]}×{shape[0]} px is smaller than the smallest scale {min(params.scales)}"
        )
    heat = total / count
    heat -= heat.min()
    peak = heat.max()
    gray = np.uint8(255 * (heat / peak)) if peak > 0 else np.zeros(shape, dtype=np.uint8)
    gray = cv2.medianBlur(gray, params.median_ksize)
    return gray / 255.0


def model_probability_map(encoder, image_path: Path, caption_embeddings, params: SeLoParams = DEFAULT):
    """``{caption index: [H, W] map}`` for one image and the (normalised) caption embeddings."""
    cv2 = _cv2()
    bgr = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read image {str(image_path)!r} (not an image OpenCV can decode)")
    height, width = bgr.shape[:2]
    boxes = tile_boxes(height, width, params)
    if not boxes:
        raise ValueError(
            f"{str(image_path)!r} is {width}×{height} px, smaller than the smallest SeLo scale "
            f"{min(params.scales)} px"
        )
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    size = (params.tile_size, params.tile_size)
    tiles = [
        Image.fromarray(cv2.resize(rgb[r0:r1, c0:c1], size, interpolation=cv2.INTER_CUBIC))
        for r0, r1, c0, c1 in boxes
    ]
    image_emb = encoder.encode_images(tiles, progress=False)
    sims = (caption_embeddings @ image_emb.T).numpy()  # [captions, tiles]
    return [probability_map(row, boxes, (height, width), params) for row in sims]


def evaluate_selo(
    encoder, data: SeLoDataset, params: SeLoParams = DEFAULT, progress: bool = True
) -> dict[str, Any]:
    """Mean Rsu / Ras / Rda / Rmi of ``encoder`` (a :class:`~hqrs.evaluation.encoders.DualEncoder`) on
    ``data``; tiles of an image are embedded once for all its captions."""
    by_image: dict[Path, list[int]] = {}
    for i, s in enumerate(data.samples):
        by_image.setdefault(s.image, []).append(i)
    per_sample: list[dict[str, Any]] = [{} for _ in data.samples]
    bar = tqdm(total=len(data.samples), desc="SeLo samples", unit="sample", disable=not progress)
    for image, indices in by_image.items():
        text_emb = encoder.encode_texts([data.samples[i].caption for i in indices])
        maps = model_probability_map(encoder, image, text_emb, params)
        for i, prob in zip(indices, maps):
            per_sample[i] = {
                "image": image.name,
                "caption": data.samples[i].caption,
                **selo_metrics(prob, data.samples[i].regions, params),
            }
            bar.update(1)
    bar.close()
    metrics = {k: float(np.mean([m[k] for m in per_sample])) for k in ("Rsu", "Ras", "Rda", "Rmi")}
    return {"metrics": metrics, "per_sample": per_sample}
