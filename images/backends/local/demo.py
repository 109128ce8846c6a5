"""A tiny, randomly initialised Stable Diffusion pipeline built from configs.

The platform's demo model is no longer this one: it is the trained pipeline committed
under images/backends/local/demo_weights (docs/demo-model.md, images/demo_model.py).
This random-weight builder stays for tooling that needs a model of a given shape without
training one (tools/arch_models.py and tools/tiny_families.py reuse its byte-level
tokenizer). Every component is a real diffusers / transformers class, saved in the
standard `save_pretrained` layout (safetensors), so it loads through exactly the same
`from_pretrained` path as a real checkpoint; the images look like coloured noise.

Sizes were chosen for speed on a 2-core CPU (about 1 s for one 1024x1024 image at 4
steps): the UNet (~1.4M parameters) only attends at its lowest resolution, and the VAE
decoder, which dominates the cost at large sizes, has very few channels at full
resolution.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import tempfile

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.utils import logging as transformers_logging

logger = logging.getLogger(__name__)

MARKER_FILE = "platform_demo.json"

# The text encoder's width; the UNet's cross-attention must match it.
_TEXT_HIDDEN = 32
_MAX_TOKENS = 77
_BOS = "<|startoftext|>"
_EOS = "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode character map (256 entries)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def _write_tokenizer_files(folder: pathlib.Path) -> None:
    """Write a byte-level CLIP vocabulary with no merges: every byte is one token.

    CLIP's BPE marks the last symbol of each word with "</w>", so each byte exists in
    both forms. Any text therefore tokenizes without unknown tokens (one token per
    byte), and nothing has to be fetched.
    """
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": len(symbols) + i for i, s in enumerate(symbols)})
    vocab[_BOS] = len(vocab)
    vocab[_EOS] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")


def sd_pipeline(*, vae, text_encoder, tokenizer, unet, prediction_type: str = "epsilon") -> StableDiffusionPipeline:
    """A StableDiffusionPipeline of the demo's parts with its scheduler: Euler with
    "trailing" spacing (it starts at the highest noise level even with very few steps)
    and SD 1.x's scaled-linear betas; no safety checker. `prediction_type` is what the
    UNet predicts ("epsilon", or "v_prediction" as SD 2.x: Salimans & Ho 2022, better
    with few steps). Shared by the random-weight builder here and the trainer
    (tools/demo_model/train.py)."""
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="trailing",
        steps_offset=1,
        prediction_type=prediction_type,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _build_pipeline(tokenizer_dir: pathlib.Path, seed: int) -> StableDiffusionPipeline:
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), model_max_length=_MAX_TOKENS, local_files_only=True)

    # Each component gets its own seed so that changing one config leaves the others'
    # weights unchanged.
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,  # default output 32 * 8 = 256 px
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        block_out_channels=(16, 32, 80),
        layers_per_block=1,
        norm_num_groups=16,
        attention_head_dim=8,
        cross_attention_dim=_TEXT_HIDDEN,
    )

    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,  # 3 downsamples: 8x, like SD
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(4, 8, 16, 32),
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=4,
        sample_size=256,
        mid_block_add_attention=False,
    )

    torch.manual_seed(seed + 2)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=_TEXT_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=_MAX_TOKENS,
        projection_dim=_TEXT_HIDDEN,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    text_encoder = CLIPTextModel(text_config)

    return sd_pipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet)


def _read_marker(path: pathlib.Path) -> dict | None:
    try:
        return json.loads((path / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_complete(path: pathlib.Path, seed: int) -> bool:
    marker = _read_marker(path)
    return bool(marker and marker.get("seed") == seed and (path / "model_index.json").is_file())


def build_demo_model(path: pathlib.Path, *, seed: int = 0) -> None:
    """Build the demo pipeline with weights drawn from `seed` and save it at `path`.

    The build happens in a temporary sibling folder that is renamed into place, so
    `path` either does not exist or holds a complete model. If `path` already holds a
    demo model built with the same seed, nothing is done (also when a concurrent build
    wins the race). Raises FileExistsError if `path` exists with anything else in it.
    Same seed -> byte-identical weights. The global torch RNG state is left untouched.
    """
    path = pathlib.Path(path)
    if _is_complete(path, seed):
        return
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{path} exists and is not a demo model built with seed {seed}")
    path.parent.mkdir(parents=True, exist_ok=True)

    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.building-", dir=path.parent))
    try:
        tokenizer_src = tmp / "_tokenizer_src"
        _write_tokenizer_files(tokenizer_src)
        with torch.random.fork_rng(devices=[]):
            pipe = _build_pipeline(tokenizer_src, seed)
        bars_were_on = transformers_logging.is_progress_bar_enabled()
        transformers_logging.disable_progress_bar()  # no "Writing model shards" bar on stderr
        try:
            pipe.save_pretrained(str(tmp), safe_serialization=True)
        finally:
            if bars_were_on:
                transformers_logging.enable_progress_bar()
        # Keep the hand-written source files next to the generated tokenizer.json, for
        # loaders that read the classic vocab.json/merges.txt pair.
        for name in ("vocab.json", "merges.txt"):
            shutil.copyfile(tokenizer_src / name, tmp / "tokenizer" / name)
        shutil.rmtree(tokenizer_src)
        tmp.chmod(0o755)  # mkdtemp creates 0700; other users (e.g. the worker) must read it
        (tmp / MARKER_FILE).write_text(json.dumps({"demo": True, "seed": seed}) + "\n", encoding="utf-8")
        if path.is_dir():
            path.rmdir()  # empty (checked above); rename cannot replace a directory
        try:
            os.rename(tmp, path)
        except OSError:
            if _is_complete(path, seed):  # another process built it meanwhile
                return
            raise
        logger.info("built demo model (seed %d) at %s", seed, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
