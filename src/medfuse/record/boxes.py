"""Box geometry shared by importers, tasks, rewards and evaluation.

Boxes on a case live on the MedRegA grid: integers 0-999, normalised separately by the
image width (x) and height (y), ordered ``[x1, y1, x2, y2]`` (see DESIGN.md). Source
annotations come in pixels, either as corners (``xyxy``) or as COCO ``[x, y, w, h]``;
these helpers convert between the three so that every part of medfuse rounds the same way.

>>> coco_to_xyxy([10, 20, 30, 40])
[10.0, 20.0, 40.0, 60.0]
>>> pixel_to_grid([0, 0, 512, 256], width=512, height=512)
[0, 0, 999, 500]
>>> grid_to_pixel([0, 0, 999, 500], width=512, height=512)
[0.0, 0.0, 512.0, 256.2562562562563]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

GRID_MAX = 999  # MedRegA: coordinates are integers in [0, 999]


def _round_half_up(v: float) -> int:
    # Python's round() rounds halves to even, which would move boxes that sit exactly on
    # a half-step in different directions; half-up is what the papers' code does.
    return math.floor(v + 0.5)


def _check_size(width: float, height: float) -> None:
    if not (width > 0 and height > 0):
        raise ValueError(f"image width and height must be positive, got {width}x{height}")


def _check_box(box: Sequence[float], what: str) -> tuple[float, float, float, float]:
    if len(box) != 4:
        raise ValueError(f"a {what} box has 4 numbers, got {len(box)}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise ValueError(f"{what} box has a non-finite coordinate: {list(box)}")
    if x2 < x1 or y2 < y1:
        raise ValueError(f"{what} box needs x1 <= x2 and y1 <= y2, got {list(box)}")
    return x1, y1, x2, y2


def coco_to_xyxy(box_xywh: Sequence[float]) -> list[float]:
    """COCO ``[x, y, width, height]`` (pixels, top-left origin) -> ``[x1, y1, x2, y2]``.

    >>> coco_to_xyxy([381.5, 126.0, 40.0, 44.5])
    [381.5, 126.0, 421.5, 170.5]
    >>> coco_to_xyxy([1, 2, -3, 4])
    Traceback (most recent call last):
    ...
    ValueError: COCO box needs a non-negative width and height, got [1, 2, -3, 4]
    """
    if len(box_xywh) != 4:
        raise ValueError(f"a COCO box has 4 numbers, got {len(box_xywh)}")
    x, y, w, h = (float(v) for v in box_xywh)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise ValueError(f"COCO box has a non-finite number: {list(box_xywh)}")
    if w < 0 or h < 0:
        raise ValueError(f"COCO box needs a non-negative width and height, got {list(box_xywh)}")
    return [x, y, x + w, y + h]


def xyxy_to_coco(box_xyxy: Sequence[float]) -> list[float]:
    """``[x1, y1, x2, y2]`` -> COCO ``[x, y, width, height]`` (pixels).

    >>> xyxy_to_coco([10, 20, 40, 60])
    [10.0, 20.0, 30.0, 40.0]
    """
    x1, y1, x2, y2 = _check_box(box_xyxy, "pixel")
    return [x1, y1, x2 - x1, y2 - y1]


def pixel_to_grid(box_xyxy: Sequence[float], width: float, height: float) -> list[int]:
    """Pixel corners -> the 0-999 grid: ``x / width * 999`` and ``y / height * 999``,
    rounded half up and clipped to [0, 999] (a box that spills over the edge is cut at it).

    >>> pixel_to_grid([381.83, 126.87, 422.07, 171.44], 512, 512)
    [745, 248, 824, 335]
    >>> pixel_to_grid([-5, 10, 600, 20], 512, 256)  # clipped to the image
    [0, 39, 999, 78]
    >>> pixel_to_grid([10, 10, 5, 20], 100, 100)
    Traceback (most recent call last):
    ...
    ValueError: pixel box needs x1 <= x2 and y1 <= y2, got [10, 10, 5, 20]
    """
    _check_size(width, height)
    x1, y1, x2, y2 = _check_box(box_xyxy, "pixel")

    def to_grid(v: float, size: float) -> int:
        return min(GRID_MAX, max(0, _round_half_up(v / size * GRID_MAX)))

    return [to_grid(x1, width), to_grid(y1, height), to_grid(x2, width), to_grid(y2, height)]


def grid_to_pixel(box_grid: Sequence[float], width: float, height: float) -> list[float]:
    """0-999 grid -> pixel corners ``[x1, y1, x2, y2]`` (floats) for an image of this size.

    The inverse of `pixel_to_grid` up to its rounding: at most half a grid step
    (``width / 1998`` pixels) off.

    >>> grid_to_pixel([745, 248, 824, 335], 512, 512)  # doctest: +ELLIPSIS
    [381.82..., 127.10..., 422.31..., 171.69...]
    """
    _check_size(width, height)
    x1, y1, x2, y2 = _check_box(box_grid, "grid")
    if not all(0 <= v <= GRID_MAX for v in (x1, y1, x2, y2)):
        raise ValueError(f"grid box coordinates must lie in 0-{GRID_MAX}, got {list(box_grid)}")
    sx, sy = width / GRID_MAX, height / GRID_MAX
    return [x1 * sx, y1 * sy, x2 * sx, y2 * sy]


def box_area(box: Sequence[float]) -> float:
    """Area of an ``[x1, y1, x2, y2]`` box in its own units (grid or pixels).

    >>> box_area([0, 0, 10, 5])
    50.0
    """
    x1, y1, x2, y2 = _check_box(box, "area")
    return (x2 - x1) * (y2 - y1)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``[x1, y1, x2, y2]`` boxes in the same units.

    Two identical zero-area boxes count as a perfect match (1.0); otherwise a zero union
    gives 0.0.

    >>> box_iou([0, 0, 10, 10], [5, 0, 15, 10])  # half overlap: 50 / 150
    0.3333333333333333
    >>> box_iou([0, 0, 10, 10], [20, 20, 30, 30])
    0.0
    """
    ax1, ay1, ax2, ay2 = _check_box(a, "first")
    bx1, by1, bx2, by2 = _check_box(b, "second")
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    if union <= 0:
        return 1.0 if (ax1, ay1, ax2, ay2) == (bx1, by1, bx2, by2) else 0.0
    return inter / union
