"""The API profiles of reference §5: what each family of model ids accepts."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    prompt_max: int
    n_max: int
    sizes: tuple[str, ...]
    default_size: str
    qualities: tuple[str, ...]  # accepted besides "auto"
    auto_quality: str  # what "auto" resolves to
    gpt: bool  # GPT-image parameters (background, output_format, usage...) apply
    style: bool  # dall-e-3's vivid/natural


DALLE2 = Profile("dall-e-2", 1000, 10, ("256x256", "512x512", "1024x1024"), "1024x1024",
                 ("standard",), "standard", gpt=False, style=False)
DALLE3 = Profile("dall-e-3", 4000, 1, ("1024x1024", "1792x1024", "1024x1792"), "1024x1024",
                 ("standard", "hd"), "standard", gpt=False, style=True)
GPT_IMAGE = Profile("gpt-image", 32000, 10, ("1024x1024", "1536x1024", "1024x1536"), "1024x1024",
                    ("low", "medium", "high"), "high", gpt=True, style=False)

PROFILES = {p.name: p for p in (DALLE2, DALLE3, GPT_IMAGE)}

# dall-e-3's style: a prompt template and a guidance factor. revised_prompt returns
# the exact text the model received.
STYLE_TEMPLATES = {
    "vivid": ("{prompt}, vivid colors, dramatic lighting, hyper-detailed", 1.2),
    "natural": ("{prompt}, natural colors, soft realistic lighting", 0.9),
}

# GPT-image output tokens per image, by size and quality (OpenAI's published
# gpt-image-1 table); used for the `usage` object. Documented in docs/api.md.
OUTPUT_TOKENS = {
    ("1024x1024", "low"): 272, ("1024x1024", "medium"): 1056, ("1024x1024", "high"): 4160,
    ("1024x1536", "low"): 408, ("1024x1536", "medium"): 1584, ("1024x1536", "high"): 6240,
    ("1536x1024", "low"): 400, ("1536x1024", "medium"): 1568, ("1536x1024", "high"): 6208,
}


def output_tokens(size: str, quality: str) -> int:
    if (size, quality) in OUTPUT_TOKENS:
        return OUTPUT_TOKENS[(size, quality)]
    width, height = (int(v) for v in size.split("x"))
    # Outside the table: scale the 1024x1024 figure by area.
    return round(OUTPUT_TOKENS[("1024x1024", quality if quality in ("low", "medium", "high") else "high")]
                 * width * height / (1024 * 1024))
