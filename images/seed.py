"""The model registry and price list that `make setup` seeds (admin-editable after)."""

from __future__ import annotations

from django.db import transaction

from billing.models import Price
from images.demo_model import DEMO_GUIDANCE
from images.models import ImageModel

DEMO_SOURCE = "demo-sd-tiny"  # folder under MODEL_DIR installed by `manage.py build_demo_model`

# Demo model: steps per quality value (more steps = slower = pricier in a real model).
DEMO_STEPS = {"standard": 4, "hd": 6, "low": 2, "medium": 3, "high": 4, "default": 4}


# public id -> (profile, owner)
SEEDED_MODELS = {
    "dall-e-2": ("dall-e-2", "platform"),
    "dall-e-3": ("dall-e-3", "platform"),
    "gpt-image-1": ("gpt-image", "platform"),
    "gpt-image-1-mini": ("gpt-image", "platform"),
    "gpt-image-1.5": ("gpt-image", "platform"),
    "imagen-3": ("dall-e-3", "platform"),
    "alphaedge-vision-3-1-2505": ("dall-e-2", "platform"),
}

# Credits per image (1 credit ~ US$0.001, docs/configuration.md), close to the
# list prices of the services these ids imitate. (size, quality) -> credits. Every size
# and quality of the profile (images/profiles.py) has a row: price_quote fails closed.
PRICES = {
    "dall-e-2": {("256x256", ""): 16, ("512x512", ""): 18, ("1024x1024", ""): 20},
    "dall-e-3": {
        ("1024x1024", "standard"): 40,
        ("1024x1024", "hd"): 80,
        ("1792x1024", "standard"): 80,
        ("1792x1024", "hd"): 120,
        ("1024x1792", "standard"): 80,
        ("1024x1792", "hd"): 120,
    },
    "gpt-image": {
        ("1024x1024", "low"): 11,
        ("1024x1024", "medium"): 42,
        ("1024x1024", "high"): 167,
        ("1024x1536", "low"): 16,
        ("1024x1536", "medium"): 63,
        ("1024x1536", "high"): 250,
        ("1536x1024", "low"): 16,
        ("1536x1024", "medium"): 63,
        ("1536x1024", "high"): 250,
    },
}
# The mini model costs a quarter (integer division, at least 1 credit): no floats on the money path.
PRICE_DIVISOR = {"gpt-image-1-mini": 4}


@transaction.atomic
def registry_seed() -> int:
    """Create missing seeded models and their prices; never overwrites operator edits.
    Returns how many models were created."""
    created = 0
    for public_id, (profile, owner) in SEEDED_MODELS.items():
        model, was_created = ImageModel.objects.get_or_create(
            public_id=public_id,
            defaults={
                "profile": profile,
                "source": DEMO_SOURCE,
                "steps_by_quality": DEMO_STEPS,
                "guidance": DEMO_GUIDANCE,
                "owned_by": owner,
                "queue": "gpu",
            },
        )
        if not was_created:
            continue
        created += 1
        divisor = PRICE_DIVISOR.get(public_id, 1)
        for (size, quality), credits in PRICES[profile].items():
            Price.objects.create(model=model, size=size, quality=quality, credits_per_image=max(1, credits // divisor))
    from images.tool_models import tool_models_seed  # (issue 26 item 1: the tool models)

    created += tool_models_seed()
    from images.stability import stability_seed  # (Stability's v2beta shape: its models and routes, after the tools)

    created += stability_seed(source=DEMO_SOURCE, steps_by_quality=DEMO_STEPS, guidance=DEMO_GUIDANCE)
    moderation_terms_seed()
    return created


def moderation_terms_seed() -> int:
    """Seed the term lists once (an empty table); the admin edits them after that."""
    from images.models import ModerationTerm
    from images.moderation import DEFAULT_TERMS

    if ModerationTerm.objects.exists():
        return 0
    rows = [
        ModerationTerm(category=category, tier=tier, term=term)
        for category, tiers in DEFAULT_TERMS.items()
        for tier, terms in tiers.items()
        for term in set(terms)
    ]
    ModerationTerm.objects.bulk_create(rows, ignore_conflicts=True)
    return len(rows)
