"""Train the demo model from scratch on generated scenes and save it as a diffusers folder.

    OMP_NUM_THREADS=2 .venv/bin/python -m tools.demo_model.train --out images/backends/local/demo_weights

(the defaults are the committed weights' recipe; docs/demo-model.md has its time on
this 2-core CPU).
Everything is seeded (dataset, initial weights, noise, batches): the same command on the
same torch build gives the same weights. Stages, with the time of each printed:

1. a small AutoencoderKL (32x32 RGB <-> 8x8x4 latents) trained as an autoencoder
   (L1 + MSE reconstruction, a tiny KL term), then its latent scaling factor measured;
   (or, with --vae-from FOLDER, that folder's trained VAE, fine-tuned --vae-steps more);
   the whole dataset is then encoded once (latents cached, prompts tokenized once), and
   the judge's accuracy on the VAE's reconstructions printed (the UNet's ceiling);
2. a small UNet2DConditionModel and a small CLIPTextModel trained together on the cached
   latents (v-prediction with --prediction v_prediction, as SD 2.x, else epsilon, on
   Stable Diffusion's noise schedule; half of each batch near the 4 served timesteps),
   the prompt dropped (replaced by "") 10 % of the time for classifier-free guidance;
   AdamW, warmup + cosine LR, EMA of the weights saved.

Latents keep 4 channels: diffusers' StableDiffusionInpaintPipeline takes a UNet of 4 (or
9) input channels only, and the edits run through it.

The tokenizer is CLIP's byte-level BPE with merges learnt here on the vocabulary, so each
vocabulary word is one token and any other text still tokenizes (byte by byte). The
result is a standard `StableDiffusionPipeline` folder (safetensors) plus
`platform_model.json`, which tells the serving code to draw at 32x32 and resize
(images/backends/local/native.py). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import shutil
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from images.backends.local.demo import bytes_to_unicode, sd_pipeline
from tools.demo_model.dataset import COLOURS, SHAPES, batch

NATIVE = 32  # pixels per side the model draws at
TEXT_HIDDEN = 64
MAX_TOKENS = 77
WORDS = (*COLOURS, *SHAPES, "background", "on", "the", "an", "of")
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
NATIVE_FILE = "platform_model.json"


def _learn_merges(words: tuple[str, ...]) -> list[tuple[str, str]]:
    """BPE merges learnt on `words` until each is one symbol (ties broken by name, so
    the list is deterministic). Replaying them (what CLIPTokenizer does) turns each of
    these words into one token."""
    split = [tuple(w[:-1]) + (w[-1] + "</w>",) for w in words]
    merges: list[tuple[str, str]] = []
    while any(len(s) > 1 for s in split):
        counts: dict[tuple[str, str], int] = {}
        for s in split:
            for pair in zip(s, s[1:], strict=False):
                counts[pair] = counts.get(pair, 0) + 1
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        merged = []
        for s in split:
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            merged.append(tuple(out))
        split = merged
    return merges


def write_tokenizer_files(folder: pathlib.Path) -> None:
    """vocab.json + merges.txt: every byte (both forms) plus each merge's result."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": len(symbols) + i for i, s in enumerate(symbols)})
    merges = _learn_merges(WORDS)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def build(
    tokenizer_dir: pathlib.Path,
    seed: int,
    latent_channels: int = 4,
    prediction_type: str = "epsilon",
    vae_channels: tuple[int, ...] = (16, 32, 32),
) -> StableDiffusionPipeline:
    """The untrained pipeline (seeded initial weights); `latent_channels` per 8x8 latent
    pixel (4: diffusers' inpainting pipeline takes only 4 or 9 UNet input channels);
    `prediction_type` the UNet's target ("epsilon" or "v_prediction"); `vae_channels`
    the VAE's three block widths."""
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), model_max_length=MAX_TOKENS, local_files_only=True)
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,  # 4x: 32x32 px <-> 8x8 latents
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=vae_channels,
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=latent_channels,
        sample_size=NATIVE,
        mid_block_add_attention=False,
    )
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        sample_size=NATIVE // 4,
        in_channels=latent_channels,
        out_channels=latent_channels,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        norm_num_groups=16,
        attention_head_dim=8,
        cross_attention_dim=TEXT_HIDDEN,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_HIDDEN,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=MAX_TOKENS,
            projection_dim=TEXT_HIDDEN,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    return sd_pipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, prediction_type=prediction_type
    )


def _to_tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def train_vae(vae: AutoencoderKL, images: torch.Tensor, *, steps: int, batch_size: int, seed: int, lr: float) -> None:
    """Train the VAE as an autoencoder (L1 + MSE, a tiny KL term), OneCycle LR peaking at `lr`."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    vae.train()
    start = time.time()
    for step in range(steps):
        idx = torch.randint(0, len(images), (batch_size,), generator=gen)
        x = images[idx]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        kl = posterior.kl().mean() / (3 * NATIVE * NATIVE)
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"vae step {step} loss {loss.item():.4f} ({time.time() - start:.0f}s)", flush=True)
    vae.eval()


def _report_reconstructions(vae: AutoencoderKL, images: torch.Tensor, prompts, n: int, seed: int) -> None:
    """Print how often the judge (tools/demo_model/judge.py) reads the right figure colour
    and shape off the VAE's reconstructions of `images` (the first scenes of the
    dataset), upscaled to 256x256 as served: the ceiling of what the UNet can reach."""
    from PIL import Image

    from tools.demo_model.judge import judge

    scenes = batch(n, seed, 4)[2][: len(images)]  # the same scene draw, tiny pixels
    with torch.no_grad():
        recon = vae.decode(vae.encode(images).latent_dist.mean).sample
    pixels = ((recon.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    colour = shape = 0
    for rgb, scene in zip(pixels, scenes, strict=True):
        verdict = judge(Image.fromarray(rgb).resize((256, 256), Image.Resampling.BICUBIC))
        colour += verdict.colour == scene.colour
        shape += verdict.shape == scene.shape
    print(f"vae reconstructions judged: colour {colour}/{len(images)}, shape {shape}/{len(images)}", flush=True)


def _lr_lambda(warmup: int, steps: int):
    """Linear warmup over `warmup` steps, then cosine decay to 5 % of the peak."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


SERVED_TIMESTEPS = torch.tensor([999, 749, 499, 249])  # 4 Euler steps, trailing spacing (the seeded default)


def train_unet(
    pipe, latents, prompts, *, steps: int, batch_size: int, seed: int, lr: float, ema_decay: float, snapshot=None
) -> None:
    """Train the UNet and the text encoder together on cached (latent, prompt) pairs.

    `latents` [n, 4, 8, 8] are the VAE's scaled latents, computed once (the VAE never
    runs here); prompts are tokenized once. Epsilon prediction on Stable Diffusion's
    scaled-linear schedule; the prompt is replaced by "" 10 % of the time (classifier-free
    guidance). AdamW, linear warmup then cosine decay; the saved weights are an
    exponential moving average (`ema_decay`) of both models' weights. Half of each batch
    draws its timestep uniformly, the other half near one of the four the served setting
    (4 Euler steps, trailing) evaluates (+-16), so short runs learn what is served first.
    `snapshot(step)`, if given, is called half-way with the EMA weights loaded."""
    gen = torch.Generator().manual_seed(seed)
    unet, text_encoder, tokenizer = pipe.unet, pipe.text_encoder, pipe.tokenizer
    ids = tokenizer(
        prompts, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt"
    ).input_ids
    empty = tokenizer([""], padding="max_length", max_length=MAX_TOKENS, return_tensors="pt").input_ids[0]
    params = [*unet.parameters(), *text_encoder.parameters()]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(min(200, steps // 10 + 1), steps))
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0).float()
    unet.train()
    text_encoder.train()
    start = time.time()
    running = None
    for step in range(steps):
        idx = torch.randint(0, len(latents), (batch_size,), generator=gen)
        x0 = latents[idx]
        tokens = ids[idx].clone()
        tokens[torch.rand(batch_size, generator=gen) < 0.1] = empty  # classifier-free guidance
        t = torch.randint(0, 1000, (batch_size,), generator=gen)
        near = SERVED_TIMESTEPS[torch.randint(0, 4, (batch_size // 2,), generator=gen)]
        t[: batch_size // 2] = (near + torch.randint(-16, 17, near.shape, generator=gen)).clamp(0, 999)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        cond = text_encoder(tokens)[0]
        pred = unet(xt, t, encoder_hidden_states=cond).sample
        if pipe.scheduler.config.prediction_type == "v_prediction":  # v = sqrt(a) eps - sqrt(1 - a) x0
            target = a.sqrt() * noise - (1 - a).sqrt() * x0
        else:
            target = noise
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            print(
                f"unet step {step} loss {loss.item():.4f} avg {running:.4f} "
                f"lr {sched.get_last_lr()[0]:.2e} ({time.time() - start:.0f}s)",
                flush=True,
            )
        if snapshot is not None and step == steps // 2:
            with torch.no_grad():
                backup = [p.detach().clone() for p in params]
                for p, e in zip(params, ema, strict=True):
                    p.copy_(e)
                snapshot(step)
                for p, b in zip(params, backup, strict=True):
                    p.copy_(b)
    with torch.no_grad():
        for p, e in zip(params, ema, strict=True):
            p.copy_(e)
    unet.eval()
    text_encoder.eval()


def _save(pipe, work: pathlib.Path, dest: pathlib.Path, record: dict) -> None:
    """save_pretrained (safetensors) + tokenizer files + platform_model.json into `dest`
    (replaced), files 0644."""
    out = work / "model"
    if out.exists():
        shutil.rmtree(out)
    pipe.save_pretrained(str(out), safe_serialization=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(work / "tok" / name, out / "tokenizer" / name)
    info = {"native_size": NATIVE, "resize": "letterbox", "trained_by": "tools/demo_model/train.py", **record}
    (out / NATIVE_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(out, dest)
    for file in dest.rglob("*"):  # safetensors are written 0600; workers may be other users
        file.chmod(0o755 if file.is_dir() else 0o644)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=24000)
    parser.add_argument("--vae-steps", type=int, default=3000)
    parser.add_argument("--vae-batch", type=int, default=32)
    parser.add_argument("--vae-lr", type=float, default=2e-3)
    parser.add_argument("--unet-steps", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of the UNet stage")
    parser.add_argument("--ema", type=float, default=0.999, help="EMA decay of the UNet stage's saved weights")
    parser.add_argument(
        "--vae-from",
        type=pathlib.Path,
        default=None,
        help="start from this pipeline folder's trained VAE (then --vae-steps more; 0: reuse as is)",
    )
    parser.add_argument("--mid", type=pathlib.Path, default=None, help="also save the half-way EMA weights here")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--latent-channels", type=int, default=4)
    parser.add_argument("--prediction", choices=("epsilon", "v_prediction"), default="v_prediction")
    parser.add_argument("--vae-channels", default="32,64,64", help="the VAE's three block widths")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    began = time.time()

    pixels, prompts, _ = batch(args.images, args.seed, NATIVE)
    images = _to_tensor(pixels)
    print(f"dataset: {len(prompts)} scenes ({time.time() - began:.0f}s)", flush=True)

    work = pathlib.Path(tempfile.mkdtemp(prefix="demo-train-"))
    try:
        write_tokenizer_files(work / "tok")
        vae_channels = tuple(int(v) for v in args.vae_channels.split(","))
        pipe = build(work / "tok", args.seed, args.latent_channels, args.prediction, vae_channels)
        for w in WORDS:
            assert len(pipe.tokenizer(w, add_special_tokens=False).input_ids) == 1, w

        t0 = time.time()
        if args.vae_from is not None:  # start from an already trained VAE (fine-tune it if --vae-steps > 0)
            pipe.vae = AutoencoderKL.from_pretrained(str(args.vae_from / "vae"), local_files_only=True)
            pipe.register_modules(vae=pipe.vae)
        if args.vae_steps > 0:
            train_vae(
                pipe.vae, images, steps=args.vae_steps, batch_size=args.vae_batch, seed=args.seed + 10, lr=args.vae_lr
            )
        pipe.vae.eval()
        vae_seconds = time.time() - t0
        with torch.no_grad():  # the whole dataset encoded once: the UNet stage never runs the VAE
            chunks = [images[i : i + 256] for i in range(0, len(images), 256)]
            means = torch.cat([pipe.vae.encode(chunk).latent_dist.mean for chunk in chunks])
        scaling = float(1.0 / means.std())
        pipe.vae.register_to_config(scaling_factor=scaling)
        latents = means * scaling
        _report_reconstructions(pipe.vae, images[:200], prompts[:200], args.images, args.seed)
        print(f"vae: {vae_seconds:.0f}s, scaling_factor {scaling:.4f}", flush=True)

        t0 = time.time()
        train_unet(
            pipe,
            latents,
            prompts,
            steps=args.unet_steps,
            batch_size=args.batch,
            seed=args.seed + 20,
            lr=args.lr,
            ema_decay=args.ema,
            snapshot=(lambda step: _save(pipe, work, args.mid, {"mid_step": step})) if args.mid else None,
        )
        unet_seconds = time.time() - t0
        print(f"unet: {unet_seconds:.0f}s", flush=True)

        total = time.time() - began
        _save(
            pipe,
            work,
            args.out,
            {
                "seed": args.seed,
                "images": args.images,
                "vae_steps": args.vae_steps,
                "vae_from": str(args.vae_from) if args.vae_from else None,
                "vae_batch": args.vae_batch,
                "vae_lr": args.vae_lr,
                "unet_steps": args.unet_steps,
                "batch": args.batch,
                "lr": args.lr,
                "ema": args.ema,
                "train_seconds": round(total),
                "threads": args.threads,
                "latent_channels": args.latent_channels,
                "prediction": args.prediction,
                "vae_channels": args.vae_channels,
            },
        )
        print(f"saved to {args.out}; total {total:.0f}s ({math.ceil(total / 60)} min)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
