"""ControlNets, depth estimators and IP-Adapters on the local backend (Stability's
control/*): the tiny random tool models `build_tool_models` derives from the demo model
(images/backends/local/tool_builders.py), run exactly as real checkpoints are.

What must hold: the control image changes the picture (same seed, other edges: other
pixels), control scale 0 is the plain generation to the bit, an IP-Adapter's reference
changes the picture, and no other request ever sees an IP-Adapter (a plain generation
after a style call is bit-identical to one before)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from images.backends.base import ControlSpec, GenerationTask, IPAdapterSpec, PipelineError, PipelineSource, ToolTask
from images.backends.local import cache, runner, tools
from images.backends.local.batcher import batch_key
from images.backends.local.tool_builders import build_tool_model

SIZE = 64


@pytest.fixture(scope="module")
def control_models(model_dir, tmp_path_factory) -> dict[str, PipelineSource]:
    """The control tool models, derived from this module's copy of the demo model."""
    out = tmp_path_factory.mktemp("control")
    built = {}
    for name, kind, seed in (
        ("canny", "controlnet", 4),
        ("depth_cn", "controlnet", 5),
        ("dpt", "depth_estimator", 6),
        ("ip", "ip_adapter", 7),
    ):
        base = Path(model_dir) if kind in ("controlnet", "ip_adapter") else None
        build_tool_model(out / name, kind=kind, seed=seed, base=base)
        built[name] = PipelineSource(str(out / name))
    return built


def digest(image: Image.Image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


def edges(shape: str) -> Image.Image:
    """White outlines on black, as the canny preprocessor makes."""
    image = Image.new("RGB", (SIZE, SIZE))
    draw = ImageDraw.Draw(image)
    if shape == "square":
        draw.rectangle((8, 8, 40, 40), outline="white", width=2)
    else:
        draw.ellipse((16, 16, 56, 56), outline="white", width=2)
    return image


def task(source, *, control=None, ip_adapter=None, seed=3) -> GenerationTask:
    return GenerationTask(
        source=source,
        prompt="a red circle on a blue background",
        negative_prompt=None,
        width=SIZE,
        height=SIZE,
        steps=3,
        guidance=5.0,
        seeds=[seed],
        control=control,
        ip_adapter=ip_adapter,
    )


def one(t: GenerationTask) -> Image.Image:
    result = runner.run_batch([t])[0]
    assert result.images[0].size == (SIZE, SIZE)
    return result.images[0]


def test_the_control_image_changes_the_picture_and_scale_0_is_the_plain_one(source, control_models):
    canny = control_models["canny"]
    plain = one(task(source))
    square = one(task(source, control=ControlSpec(canny, edges("square"), 1.0)))
    circle = one(task(source, control=ControlSpec(canny, edges("circle"), 1.0)))
    assert digest(square) != digest(circle)  # same seed, other edges: other pixels
    assert digest(square) != digest(plain)
    # Scale 0: the ControlNet's residuals are multiplied by 0: the plain generation.
    assert digest(one(task(source, control=ControlSpec(canny, edges("square"), 0.0)))) == digest(plain)
    # The ControlNet pipeline is derived once per lane, over the base's modules.
    base = cache.get_pipeline(source)
    derived = cache.get_pipeline(source, control=canny)
    assert derived is cache.get_pipeline(source, control=canny)
    assert derived.unet is base.unet and derived.vae is base.vae
    # A control task never shares a call with others.
    assert batch_key(task(source, control=ControlSpec(canny, edges("square"), 1.0))) is None
    # And a plain generation afterwards is still the plain one.
    assert digest(one(task(source))) == digest(plain)


def test_a_control_image_of_another_size_is_refused(source, control_models):
    wrong = ControlSpec(control_models["canny"], Image.new("RGB", (32, 48)), 1.0)
    with pytest.raises(PipelineError, match="exactly 64x64"):
        runner.run_batch([task(source, control=wrong)])


def test_the_depth_estimator_makes_an_l_map_of_the_inputs_size(control_models):
    image = Image.new("RGB", (80, 48), (30, 60, 90))
    ImageDraw.Draw(image).rectangle((10, 10, 40, 30), fill=(250, 200, 10))
    result = tools.batcher.run(ToolTask(source=control_models["dpt"], kind="depth", image=image))
    assert result.image.mode == "L" and result.image.size == (80, 48)
    low, high = result.image.getextrema()
    assert low == 0 and high == 255  # normalised per image


def test_an_ip_adapter_changes_the_picture_and_leaves_nothing_behind(source, control_models):
    cache.clear_cache()  # a model that never saw an IP-Adapter
    before = digest(one(task(source)))
    red = Image.new("RGB", (40, 40), (220, 20, 20))
    green = Image.new("RGB", (40, 40), (20, 200, 40))
    with_red = one(task(source, ip_adapter=IPAdapterSpec(control_models["ip"], red, 0.8)))
    with_green = one(task(source, ip_adapter=IPAdapterSpec(control_models["ip"], green, 0.8)))
    assert digest(with_red) != digest(with_green) and digest(with_red) != before
    # Unloaded after the call: the shared UNet is the base model's again, to the bit.
    assert digest(one(task(source))) == before
    pipe = cache.get_pipeline(source)
    assert pipe.image_encoder is None and pipe.unet.encoder_hid_proj is None
    assert {type(p).__name__ for p in pipe.unet.attn_processors.values()} == {"AttnProcessor2_0"}
    # The cached adapter is reused (same reference, same bytes).
    again = one(task(source, ip_adapter=IPAdapterSpec(control_models["ip"], red, 0.8)))
    assert digest(again) == digest(with_red)
    assert batch_key(task(source, ip_adapter=IPAdapterSpec(control_models["ip"], red, 0.8))) is None


def test_the_folder_check_knows_the_control_kinds(control_models, model_dir):
    from images.tool_models import tool_folder_check

    assert tool_folder_check(kind="controlnet", source=control_models["canny"].source)
    assert tool_folder_check(kind="depth_estimator", source=control_models["dpt"].source)
    assert tool_folder_check(kind="ip_adapter", source=control_models["ip"].source)
    with pytest.raises(ValueError, match="ip-adapter.safetensors"):
        tool_folder_check(kind="ip_adapter", source=control_models["canny"].source)
    with pytest.raises(ValueError, match="diffusion_pytorch_model"):
        tool_folder_check(kind="controlnet", source=control_models["dpt"].source)


def test_control_models_follow_the_generators_configuration(control_models, model_dir):
    """Derived from the generator folder: a changed UNet config rebuilds them."""
    import json

    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_pretrained(control_models["canny"].source)
    unet = json.loads((Path(model_dir) / "unet" / "config.json").read_text())
    assert controlnet.config.in_channels == unet["in_channels"]
    assert list(controlnet.config.block_out_channels) == unet["block_out_channels"]
    assert controlnet.config.cross_attention_dim == unet["cross_attention_dim"]
    marker = json.loads((Path(control_models["canny"].source) / "platform_tool.json").read_text())
    assert marker["base"]  # the base configs' fingerprint
    assert not build_tool_model(Path(control_models["canny"].source), kind="controlnet", seed=4, base=Path(model_dir))


def test_plain_calls_beside_style_calls_on_other_lanes_never_see_the_adapter(source, control_models, pipeline_config):
    """Several threads on two lanes, style and plain tasks interleaved: every plain image
    is the plain one and every style image the style one (the exclusive gate)."""
    import threading

    from images.backends.local import lanes

    pipeline_config(lanes=2)
    red = Image.new("RGB", (40, 40), (220, 20, 20))
    plain_task = lambda: task(source)  # noqa: E731
    style_task = lambda: task(source, ip_adapter=IPAdapterSpec(control_models["ip"], red, 0.8))  # noqa: E731
    expected = {
        "plain": digest(lanes.gpu_call(runner.run_batch, [plain_task()])[0].images[0]),
        "style": digest(lanes.gpu_call(runner.run_batch, [style_task()])[0].images[0]),
    }
    assert expected["plain"] != expected["style"]
    kinds = ["plain", "style"] * 3
    got: list[str | None] = [None] * len(kinds)

    def run(i: int) -> None:
        made = plain_task() if kinds[i] == "plain" else style_task()
        got[i] = digest(lanes.gpu_call(runner.run_batch, [made])[0].images[0])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(kinds))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert got == [expected[k] for k in kinds]
