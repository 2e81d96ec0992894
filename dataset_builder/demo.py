"""A small generated demo scene set: synthetic aerial-like images with DOTA-style boxes.

Everything is drawn by this module (PIL + numpy, seeded): fields with crop rows, a road network,
buildings with shadows, vehicles on the roads (``small-vehicle`` / ``large-vehicle``), storage tanks
and a tennis court. The annotations are DOTA ``labelTxt`` files (``imagesource:`` / ``gsd:`` header,
8-point boxes), so the demo runs through the real ``dota`` source adapter.

>>> from hqrs.dataset_builder.demo import make_demo_scenes
>>> folder = make_demo_scenes("/tmp/hqrs-demo-doctest", n=2)
>>> sorted(p.name for p in (folder / "labelTxt").iterdir())
['demo_000.txt', 'demo_001.txt']
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 384
GSD = 0.5  # metres per pixel


def _box(cx: float, cy: float, w: float, h: float, angle: float) -> list[float]:
    ca, sa = math.cos(angle), math.sin(angle)
    pts = [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
    return [round(v, 1) for x, y in pts for v in (cx + x * ca - y * sa, cy + x * sa + y * ca)]


def _scene(rng: np.random.Generator) -> tuple[Image.Image, list[tuple[list[float], str]]]:
    base = np.array([92, 110, 70]) + rng.integers(-10, 10, 3)
    noise = rng.normal(0, 6, (SIZE, SIZE, 1))
    img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    labels: list[tuple[list[float], str]] = []
    # fields with crop rows
    for _ in range(rng.integers(2, 5)):
        x0, y0 = rng.integers(0, SIZE - 120, 2)
        w, h = rng.integers(60, 140, 2)
        colour = tuple(int(c) for c in rng.choice([[150, 140, 80], [70, 130, 60], [120, 100, 60]]))
        draw.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
        for k in range(0, int(h), 6):
            draw.line([x0, y0 + k, x0 + w, y0 + k], fill=tuple(max(0, c - 25) for c in colour), width=1)
    # roads: one horizontal, one vertical
    ry, rx = int(rng.integers(120, 260)), int(rng.integers(120, 260))
    draw.rectangle([0, ry - 10, SIZE, ry + 10], fill=(105, 105, 105))
    draw.rectangle([rx - 10, 0, rx + 10, SIZE], fill=(105, 105, 105))
    draw.line([0, ry, SIZE, ry], fill=(220, 220, 210), width=1)
    # buildings with shadows (not a DOTA class: drawn, not labelled)
    for _ in range(rng.integers(3, 7)):
        x0, y0 = rng.integers(10, SIZE - 50, 2)
        if abs(y0 - ry) < 40 or abs(x0 - rx) < 40:
            continue
        w, h = rng.integers(20, 40, 2)
        draw.rectangle([x0 + 4, y0 + 4, x0 + w + 4, y0 + h + 4], fill=(45, 50, 40))
        draw.rectangle([x0, y0, x0 + w, y0 + h], fill=tuple(int(c) for c in rng.integers(150, 210, 3)))
    # vehicles on the horizontal road
    for _ in range(rng.integers(2, 7)):
        cx = float(rng.integers(15, SIZE - 15))
        large = rng.random() < 0.3
        w, h = (18.0, 7.0) if large else (9.0, 5.0)
        cy = ry + (-5 if rng.random() < 0.5 else 5)
        colour = tuple(int(c) for c in rng.integers(30, 240, 3))
        draw.rectangle([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], fill=colour)
        labels.append((_box(cx, cy, w, h, 0.0), "large-vehicle" if large else "small-vehicle"))
    # storage tanks
    if rng.random() < 0.7:
        tx, ty = int(rng.integers(40, SIZE - 80)), int(rng.integers(40, SIZE - 80))
        for i in range(int(rng.integers(1, 4))):
            cx, cy, r = tx + i * 26, ty, 10
            if abs(cy - ry) < 25 or abs(cx - rx) < 25:
                continue
            draw.ellipse([cx - r + 3, cy - r + 3, cx + r + 3, cy + r + 3], fill=(50, 50, 45))
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(225, 225, 220), outline=(170, 170, 170))
            labels.append((_box(cx, cy, 2 * r, 2 * r, 0.0), "storage-tank"))
    # a tennis court, sometimes rotated
    if rng.random() < 0.5:
        cx, cy = float(rng.integers(60, SIZE - 60)), float(rng.integers(60, SIZE - 60))
        if abs(cy - ry) > 45 and abs(cx - rx) > 45:
            angle = float(rng.choice([0.0, 0.5]))
            corners = _box(cx, cy, 46, 22, angle)
            draw.polygon(
                list(zip(corners[0::2], corners[1::2])), fill=(60, 120, 160), outline=(240, 240, 240)
            )
            labels.append((corners, "tennis-court"))
    return img.filter(ImageFilter.SMOOTH), labels


def make_demo_scenes(folder: str | Path, n: int = 16, seed: int = 0) -> Path:
    """Write ``n`` demo scenes to ``folder/images`` and their DOTA labels to ``folder/labelTxt``."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labelTxt").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img, labels = _scene(rng)
        img.save(folder / "images" / f"demo_{i:03d}.png", optimize=False)
        lines = ["imagesource:hqrs-demo (synthetic)", f"gsd:{GSD}"]
        lines += [" ".join(f"{v:g}" for v in box) + f" {name} 0" for box, name in labels]
        (folder / "labelTxt" / f"demo_{i:03d}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def demo_source_spec(folder: str | Path) -> str:
    return f"dota:{Path(folder) / 'labelTxt'}?images={Path(folder) / 'images'}&name=hqrs-demo"
