"""Tiny, randomly initialised tool models (issue 26 item 1), built from code at `make
setup` (`manage.py build_tool_models`), as images/backends/local/demo.py builds a
random-weight pipeline: every endpoint that needs a tool model runs on a fresh clone.

Each one is a real architecture of the kind an operator downloads (docs/models.md), in
its standard layout, loaded by exactly the same code as a real checkpoint
(images/backends/local/tools.py):

- upscaler: an ESRGAN (RRDB) network, x4, as a `.safetensors` state dict that spandrel
  recognises like RealESRGAN_x4plus.pth;
- background_remover: a SegFormer semantic-segmentation model with two labels
  (background, foreground) and its image processor;
- segmenter: CLIPSeg (CLIPSegForImageSegmentation) with a CLIPSegProcessor (a byte-level
  CLIP tokenizer written here, and a ViT image processor);
- captioner: a VisionEncoderDecoder (ViT encoder, GPT-2 decoder) with a word-level
  tokenizer over a small English vocabulary, so its (random) captions are words.

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


def _upscaler(folder: pathlib.Path, seed: int) -> None:
    from safetensors.torch import save_file

    from images.backends.local.tools import spandrel_import

    esrgan = spandrel_import().architectures.ESRGAN.ESRGAN
    torch.manual_seed(seed)
    model = esrgan(num_filters=8, num_blocks=1, scale=4)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))


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
        CLIPTokenizer,
        ViTImageProcessor,
    )

    from images.backends.local.demo import _write_tokenizer_files

    vocab_dir = folder / "_vocab"
    _write_tokenizer_files(vocab_dir)
    tokenizer = CLIPTokenizer(str(vocab_dir / "vocab.json"), str(vocab_dir / "merges.txt"), model_max_length=77)
    shutil.rmtree(vocab_dir)
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


BUILDERS: dict[str, Callable[[pathlib.Path, int], None]] = {
    "upscaler": _upscaler,
    "background_remover": _background_remover,
    "segmenter": _segmenter,
    "captioner": _captioner,
}


def _is_complete(path: pathlib.Path, kind: str, seed: int) -> bool:
    try:
        marker = json.loads((path / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return marker == {"kind": kind, "seed": seed, "version": VERSION}


def build_tool_model(path: pathlib.Path, *, kind: str, seed: int = 0) -> bool:
    """Build the tiny `kind` model (a key of BUILDERS) at `path`; True when built, False
    when a complete one built with the same seed is already there. Built in a temporary
    sibling folder renamed into place, so `path` holds nothing or a whole model. Raises
    FileExistsError when `path` holds anything else (an operator's folder is never
    replaced), KeyError for an unknown kind. The global torch RNG is left untouched."""
    builder = BUILDERS[kind]
    path = pathlib.Path(path)
    if _is_complete(path, kind, seed):
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
        (tmp / MARKER_FILE).write_text(json.dumps({"kind": kind, "seed": seed, "version": VERSION}) + "\n")
        tmp.chmod(0o755)
        try:
            os.rename(tmp, path)
        except OSError:
            if _is_complete(path, kind, seed):  # a concurrent build won the race
                return False
            raise
        return True
    finally:
        if bars_were_on:
            transformers_logging.enable_progress_bar()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
