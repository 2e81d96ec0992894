"""Plane geometry of large scenes: tile origins, resize factors and clipping boxes to a tile.

Coordinates are pixels of the stored image (``x`` right, ``y`` down); a rectangle is
``(x0, y0, x1, y1)``, a polygon a list of ``(x, y)`` points, an oriented box the 8 numbers
``x1, y1, …, x4, y4`` of :class:`~hqrs.dataset_builder.records.ObjectAnnotation`.

>>> tile_origins(2500, 1024, 200)
[0, 824, 1476]
>>> polygon_area(clip_polygon([(0, 0), (10, 0), (10, 10), (0, 10)], (5, 0, 20, 20)))
50.0
"""

from __future__ import annotations

import math

from PIL import Image

from ..records import ObjectAnnotation

Point = tuple[float, float]
Rect = tuple[float, float, float, float]


def clip_polygon(points: list[Point], rect: Rect) -> list[Point]:
    """Sutherland–Hodgman clip of a convex polygon to an axis-aligned rectangle (``[]`` if outside)."""
    x0, y0, x1, y1 = rect
    edges = (
        (lambda p: p[0] >= x0, lambda p, q: _cross_x(p, q, x0)),
        (lambda p: p[0] <= x1, lambda p, q: _cross_x(p, q, x1)),
        (lambda p: p[1] >= y0, lambda p, q: _cross_y(p, q, y0)),
        (lambda p: p[1] <= y1, lambda p, q: _cross_y(p, q, y1)),
    )
    out = list(points)
    for inside, cross in edges:
        if not out:
            break
        src, out = out, []
        for i, p in enumerate(src):
            q = src[i - 1]
            if inside(p):
                if not inside(q):
                    out.append(cross(q, p))
                out.append(p)
            elif inside(q):
                out.append(cross(q, p))
    return out


def _cross_x(p: Point, q: Point, x: float) -> Point:
    t = (x - p[0]) / (q[0] - p[0])
    return (x, p[1] + t * (q[1] - p[1]))


def _cross_y(p: Point, q: Point, y: float) -> Point:
    t = (y - p[1]) / (q[1] - p[1])
    return (p[0] + t * (q[0] - p[0]), y)


def polygon_area(points: list[Point]) -> float:
    """The area of a simple polygon (shoelace formula); 0 for fewer than 3 points."""
    n = len(points)
    if n < 3:
        return 0.0
    return (
        abs(
            sum(
                points[i][0] * points[(i + 1) % n][1] - points[(i + 1) % n][0] * points[i][1]
                for i in range(n)
            )
        )
        / 2
    )


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Tile start offsets along one axis (DOTA devkit style: the last tile is flush with the edge)."""
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return sorted(set(starts))


def scale_factor(width: int, height: int, max_side: int) -> float:
    """The factor (at most 1) that brings the longer side of ``width`` × ``height`` down to ``max_side``."""
    return min(1.0, max_side / max(width, height))


def resized(image: Image.Image, scale: float) -> Image.Image:
    """``image`` scaled by ``scale`` (Lanczos; each side rounded, at least 1 pixel)."""
    size = (max(1, math.floor(image.size[0] * scale + 0.5)), max(1, math.floor(image.size[1] * scale + 0.5)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def clip_object(
    obj: ObjectAnnotation, rect: tuple[int, int, int, int], min_fraction: float
) -> ObjectAnnotation | None:
    """``obj`` in the coordinates of the tile ``rect``, or ``None`` when less than ``min_fraction`` of its
    area lies inside the tile (or what is left is degenerate).

    A box wholly inside keeps its oriented box; a cut one becomes the horizontal box around the clipped
    polygon.
    """
    x0, y0, x1, y1 = rect
    if obj.obox is not None:
        poly = list(zip(obj.obox[0::2], obj.obox[1::2]))
    else:
        bx0, by0, bx1, by1 = obj.bbox
        poly = [(bx0, by0), (bx1, by0), (bx1, by1), (bx0, by1)]
    area = polygon_area(poly)
    clipped = clip_polygon(poly, rect)
    inside = polygon_area(clipped)
    if area <= 0 or inside / area < min_fraction:
        return None
    try:
        if inside / area > 0.999:
            obox = (
                tuple(v - (x0 if i % 2 == 0 else y0) for i, v in enumerate(obj.obox))
                if obj.obox is not None
                else None
            )
            bbox = (obj.bbox[0] - x0, obj.bbox[1] - y0, obj.bbox[2] - x0, obj.bbox[3] - y0)
            bbox = (max(bbox[0], 0.0), max(bbox[1], 0.0), min(bbox[2], x1 - x0), min(bbox[3], y1 - y0))
            return ObjectAnnotation(obj.category, bbox=bbox, obox=obox, difficult=obj.difficult)
        xs, ys = [p[0] - x0 for p in clipped], [p[1] - y0 for p in clipped]
        return ObjectAnnotation(
            obj.category, bbox=(min(xs), min(ys), max(xs), max(ys)), difficult=obj.difficult
        )
    except ValueError:
        return None
