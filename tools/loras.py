"""Random LoRA adapters for tests and benchmarks (issue 23), and the swap-cost benchmark.

`build_lora(model_folder, out)` makes random low-rank pairs for the denoiser of the
diffusers pipeline in `model_folder` (a UNet, or a transformer), from its own config (no
hard-coded shapes), and saves them in diffusers' format
(`pytorch_lora_weights.safetensors`, as `save_lora_weights` writes it). lora_B is
randomised too: peft starts it at 0, which would change nothing.

    OMP_NUM_THREADS=1 .venv/bin/python tools/loras.py [--source FOLDER] [--size 256] [--steps 4] [--calls 15]

measures, on one lane with one torch thread: the median pipeline call with no adapter,
with the same adapter every call, alternating base/adapter and alternating two adapters,
and the mean `set_adapters` switch (docs/benchmarks.md, "LoRA adapters").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # attention projections: every diffusers denoiser has them


def build_lora(model_folder: Path | str, out: Path | str, *, seed: int = 1, rank: int = 4, std: float = 0.5) -> Path:
    """Random LoRA for the pipeline's UNet or transformer, saved in `out` (a folder)."""
    import diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    index = json.loads((Path(model_folder) / "model_index.json").read_text())
    pipeline_class = getattr(diffusers, index["_class_name"])
    denoiser = "unet" if "unet" in index else "transformer"
    model_class = getattr(diffusers, index[denoiser][1])
    model = model_class.from_pretrained(model_folder, subfolder=denoiser)
    model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS, init_lora_weights=False))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    pipeline_class.save_lora_weights(str(out), **{f"{denoiser}_lora_layers": get_peft_model_state_dict(model)})
    return Path(out)


def main() -> None:
    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root))
    sys.path.append(str(root / "platform"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
    import django

    django.setup()
    import tempfile

    from django.conf import settings

    from images.backends.base import GenerationTask, LoraSpec, PipelineSource
    from images.backends.local import adapters, config, runner

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=str(Path(settings.MODEL_DIR) / "demo-sd-tiny"))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--calls", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="loras-"))
    a = LoraSpec("a", str(build_lora(args.source, work / "a", seed=1)), 1.0)
    b = LoraSpec("b", str(build_lora(args.source, work / "b", seed=2)), 0.8)
    with config.override(device="cpu", max_batch=None, lanes=1):
        source = PipelineSource(args.source)

        def call(loras) -> float:
            task = GenerationTask(
                source=source,
                prompt="a fox",
                negative_prompt=None,
                width=args.size,
                height=args.size,
                steps=args.steps,
                guidance=5.0,
                seeds=[3],
                loras=tuple(loras),
            )
            started = time.perf_counter()
            runner.run_batch([task])
            return time.perf_counter() - started

        for _ in range(3):
            call([]), call([a]), call([b])

        def median(pattern) -> float:
            return statistics.median(call(loras) for loras in pattern * args.calls)

        base, same = median([[]]), median([[a]])
        switches, seconds = list(adapters.SWITCHES)
        alternating = median([[], [a]])
        two = median([[a], [b]])
        switched = adapters.SWITCHES[0] - switches
        per_switch = (adapters.SWITCHES[1] - seconds) / max(1, switched)
    ms = 1000
    print(f"{args.size}x{args.size}, {args.steps} steps, 1 lane, 1 torch thread")
    print(f"median call: no adapter {base * ms:.1f} ms; the same adapter every call {same * ms:.1f} ms")
    print(f"alternating no adapter / adapter: {alternating * ms:.1f} ms; two adapters: {two * ms:.1f} ms")
    print(f"set_adapters switch: {per_switch * ms:.1f} ms ({per_switch / same:.1%} of a call with the adapter)")


if __name__ == "__main__":
    main()
