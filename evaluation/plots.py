"""Small PNG plots drawn with Pillow (matplotlib is not a dependency): confusion matrix, histograms."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def confusion_matrix_png(
    matrix: Sequence[Sequence[int]], classnames: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """Row-normalised confusion matrix (rows = true class, columns = predicted) as a PNG heat map, with
    the axis titles "true class" (left, vertical) and "predicted class" (top)."""
    n = len(classnames)
    if n == 0 or len(matrix) != n or any(len(r) != n for r in matrix):
        raise ValueError(f"confusion matrix must be {n}×{n} for {n} class names")
    cell = max(12, min(40, 900 // n))
    font = _font(max(9, min(14, cell - 4)))
    label_w = 8 + max(
        int(ImageDraw.Draw(Image.new("L", (1, 1))).textlength(c, font=font)) for c in classnames
    )
    axis = 20  # room for the axis titles
    top = 30 + axis + label_w
    left = axis
    img = Image.new("RGB", (left + label_w + n * cell + 10, top + n * cell + 10), "white")
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((5, 5), title, fill="black", font=_font(14))
    draw.text((left + label_w, 28), "predicted class", fill="black", font=_font(13))
    ylab = Image.new("RGB", (int(draw.textlength("true class", font=_font(13))) + 6, 18), "white")
    ImageDraw.Draw(ylab).text((2, 1), "true class", fill="black", font=_font(13))
    ylab = ylab.rotate(90, expand=True)
    img.paste(ylab, (1, top + max(0, (n * cell - ylab.height) // 2)))
    label_w += left
    for i, row in enumerate(matrix):
        total = sum(row) or 1
        for j, v in enumerate(row):
            frac = v / total
            shade = int(255 * (1 - frac))
            x0, y0 = label_w + j * cell, top + i * cell
            draw.rectangle(
                [x0, y0, x0 + cell - 1, y0 + cell - 1], fill=(shade, shade, 255), outline=(220, 220, 220)
            )
            if v and cell >= 18:
                draw.text(
                    (x0 + 2, y0 + 2),
                    str(v),
                    fill="white" if frac > 0.5 else "black",
                    font=_font(max(8, cell // 3)),
                )
        draw.text((left + 4, top + i * cell + 2), classnames[i], fill="black", font=font)
    # predicted-class labels, written vertically above the columns
    for j, name in enumerate(classnames):
        w = int(draw.textlength(name, font=font)) + 4
        lab = Image.new("RGB", (w, cell), "white")
        ImageDraw.Draw(lab).text((2, 1), name, fill="black", font=font)
        lab = lab.rotate(90, expand=True)
        img.paste(lab, (label_w + j * cell, top - 4 - lab.height))
    return _save_png(img, path)


def histogram_png(
    values: Sequence[float], path: str | Path, title: str, bins: int = 30, xlabel: str = ""
) -> Path:
    """Bar histogram of ``values`` as a PNG."""
    if not values:
        raise ValueError(f"no values to plot for {title!r}")
    lo, hi = min(values), max(values)
    width = (hi - lo) / bins if hi > lo else 1.0
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / width))] += 1
    W, H, m = 640, 360, 40
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    font = _font(12)
    draw.text((m, 8), title, fill="black", font=_font(14))
    peak = max(counts)
    bw = (W - 2 * m) / bins
    for i, c in enumerate(counts):
        h = (H - 2 * m) * c / peak
        draw.rectangle([m + i * bw, H - m - h, m + (i + 1) * bw - 1, H - m], fill=(70, 110, 200))
    draw.line([m, H - m, W - m, H - m], fill="black")
    draw.line([m, m, m, H - m], fill="black")
    span = hi - lo if hi > lo else 1.0
    for t in nice_ticks(lo, lo + span):  # x ticks at round values inside [lo, hi]
        x = m + (t - lo) / span * (W - 2 * m)
        draw.line([x, H - m, x, H - m + 4], fill="black")
        text = f"{t:g}"
        draw.text((x - draw.textlength(text, font=font) / 2, H - m + 5), text, fill="black", font=font)
    for t in nice_ticks(0, peak, 4):  # y ticks: counts
        y = H - m - (H - 2 * m) * t / peak
        draw.line([m - 4, y, m, y], fill="black")
        text = f"{t:g}"
        draw.text((m - 6 - draw.textlength(text, font=font), y - 6), text, fill="black", font=font)
    draw.text((W // 2 - draw.textlength(xlabel, font=font) / 2, H - m + 20), xlabel, fill="black", font=font)
    draw.text((m + 4, m - 14), "count", fill="black", font=font)
    return _save_png(img, path)


def nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 × 10^k) inside ``[lo, hi]``, about ``target`` of them.

    >>> nice_ticks(0, 100)
    [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
    >>> nice_ticks(3, 47)
    [10.0, 20.0, 30.0, 40.0]
    """
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [float(lo)]
    raw = (hi - lo) / max(1, target - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(k * mag for k in (1, 2, 5, 10) if k * mag >= raw)
    first = math.ceil(lo / step - 1e-9)
    out = []
    k = first
    while k * step <= hi + 1e-9 * step:
        out.append(round(k * step, 12))
        k += 1
    return [float(v) for v in out]


def _save_png(img, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path
