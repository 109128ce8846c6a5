"""Draw a grid of demo-model images (docs/screenshots/demo-model.png) through the local backend.

OMP_NUM_THREADS=2 .venv/bin/python -m tools.demo_model.grid --out docs/screenshots/demo-model.png
"""

from __future__ import annotations

import argparse
import pathlib

from PIL import Image, ImageDraw

from images.demo_model import DEMO_GUIDANCE
from tools.demo_model.evaluate import DEFAULT_MODEL

PROMPTS = [
    "a red circle on a white background",
    "a blue square on a yellow background",
    "a yellow triangle on a black background",
    "a green circle",
    "a purple square on a orange background",
    "an orange triangle on a blue background",
    "a black circle on a green background",
    "a white triangle on a purple background",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=pathlib.Path, default=DEFAULT_MODEL)
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    from images.backends.base import GenerationTask, PipelineSource
    from images.backends.local import config
    from images.backends.local.runner import run_batch

    tile, caption = 256, 22
    grid = Image.new("RGB", (tile * 4, (tile + caption) * 2), "white")
    draw = ImageDraw.Draw(grid)
    with config.override(device="cpu", lanes=None):
        source = PipelineSource(str(args.model))
        for i, prompt in enumerate(PROMPTS):
            task = GenerationTask(source, prompt, None, 256, 256, 4, DEMO_GUIDANCE, [args.seed + i])
            image = run_batch([task])[0].images[0]
            x, y = (i % 4) * tile, (i // 4) * (tile + caption)
            grid.paste(image, (x, y))
            draw.text((x + 4, y + tile + 5), prompt.replace(" background", " bg"), fill="black")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out, optimize=True)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
