"""The cost per image of output safety and provenance (issue 25), in `make bench`.

Measured in the bench process on the backend's own code (images/backends/local/safety.py
and provenance.py), at the bench's image size, on the device the pipeline uses:

- the classifier: a ViT-Base/16 at 224 px (86 M parameters, the architecture of
  Falconsai/nsfw_image_detection, the documented choice) with random weights (the
  weights change no cost), built with transformers into a temporary folder and loaded
  the way the worker loads OUTPUT_MODERATION_MODEL; one call of 1 image and one batch of
  `n` images (a job's images are classified in one batch), after a warm-up call;
- the dwtDct watermark (its library runs in Python over 4x4 blocks: the cost grows with
  the pixels), on a generated-looking image of the bench size;
- C2PA signing of the encoded PNG with a development certificate.

Also runnable alone: `python -m tools.bench.safety --size 512x512 --n 4`.
"""

from __future__ import annotations

import io
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def classifier_folder(folder: Path, *, base: bool = True) -> Path:
    """Save a ViT image classifier with labels normal/nsfw in `folder`: ViT-Base/16 at
    224 px (`base`), or a tiny one for tests. Random weights."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    labels = {0: "normal", 1: "nsfw"}
    if base:
        config = ViTConfig(num_labels=2, id2label=labels, label2id={v: k for k, v in labels.items()})
        size = 224
    else:
        config = ViTConfig(
            image_size=32,
            patch_size=16,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            num_labels=2,
            id2label=labels,
            label2id={v: k for k, v in labels.items()},
        )
        size = 32
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": size, "width": size}).save_pretrained(folder)
    return folder


def _median_ms(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def run_output_safety(*, width: int, height: int, n: int, repeats: int = 3) -> dict[str, Any]:
    """Milliseconds per image of each step (medians over `repeats` runs)."""
    import numpy as np
    from django.core.management import call_command
    from PIL import Image, ImageFilter

    from images.backends import get_backend
    from images.backends.local import config, device, provenance, safety

    rng = np.random.default_rng(0)
    small = Image.fromarray((rng.random((max(8, height // 8), max(8, width // 8), 3)) * 255).astype("uint8"))
    image = small.filter(ImageFilter.GaussianBlur(1)).resize((width, height), Image.Resampling.BICUBIC)
    get_backend()  # (imports the backend's modules under its lock, as a worker does)
    with tempfile.TemporaryDirectory(prefix="bench-safety-") as tmp:
        folder = classifier_folder(Path(tmp) / "vit-base")
        call_command("c2pa_dev_cert", str(Path(tmp) / "c2pa"), stdout=io.StringIO())
        with config.override(
            moderation_model=str(folder),
            c2pa_cert=str(Path(tmp) / "c2pa" / "c2pa-dev-chain.pem"),
            c2pa_key=str(Path(tmp) / "c2pa" / "c2pa-dev-key.pem"),
        ):
            safety.forget()
            started = time.perf_counter()
            safety.classify([image])  # load + first call
            load_ms = (time.perf_counter() - started) * 1000
            one = _median_ms(lambda: safety.classify([image]), repeats)
            batch = _median_ms(lambda: safety.classify([image] * n), repeats)
            marked = provenance.watermark_embed(image, "AIGC")
            watermark = _median_ms(lambda: provenance.watermark_embed(image, "AIGC"), repeats)
            buffer = io.BytesIO()
            marked.save(buffer, format="PNG", compress_level=1)
            png = buffer.getvalue()
            sign = _median_ms(
                lambda: provenance.c2pa_sign(png, content_type="image/png", model="bench", generated_at=_now()),
                repeats,
            )
            safety.forget()
    device_name, dtype = device.select_device()
    return {
        "device": device_name,
        "dtype": device.dtype_name(dtype),
        "classifier": "ViT-Base/16 224px (86M parameters, random weights)",
        "size": f"{width}x{height}",
        "n": n,
        "classifier_load_ms": round(load_ms, 1),
        "classify_ms_per_image_batch_1": round(one, 1),
        f"classify_ms_per_image_batch_{n}": round(batch / n, 1),
        "watermark_ms_per_image": round(watermark, 1),
        "c2pa_sign_ms_per_image": round(sign, 1),
    }


def _now():
    from datetime import UTC, datetime

    return datetime.now(UTC)


def table(result: dict[str, Any]) -> list[str]:
    """Lines for the bench's text table."""
    n = result["n"]
    return [
        f"output safety ({result['size']}, {result['device']} {result['dtype']}; {result['classifier']}):",
        f"  classify {result['classify_ms_per_image_batch_1']} ms/image alone, "
        f"{result[f'classify_ms_per_image_batch_{n}']} ms/image in a batch of {n} "
        f"(load {result['classifier_load_ms']} ms once); watermark {result['watermark_ms_per_image']} ms/image; "
        f"C2PA signing {result['c2pa_sign_ms_per_image']} ms/image",
    ]


def main() -> None:
    import argparse
    import json
    import os
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="512x512")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[2]
    sys.path.append(str(root / "platform"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
    import django

    django.setup()
    width, height = (int(v) for v in args.size.lower().split("x"))
    result = run_output_safety(width=width, height=height, n=args.n, repeats=args.repeats)
    print("\n".join(table(result)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
