"""Score the demo model: 24 random vocabulary prompts, random seeds, judged by pixels.

    OMP_NUM_THREADS=2 .venv/bin/python -m tools.demo_model.evaluate [--model FOLDER] [--size 256x256]

Runs through the local backend (images.backends.local: the same loading, batching,
native-size fitting and runner code that serves the API) and prints each prompt's
verdict (tools/demo_model/judge.py), then colour / shape / both accuracy and the mean
time of one image. Targets (issue 22): colour >= 90 %, shape >= 80 %, both >= 75 %.
"""

from __future__ import annotations

import argparse
import pathlib
import random
import time

from images.demo_model import DEMO_GUIDANCE
from tools.demo_model.dataset import COLOURS, DEFAULT_BACKGROUND, SHAPES
from tools.demo_model.judge import judge

DEFAULT_MODEL = pathlib.Path(__file__).resolve().parents[2] / "images" / "backends" / "local" / "demo_weights"


def prompts(n: int, seed: int) -> list[tuple[str, str, str, str]]:
    """n (prompt, colour, shape, background) from the vocabulary, figure != background."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        colour, shape = rng.choice(COLOURS), rng.choice(SHAPES)
        background = rng.choice([c for c in COLOURS if c != colour])
        if rng.random() < 0.3 and colour != DEFAULT_BACKGROUND:
            out.append((f"a {colour} {shape}", colour, shape, DEFAULT_BACKGROUND))
        else:
            out.append((f"a {colour} {shape} on a {background} background", colour, shape, background))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=pathlib.Path, default=DEFAULT_MODEL)
    parser.add_argument("--size", default="256x256")
    parser.add_argument("--n", type=int, default=24)
    parser.add_argument("--seed", type=int, default=None, help="prompt/seed draw (default: random)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--guidance", type=float, default=DEMO_GUIDANCE)
    parser.add_argument("--save", type=pathlib.Path, default=None, help="folder to save the images in")
    args = parser.parse_args()

    from images.backends.base import GenerationTask, PipelineSource
    from images.backends.local import config
    from images.backends.local.runner import run_batch

    width, height = (int(v) for v in args.size.split("x"))
    draw = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    rng = random.Random(draw)
    source = PipelineSource(str(args.model))
    right = {"colour": 0, "shape": 0, "both": 0}
    seconds = []
    with config.override(device="cpu", lanes=None):
        run_batch([GenerationTask(source, "warm up", None, width, height, args.steps, args.guidance, [0])])
        for i, (prompt, colour, shape, background) in enumerate(prompts(args.n, draw)):
            seed = rng.randrange(2**32)
            task = GenerationTask(source, prompt, None, width, height, args.steps, args.guidance, [seed])
            started = time.perf_counter()
            image = run_batch([task])[0].images[0]
            seconds.append(time.perf_counter() - started)
            v = judge(image)
            ok_c, ok_s = v.colour == colour, v.shape == shape
            right["colour"] += ok_c
            right["shape"] += ok_s
            right["both"] += ok_c and ok_s
            print(
                f"{'ok ' if ok_c and ok_s else 'BAD'} {prompt!r} seed {seed}: saw {v.colour} {v.shape} "
                f"(fill {v.fill:.2f}) on {v.background}"
            )
            if args.save:
                args.save.mkdir(parents=True, exist_ok=True)
                image.save(args.save / f"{i:02d}-{colour}-{shape}-on-{background}.png")
    n = args.n
    print(f"draw {draw}, {width}x{height}, {args.steps} steps, guidance {args.guidance}")
    print(
        f"colour {right['colour']}/{n} ({100 * right['colour'] / n:.0f} %), "
        f"shape {right['shape']}/{n} ({100 * right['shape'] / n:.0f} %), "
        f"both {right['both']}/{n} ({100 * right['both'] / n:.0f} %); "
        f"{sum(seconds) / len(seconds):.3f} s per image"
    )


if __name__ == "__main__":
    main()
