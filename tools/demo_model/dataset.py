"""Seeded generator of the demo model's training scenes: one flat figure on a flat background.

A scene is one figure (circle, square or triangle) in one of eight colours, roughly
centred (its centre within +-8 % of the middle), of a size that varies (its bounding box
is 40-75 % of the side), on a background of another of the colours. Prompts name the
figure and, unless the background is white, the background: "a red circle on a blue
background", "a green triangle". Some prompts carry filler words outside the vocabulary
("a picture of ...") so that the model learns to ignore them.

Pure numpy + PIL (no torch): `scene_image(scene, size)` draws one scene, `scenes(n, seed)`
draws n scene descriptions, `batch(n, seed, size)` returns (uint8 array [n, size, size, 3],
prompts). The judge in tests/images/oracle.py reads images back with the same palette.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# name -> RGB. Far apart, so that a figure's mean colour names its colour unambiguously.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 220, 30),
    "orange": (245, 140, 20),
    "purple": (140, 40, 180),
    "black": (15, 15, 15),
    "white": (250, 250, 250),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
DEFAULT_BACKGROUND = "white"
# Words outside the vocabulary, mixed into some prompts (the model must ignore them).
FILLERS = ("picture of", "drawing of", "simple", "photo of", "nice", "image of")


@dataclass(frozen=True)
class Scene:
    """One scene: figure colour and shape, background colour, centre and half-size as
    fractions of the side (cx, cy in [0.42, 0.58]; half in [0.2, 0.375])."""

    colour: str
    shape: str
    background: str
    cx: float
    cy: float
    half: float


def prompt_for(scene: Scene, rng: random.Random | None = None) -> str:
    """The training prompt of a scene; with `rng`, one of several phrasings."""
    bg = scene.background
    if rng is None:
        return f"a {scene.colour} {scene.shape} on a {bg} background"
    text = rng.choice(("a ", "a ", "the ", "")) + f"{scene.colour} {scene.shape}"
    if rng.random() < 0.15:
        text = f"a {rng.choice(FILLERS)} a {scene.colour} {scene.shape}"
    if bg != DEFAULT_BACKGROUND or rng.random() < 0.5:
        text += f" on a {bg} background"
    return text


def random_scene(rng: random.Random) -> Scene:
    """A uniformly random scene (figure colour != background colour; a third of the
    backgrounds white, the default)."""
    colour = rng.choice(COLOURS)
    shape = rng.choice(SHAPES)
    if colour != DEFAULT_BACKGROUND and rng.random() < 1 / 3:
        background = DEFAULT_BACKGROUND
    else:
        background = rng.choice([c for c in COLOURS if c != colour])
    return Scene(
        colour=colour,
        shape=shape,
        background=background,
        cx=0.5 + rng.uniform(-0.08, 0.08),
        cy=0.5 + rng.uniform(-0.08, 0.08),
        half=rng.uniform(0.2, 0.375),
    )


def scene_image(scene: Scene, size: int, *, supersample: int = 4) -> Image.Image:
    """Draw `scene` as a size x size RGB image (anti-aliased by drawing `supersample`
    times larger and shrinking)."""
    big = size * supersample
    image = Image.new("RGB", (big, big), PALETTE[scene.background])
    draw = ImageDraw.Draw(image)
    cx, cy, h = scene.cx * big, scene.cy * big, scene.half * big
    fill = PALETTE[scene.colour]
    if scene.shape == "circle":
        draw.ellipse((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif scene.shape == "square":
        s = h * 0.9  # a square of the circle's area would be 0.886 h; close to it
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    else:  # upward triangle filling half its bounding box
        draw.polygon([(cx, cy - h), (cx + h, cy + h * 0.85), (cx - h, cy + h * 0.85)], fill=fill)
    return image.resize((size, size), Image.Resampling.BOX)


def batch(n: int, seed: int, size: int) -> tuple[np.ndarray, list[str], list[Scene]]:
    """n random scenes from `seed`: (uint8 [n, size, size, 3], prompts, scenes)."""
    rng = random.Random(seed)
    found = [random_scene(rng) for _ in range(n)]
    prompts = [prompt_for(s, rng) for s in found]
    pixels = np.stack([np.asarray(scene_image(s, size)) for s in found])
    return pixels, prompts, found
