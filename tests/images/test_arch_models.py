"""SD 1.5- and SDXL-architecture configs (tools/arch_configs/) for GPU benchmarks: they
must be the real architectures, so the exact parameter counts of the published models
are checked, and the FLOP count of a denoising step must behave like one. Everything
runs on the meta device: no weights, no memory."""

from __future__ import annotations

import pytest

from tools import arch_models

# Parameter counts of runwayml/stable-diffusion-v1-5 and stabilityai/stable-diffusion-xl-base-1.0.
PUBLISHED = {
    "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840},
}


@pytest.mark.parametrize("name", arch_models.ARCHITECTURES)
def test_architectures_have_the_published_parameter_counts(name):
    pipe = arch_models.arch_pipeline(name, device="meta")
    counts = {part: sum(p.numel() for p in getattr(pipe, part).parameters()) for part in PUBLISHED[name]}
    assert counts == PUBLISHED[name]
    assert type(pipe).__name__ == arch_models.arch_config(name)["pipeline"]


def test_step_flops_scale_with_the_image_and_guidance():
    small = arch_models.step_flops("sd15", width=512, height=512)
    large = arch_models.step_flops("sd15", width=1024, height=1024)
    alone = arch_models.step_flops("sd15", width=512, height=512, guidance=False)
    assert small["unet_parameters"] == PUBLISHED["sd15"]["unet"]
    assert small["flops_per_step"] == 2 * alone["flops_per_step"]  # guidance doubles the UNet's batch
    # 4x the pixels: convolutions scale 4x, self-attention faster than that.
    assert 4 * small["flops_per_step"] < large["flops_per_step"] < 8 * small["flops_per_step"]
    # One SD 1.5 UNet forward at 512x512 is commonly put at about 0.8 TFLOPs (0.4 TMACs).
    assert 0.7e12 < alone["flops_per_step"] < 0.9e12
    xl = arch_models.step_flops("sdxl", width=1024, height=1024)
    assert xl["flops_per_step"] > large["flops_per_step"]
    with pytest.raises(ValueError):
        arch_models.step_flops("sd15", width=500, height=512)
    with pytest.raises(ValueError):
        arch_models.arch_config("sd3")
