"""Tiny, randomly initialised tool models (issue 26 item 1), built from code at `make
setup` (`manage.py build_tool_models`), as images/backends/local/demo.py builds a
random-weight pipeline: every endpoint that needs a tool model runs on a fresh clone.

Each one is a real architecture of the kind an operator downloads (docs/models.md), in
its standard layout, loaded by exactly the same code as a real checkpoint
(images/backends/local/tools.py):

- upscaler: an ESRGAN (RRDB) network, x4, as a `.safetensors` state dict that spandrel
  recognises like RealESRGAN_x4plus.pth; and (`sd_upscaler`) a diffusers
  StableDiffusionUpscalePipeline folder like stabilityai/stable-diffusion-x4-upscaler,
  whose prompt steers the result (Stability's upscale/creative and conservative);
- background_remover: a SegFormer semantic-segmentation model with two labels
  (background, foreground) and its image processor;
- segmenter: CLIPSeg (CLIPSegForImageSegmentation) with a CLIPSegProcessor (a byte-level
  CLIP tokenizer written here, and a ViT image processor);
- captioner: a VisionEncoderDecoder (ViT encoder, GPT-2 decoder) with a word-level
  tokenizer over a small English vocabulary, so its (random) captions are words;
- depth_estimator: a DPT (DPTForDepthEstimation) with its image processor;
- controlnet and ip_adapter (BASE_BUILDERS): derived from a generator folder (the demo
  model's), see "control tool models" below.

Outputs of random weights mean nothing (the upscaler's image is dark, the captions are
word salad) but have the exact shapes of real ones. Imported only by the management
command `build_tool_models` (torch, transformers, spandrel), which says where each goes
(images/tool_models.py SEEDED_TOOLS); the worker never imports it.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import torch
from transformers.utils import logging as transformers_logging

MARKER_FILE = "platform_tool.json"
# The builder's version: a folder built by an older one is rebuilt.
VERSION = 2

_WORDS = (
    "a an the of in on with and at near by under over photo picture painting drawing portrait "
    "landscape close-up view cat dog bird horse car house tree flower mountain river sea sky city street "
    "room table chair woman man child people red blue green yellow white black golden bright dark soft "
    "small large old young sunny cloudy night morning evening snow rain light shadow colorful detailed"
).split()


def _clip_tokenizer(folder: pathlib.Path) -> Any:
    """A CLIP byte-level BPE tokenizer (77 tokens) over the demo model's vocabulary files,
    written in a scratch folder under `folder` and removed again: nothing is fetched."""
    from transformers import CLIPTokenizer

    from images.backends.local.demo import _write_tokenizer_files

    vocab_dir = folder / "_vocab"
    _write_tokenizer_files(vocab_dir)
    tokenizer = CLIPTokenizer(str(vocab_dir / "vocab.json"), str(vocab_dir / "merges.txt"), model_max_length=77)
    shutil.rmtree(vocab_dir)
    return tokenizer


def _upscaler(folder: pathlib.Path, seed: int) -> None:
    from safetensors.torch import save_file

    from images.backends.local.tools import spandrel_import

    esrgan = spandrel_import().architectures.ESRGAN.ESRGAN
    torch.manual_seed(seed)
    model = esrgan(num_filters=8, num_blocks=1, scale=4)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))


def _sd_upscaler(folder: pathlib.Path, seed: int) -> None:
    """A tiny StableDiffusionUpscalePipeline (the layout of
    stabilityai/stable-diffusion-x4-upscaler: model_index.json, unet/, vae/, text_encoder/,
    tokenizer/, scheduler/, low_res_scheduler/), from the configs diffusers' own tests use
    for this pipeline (tests/pipelines/stable_diffusion_2/test_stable_diffusion_upscale.py,
    `dummy_cond_unet_upscale`, `dummy_vae`, `dummy_text_encoder`): a UNet2DConditionModel
    of 7 input channels (4 latent + the 3 of the noised low-resolution image) with 1000
    class embeddings for the noise level (the real checkpoint's count; the tests' 100
    would not reach max_noise_level), an AutoencoderKL of three blocks (so the
    output is 2**2 = 4 times the input) with the checkpoint's scaling_factor 0.08333, a
    CLIP text model over the byte-level tokenizer the demo model uses (its vocabulary is
    written here: nothing is fetched), DDPMScheduler as low_res_scheduler, DDIMScheduler
    (v_prediction) as scheduler, max_noise_level 350. No safety checker, no watermarker."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableDiffusionUpscalePipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _clip_tokenizer(folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=7,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        use_linear_projection=True,
        only_cross_attention=(True, True, False),
        # (the tests' 100 class embeddings cover noise levels below 100 only: 1000, as the
        # real checkpoint's UNet, so that every level up to max_noise_level has one)
        num_class_embeds=1000,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[32, 32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
        latent_channels=4,
        scaling_factor=0.08333,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=5,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            hidden_act="gelu",
            projection_dim=512,
        )
    )
    pipe = StableDiffusionUpscalePipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        low_res_scheduler=DDPMScheduler(),
        scheduler=DDIMScheduler(prediction_type="v_prediction"),
        max_noise_level=350,
    )
    pipe.save_pretrained(str(folder), safe_serialization=True)


def _background_remover(folder: pathlib.Path, seed: int) -> None:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(seed)
    config = SegformerConfig(
        num_channels=3,
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 2],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
        num_labels=2,
        id2label={0: "background", 1: "foreground"},
        label2id={"background": 0, "foreground": 1},
    )
    SegformerForSemanticSegmentation(config).save_pretrained(str(folder), safe_serialization=True)
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(str(folder))


def _segmenter(folder: pathlib.Path, seed: int) -> None:
    from transformers import (
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
        CLIPSegProcessor,
        ViTImageProcessor,
    )

    tokenizer = _clip_tokenizer(folder)
    torch.manual_seed(seed)
    config = CLIPSegConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 64,
            "patch_size": 16,
        },
        projection_dim=16,
        extract_layers=[0, 1],
        reduce_dim=8,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=16,
    )
    CLIPSegForImageSegmentation(config).save_pretrained(str(folder), safe_serialization=True)
    image_processor = ViTImageProcessor(
        size={"height": 64, "width": 64},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    CLIPSegProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(str(folder))


def _captioner(folder: pathlib.Path, seed: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        PreTrainedTokenizerFast,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
        ViTModel,
    )

    specials = ["<pad>", "<unk>", "<bos>", "<eos>"]
    vocab = {token: i for i, token in enumerate([*specials, *dict.fromkeys(_WORDS)])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>"
    )
    torch.manual_seed(seed)
    encoder = ViTModel(
        ViTConfig(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            image_size=32,
            patch_size=8,
        )
    )
    decoder = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(vocab),
            n_positions=64,
            n_embd=16,
            n_layer=1,
            n_head=2,
            add_cross_attention=True,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    model = VisionEncoderDecoderModel(encoder=encoder, decoder=decoder)
    model.config.decoder_start_token_id = tokenizer.bos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.decoder_start_token_id = tokenizer.bos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.max_new_tokens = 12
    # Random weights: never the special tokens a caption drops, and a few words at least.
    model.generation_config.min_new_tokens = 4
    model.generation_config.suppress_tokens = [tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.bos_token_id]
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(str(folder))


# ---- control tool models (Stability's control/*: images/control.py) ------------------------
#
# The ControlNets and the IP-Adapter must fit the generator they run with: they are
# derived from the installed demo model's folder (its UNet's blocks, channels and
# cross-attention width; its VAE's downsampling), never from numbers written here, so a
# retrained demo model with another configuration gets matching ones on the next build
# (the marker records a fingerprint of those configs: a change rebuilds them).

# Standard deviations of the seeded values a tiny ControlNet gets (measured on the demo
# model: two edge maps give pictures about 9/255 apart on average, a black control image
# about 1/255 from the plain generation). A trained ControlNet starts its zero
# convolutions at zero and learns them; left at zero, a random one would add nothing.
CONTROLNET_ZERO_CONV_STD = 0.02  # controlnet_down_blocks, controlnet_mid_block
CONTROLNET_COND_OUT_STD = 0.1  # controlnet_cond_embedding.conv_out
# The conditioning embedding's other convolutions: PyTorch's default init shrinks an
# edge map to almost nothing over four layers, so they are drawn wider.
CONTROLNET_COND_STD = 0.2


def base_fingerprint(base: pathlib.Path) -> str:
    """A short hash of the generator folder's UNet and VAE configs (what the control
    models are derived from); "" when they cannot be read."""
    import hashlib

    digest = hashlib.sha256()
    try:
        for part in ("unet", "vae"):
            digest.update((base / part / "config.json").read_bytes())
    except OSError:
        return ""
    return digest.hexdigest()[:16]


def _controlnet(folder: pathlib.Path, seed: int, base: pathlib.Path) -> None:
    """A ControlNetModel made with `ControlNetModel.from_unet` from the generator's UNet
    (its encoder weights copied, as ControlNet training starts), whose zero-initialised
    convolutions (controlnet_cond_embedding.conv_out, controlnet_down_blocks,
    controlnet_mid_block) get small seeded random values, and its conditioning
    embedding wider ones (the CONTROLNET_* constants), so that the control image really
    changes the output (random weights: *how* it changes it means nothing). The conditioning embedding
    downsamples by the VAE's factor (one stride-2 convolution per VAE down block after
    the first), so a control image of the generator's pixel size lands on its latents."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(base), subfolder="unet")
    vae_config = AutoencoderKL.load_config(str(base), subfolder="vae")
    downsamplings = len(vae_config["block_out_channels"]) - 1
    channels = tuple(16 * 2**i for i in range(downsamplings + 1))
    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=channels)
    embedding = controlnet.controlnet_cond_embedding
    with torch.no_grad():
        for conv in (embedding.conv_in, *embedding.blocks):
            conv.weight.normal_(0.0, CONTROLNET_COND_STD)
            conv.bias.zero_()
        embedding.conv_out.weight.normal_(0.0, CONTROLNET_COND_OUT_STD)
        embedding.conv_out.bias.normal_(0.0, 0.01)
        for conv in (*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block):
            conv.weight.normal_(0.0, CONTROLNET_ZERO_CONV_STD)
            conv.bias.normal_(0.0, CONTROLNET_ZERO_CONV_STD)
    controlnet.save_pretrained(str(folder), safe_serialization=True)


def _depth_estimator(folder: pathlib.Path, seed: int) -> None:
    """A tiny DPT (DPTForDepthEstimation, the architecture of Intel/dpt-hybrid-midas)
    with its DPTImageProcessor at 32x32: random weights, real shapes."""
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(seed)
    config = DPTConfig(
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=32,
        patch_size=8,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 8, 16, 16],
        fusion_hidden_size=16,
        head_in_index=-1,
    )
    DPTForDepthEstimation(config).save_pretrained(str(folder), safe_serialization=True)
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False, ensure_multiple_of=8).save_pretrained(
        str(folder)
    )


IP_ADAPTER_WEIGHTS = "ip-adapter.safetensors"
IP_ADAPTER_TOKENS = 4  # image tokens of the projection (h94/IP-Adapter's ip-adapter_sd15: 4)


def _ip_adapter(folder: pathlib.Path, seed: int, base: pathlib.Path) -> None:
    """An IP-Adapter for the generator, in h94/IP-Adapter's layout: `image_encoder/` (a
    tiny CLIPVisionModelWithProjection) and `ip-adapter.safetensors` with `image_proj.*`
    (an ImageProjection: proj + norm, IP_ADAPTER_TOKENS tokens of the UNet's
    cross-attention width, random) and `ip_adapter.<n>.to_{k,v}_ip.weight` for each
    cross-attention layer of the UNet, numbered 1, 3, 5... in `attn_processors` order, as
    diffusers' own tests build one (`create_ip_adapter_state_dict`: the layer's to_k /
    to_v weights copied, so image tokens are read like text tokens)."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.embeddings import ImageProjection
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    unet = UNet2DConditionModel.from_pretrained(str(base), subfolder="unet")
    cross = unet.config.cross_attention_dim
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=16,
    )
    encoder = CLIPVisionModelWithProjection(vision)
    encoder.save_pretrained(str(folder / "image_encoder"), safe_serialization=True)
    CLIPImageProcessor(size=32, crop_size=32).save_pretrained(str(folder / "image_encoder"))
    projection = ImageProjection(
        cross_attention_dim=cross, image_embed_dim=vision.projection_dim, num_image_text_embeds=IP_ADAPTER_TOKENS
    )
    weights: dict[str, torch.Tensor] = {
        "image_proj.proj.weight": projection.image_embeds.weight,
        "image_proj.proj.bias": projection.image_embeds.bias,
        "image_proj.norm.weight": projection.norm.weight,
        "image_proj.norm.bias": projection.norm.bias,
    }
    unet_weights = unet.state_dict()
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue  # self-attention: no image tokens
        layer = name.removesuffix(".processor")
        weights[f"ip_adapter.{key_id}.to_k_ip.weight"] = unet_weights[f"{layer}.to_k.weight"]
        weights[f"ip_adapter.{key_id}.to_v_ip.weight"] = unet_weights[f"{layer}.to_v.weight"]
        key_id += 2
    save_file({k: v.detach().contiguous().clone() for k, v in weights.items()}, str(folder / IP_ADAPTER_WEIGHTS))


BUILDERS: dict[str, Callable[[pathlib.Path, int], None]] = {
    "upscaler": _upscaler,
    "sd_upscaler": _sd_upscaler,  # (an upscaler too: images/tool_models.py SEEDED_BUILDERS)
    "background_remover": _background_remover,
    "segmenter": _segmenter,
    "captioner": _captioner,
    "depth_estimator": _depth_estimator,
}
# Builders derived from a generator folder (`base` of build_tool_model).
BASE_BUILDERS: dict[str, Callable[[pathlib.Path, int, pathlib.Path], None]] = {
    "controlnet": _controlnet,
    "ip_adapter": _ip_adapter,
}


def _marker(kind: str, seed: int, base: pathlib.Path | None) -> dict:
    marker = {"kind": kind, "seed": seed, "version": VERSION}
    if base is not None:
        marker["base"] = base_fingerprint(base)
    return marker


def _is_complete(path: pathlib.Path, kind: str, seed: int, base: pathlib.Path | None = None) -> bool:
    try:
        marker = json.loads((path / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return marker == _marker(kind, seed, base)


def build_tool_model(path: pathlib.Path, *, kind: str, seed: int = 0, base: pathlib.Path | None = None) -> bool:
    """Build the tiny `kind` model (a key of BUILDERS, or of BASE_BUILDERS with `base`,
    the generator folder it is derived from) at `path`; True when built, False when a
    complete one built with the same seed (and the same base configs) is already there.
    Built in a temporary sibling folder renamed into place, so `path` holds nothing or a
    whole model. Raises FileExistsError when `path` holds anything else (an operator's
    folder is never replaced), KeyError for an unknown kind, ValueError for a
    BASE_BUILDERS kind without a `base` folder. The global torch RNG is left untouched."""
    if kind in BASE_BUILDERS:
        if base is None or not (pathlib.Path(base) / "unet" / "config.json").is_file():
            raise ValueError(f"a {kind} is derived from a generator folder with a unet/ (got {base})")
        base = pathlib.Path(base)
        derived = BASE_BUILDERS[kind]

        def builder(folder: pathlib.Path, seed: int) -> None:
            derived(folder, seed, base)
    else:
        builder = BUILDERS[kind]
        base = None
    path = pathlib.Path(path)
    if _is_complete(path, kind, seed, base):
        return False
    if path.exists():
        if path.is_dir() and (path / MARKER_FILE).is_file():
            shutil.rmtree(path)  # (an older build of ours)
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        else:
            raise FileExistsError(f"{path} exists and is not a tool model built by this command")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.building-", dir=path.parent))
    bars_were_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        with torch.random.fork_rng(devices=[]):
            builder(tmp, seed)
        (tmp / MARKER_FILE).write_text(json.dumps(_marker(kind, seed, base)) + "\n")
        tmp.chmod(0o755)
        try:
            os.rename(tmp, path)
        except OSError:
            if _is_complete(path, kind, seed, base):  # a concurrent build won the race
                return False
            raise
        return True
    finally:
        if bars_were_on:
            transformers_logging.enable_progress_bar()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
