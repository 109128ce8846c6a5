"""LoRA adapters on a FLUX pipeline (issue 23): a tiny FluxPipeline built from the configs
in tools/tiny_families.py, and a LoRA made here by peft over its transformer (attention
of the double and single blocks, the context projections and the MLPs, as FLUX LoRAs
do), saved in diffusers' format and loaded by FluxPipeline's own load_lora_weights.

The adapter changes the image; with it disabled, beside it in a batch, and after it is
unloaded (the LRU evicting it), the base image comes back bit for bit."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from images.backends.base import GenerationTask, LoraSpec, PipelineSource
from images.backends.local import adapters, cache, runner

# Module names of diffusers' FluxTransformer2DModel that FLUX LoRAs train.
FLUX_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "proj_mlp"]


def flux_lora(folder: Path, out: Path, *, seed: int, rank: int = 4) -> Path:
    """Random low-rank pairs for the transformer of the FLUX pipeline in `folder`, by peft."""
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = FluxTransformer2DModel.from_pretrained(folder, subfolder="transformer")
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=FLUX_TARGETS, init_lora_weights=False))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    FluxPipeline.save_lora_weights(str(out), transformer_lora_layers=get_peft_model_state_dict(transformer))
    return out


@pytest.fixture(scope="module")
def flux(model_dir, tmp_path_factory):
    # (model_dir: the module's pinned CPU configuration.)
    from tools.tiny_families import build_tiny_family

    root = tmp_path_factory.mktemp("flux")
    folder = build_tiny_family("flux", root / "flux")
    return PipelineSource(str(folder)), flux_lora(folder, root / "a", seed=1), flux_lora(folder, root / "b", seed=2)


def digest(result) -> str:
    return hashlib.sha256(result.images[0].tobytes()).hexdigest()


def one(source, loras=(), seed=4) -> GenerationTask:
    return GenerationTask(
        source=source,
        prompt="a red fox",
        negative_prompt=None,
        width=64,
        height=64,
        steps=2,
        guidance=3.5,
        seeds=[seed],
        loras=tuple(loras),
    )


def lora_params(source, adapter: LoraSpec) -> list[str]:
    """The transformer's parameters that belong to `adapter` (peft names them after it)."""
    peft_name = adapters.adapter_name(adapter.name, adapter.path)
    return [n for n, _ in cache.get_pipeline(source).transformer.named_parameters() if f".{peft_name}." in n]


def test_a_flux_lora_changes_the_image_and_is_gone_once_unloaded(flux, pipeline_config):
    source, a_path, b_path = flux
    pipeline_config(lora_cache_size=1)
    a, b = LoraSpec("flux-a", str(a_path), 1.0), LoraSpec("flux-b", str(b_path), 1.0)
    cache.clear_cache()  # a pipeline that never saw an adapter
    pipe = cache.get_pipeline(source)
    assert type(pipe).__name__ == "FluxPipeline"
    never = digest(runner.run_batch([one(source)])[0])

    styled = digest(runner.run_batch([one(source, [a])])[0])
    assert styled != never
    assert lora_params(source, a) and adapters.loaded(cache.cache_key(source))["active"] == ["flux-a"]
    assert digest(runner.run_batch([one(source)])[0]) == never  # disabled: the base model's bytes
    half = digest(runner.run_batch([one(source, [LoraSpec("flux-a", str(a_path), 0.5)])])[0])
    assert half not in (never, styled)
    assert [digest(r) for r in runner.run_batch([one(source, [a]), one(source)], max_batch=2)] == [styled, never]

    # LORA_CACHE_SIZE=1: loading b unloads a (its layers leave the transformer).
    styled_b = digest(runner.run_batch([one(source, [b])])[0])
    assert styled_b not in (never, styled)
    assert lora_params(source, a) == [] and lora_params(source, b)
    assert adapters.loaded(cache.cache_key(source))["loaded"] == ["flux-b"]
    assert digest(runner.run_batch([one(source)])[0]) == never
    assert cache.get_pipeline(source) is pipe  # swapped and unloaded without reloading the pipeline
    assert digest(runner.run_batch([one(source, [a])])[0]) == styled  # loaded again: the same image
