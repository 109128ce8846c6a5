"""Judging a demo-model image by plain pixel analysis: what colour and shape is its figure?

Rules (numpy only, no model):

1. the background colour is the median of the picture's outermost ring of pixels;
2. the figure's colour is the mean of the pixels far from the background (more than 60 % of
   the farthest pixel's distance), named by the nearest colour of the palette
   (tools/demo_model/dataset.PALETTE);
3. the figure is every pixel nearer to the figure's colour than to the background's (the
   midpoint rule, so that soft upscaled edges count half way); its bounding box is taken
   between the 0.5th and 99.5th percentiles of its pixels' coordinates (stray pixels do
   not stretch it);
4. the share of the box it fills names the shape: a disc fills pi/4 ~ 0.785, a square
   1.0, a triangle 0.5. Above 0.89: square; 0.64 to 0.89: circle; below: triangle.

A picture whose figure covers less than 0.5 % of it, or whose figure and background are
nearly the same colour, has no figure (shape and colour None).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tools.demo_model.dataset import PALETTE

SQUARE_ABOVE = 0.89
TRIANGLE_BELOW = 0.64


@dataclass(frozen=True)
class Verdict:
    """What the judge saw: colour and shape names (None: no figure), background name,
    fill (figure pixels / bounding box area), box (left, top, right, bottom) in pixels,
    area (figure pixels / all pixels) and the figure's mean RGB."""

    colour: str | None
    shape: str | None
    background: str
    fill: float
    box: tuple[int, int, int, int] | None
    area: float
    mean_rgb: tuple[float, float, float] | None


def nearest_colour(rgb) -> str:
    """The palette name nearest (Euclidean, RGB) to `rgb`."""
    rgb = np.asarray(rgb, dtype=float)
    return min(PALETTE, key=lambda name: float(np.sum((np.asarray(PALETTE[name], dtype=float) - rgb) ** 2)))


def shape_of(fill: float) -> str:
    """The shape whose typical fill of its bounding box `fill` is nearest (see the rules)."""
    if fill > SQUARE_ABOVE:
        return "square"
    if fill >= TRIANGLE_BELOW:
        return "circle"
    return "triangle"


def judge(image) -> Verdict:
    """Judge a PIL image (any mode, any size) or an RGB array [H, W, 3]."""
    pixels = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=float)
    ring = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = np.median(ring, axis=0)
    distance = np.sqrt(((pixels - background) ** 2).sum(axis=-1))
    far = distance.max()
    if far < 60:
        return Verdict(None, None, nearest_colour(background), 0.0, None, 0.0, None)
    core = distance > 0.6 * far
    figure_rgb = pixels[core].mean(axis=0)
    to_figure = ((pixels - figure_rgb) ** 2).sum(axis=-1)
    to_background = ((pixels - background) ** 2).sum(axis=-1)
    mask = to_figure < to_background
    area = float(mask.mean())
    if area < 0.005:
        return Verdict(None, None, nearest_colour(background), 0.0, None, area, None)
    ys, xs = np.nonzero(mask)
    left, right = np.percentile(xs, [0.5, 99.5])
    top, bottom = np.percentile(ys, [0.5, 99.5])
    box_area = (right - left + 1) * (bottom - top + 1)
    inside = mask[int(top) : int(bottom) + 1, int(left) : int(right) + 1].sum()
    fill = float(inside / box_area)
    return Verdict(
        colour=nearest_colour(figure_rgb),
        shape=shape_of(fill),
        background=nearest_colour(background),
        fill=fill,
        box=(int(left), int(top), int(right), int(bottom)),
        area=area,
        mean_rgb=tuple(float(v) for v in figure_rgb),
    )
