"""Small PNG plots drawn with Pillow (matplotlib is not a dependency): confusion matrix, histograms."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def confusion_matrix_png(
    matrix: Sequence[Sequence[int]], classnames: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """Row-normalised confusion matrix (rows = true class, columns = predicted) as a PNG heat map."""
    from PIL import Image, ImageDraw

    n = len(classnames)
    if n == 0 or len(matrix) != n or any(len(r) != n for r in matrix):
        raise ValueError(f"confusion matrix must be {n}×{n} for {n} class names")
    cell = max(12, min(40, 900 // n))
    font = _font(max(9, min(14, cell - 4)))
    label_w = 8 + max(
        int(ImageDraw.Draw(Image.new("L", (1, 1))).textlength(c, font=font)) for c in classnames
    )
    top = 30 + label_w
    img = Image.new("RGB", (label_w + n * cell + 10, top + n * cell + 10), "white")
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((5, 5), title, fill="black", font=_font(14))
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
        draw.text((4, top + i * cell + 2), classnames[i], fill="black", font=font)
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
    from PIL import Image, ImageDraw

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
    draw.text((m, H - m + 4), f"{lo:.3g}", fill="black", font=font)
    draw.text((W - m - 30, H - m + 4), f"{hi:.3g}", fill="black", font=font)
    draw.text((W // 2 - 30, H - m + 18), xlabel, fill="black", font=font)
    draw.text((4, m - 4), str(peak), fill="black", font=font)
    return _save_png(img, path)


def _save_png(img, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path
