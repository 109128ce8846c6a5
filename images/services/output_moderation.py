"""Output moderation (issue 25): what happens to a generated image the output classifier
finds unsafe, by the tenant's action.

The worker (images/worker.py) scores every image of a job in one batch on the backend
(`Backend.classify`, images/backends/local/safety.py) and asks `output_verdicts` which
are unsafe: an image is unsafe when any label of OUTPUT_MODERATION_UNSAFE_LABELS scores
at least the threshold of the job's moderation level (OUTPUT_MODERATION_THRESHOLDS; the
level is the prompt check's, images.moderation.effective_level: the tenant's level and
the request's `moderation`). Then the tenant's `output_moderation` decides:

- block: the image is withheld (never stored nor charged; a `BlockedOutput` row and a
  staff-only thumbnail record it). All withheld: the job ends `failed` with
  `moderation_blocked` (a 400, images.errors.OutputModerationBlocked), its hold released.
  Some withheld (n > 1): the others are delivered and charged pro rata, and the answer
  lists the withheld indexes (`withheld`, docs/api.md).
- blur: delivered after a strong Gaussian blur (`image_blur`), marked "blurred"
  (without the invisible watermark: images/worker.py).
- flag: delivered as made, marked "flagged".
- off: nothing is classified.

Each image's verdict depends only on its own scores: a batch-mate never changes it.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from accounts.models import Tenant
from images.models import BlockedOutput, Job

logger = logging.getLogger(__name__)

# The mark a delivered image carries, per tenant action (block withholds instead).
MARKS = {Tenant.OutputModeration.BLUR: "blurred", Tenant.OutputModeration.FLAG: "flagged"}
BLOCKED = "blocked"
# The blur radius as a share of the image's shorter side: 1/4 leaves a wash of the
# image's colours, no shapes (a 1024 px image gets a 256 px radius). Measured on the demo
# model's smooth 256 px images: the mean squared luma gradient falls to about 0.15 of the
# unblurred image's (1/16 left 0.65, 1/8 0.4).
BLUR_SHARE = 4
BLOCKED_THUMBNAIL_EDGE = 128  # px, the longest side of a withheld image's staff thumbnail


@dataclass(frozen=True)
class OutputVerdict:
    """One image's verdict: unsafe when `categories` (its unsafe labels at or over the
    threshold, in OUTPUT_MODERATION_UNSAFE_LABELS order) is not empty."""

    index: int
    categories: tuple[str, ...]
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def unsafe(self) -> bool:
        return bool(self.categories)


def output_action(*, job: Job) -> str:
    """The tenant's action for this job: block, blur, flag, or off (also when no
    classifier is configured)."""
    if not settings.OUTPUT_MODERATION_MODEL:
        return Tenant.OutputModeration.OFF
    return job.tenant.output_moderation


def output_level(*, job: Job) -> str:
    """The moderation level the job's thresholds come from (the prompt check's rule)."""
    from images import moderation

    try:
        return moderation.effective_level(job.tenant.moderation_level, job.params.get("moderation") or None)
    except ValueError:  # a request shape without `moderation` values of its own
        return moderation.effective_level(job.tenant.moderation_level, None)


def output_verdicts(*, scores: list[dict[str, float]], level: str) -> list[OutputVerdict]:
    """One verdict per image from the classifier's scores (same order), at `level`."""
    threshold = settings.OUTPUT_MODERATION_THRESHOLDS[level]
    labels = [label.lower() for label in settings.OUTPUT_MODERATION_UNSAFE_LABELS]
    verdicts = []
    for index, image_scores in enumerate(scores):
        lowered = {label.lower(): score for label, score in image_scores.items()}
        categories = tuple(label for label in labels if lowered.get(label, 0.0) >= threshold)
        verdicts.append(OutputVerdict(index=index, categories=categories, scores=dict(image_scores)))
    return verdicts


def image_blur(image: Any) -> Any:
    """A strongly blurred copy (Gaussian, radius = shorter side / BLUR_SHARE, at least 8 px)."""
    from PIL import ImageFilter

    radius = max(8, min(image.width, image.height) // BLUR_SHARE)
    return image.filter(ImageFilter.GaussianBlur(radius))


def output_mark(*, action: str, categories: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """What a delivered image's data item shows (GeneratedImage.moderation)."""
    return {"action": MARKS[action], "categories": list(categories)}


def job_output_summary(*, action: str, verdicts: list[OutputVerdict]) -> dict[str, Any]:
    """Job.output_moderation: {} when nothing was found, else the action taken, every
    category found (sorted), the indexes withheld (block) and, in the same order, each
    withheld image's own categories (`withheld_categories`: the answer's `withheld`
    lists them per image, images.serializers.job_withheld)."""
    unsafe = [verdict for verdict in verdicts if verdict.unsafe]
    if not unsafe:
        return {}
    categories = sorted({category for verdict in unsafe for category in verdict.categories})
    held = [verdict for verdict in unsafe if action == Tenant.OutputModeration.BLOCK]
    return {
        "action": BLOCKED if held else MARKS[action],
        "categories": categories,
        "withheld": [verdict.index for verdict in held],
        "withheld_categories": [list(verdict.categories) for verdict in held],
    }


def blocked_output_record(*, job: Job, verdict: OutputVerdict, image: Any, level: str) -> BlockedOutput:
    """Record a withheld image for the operator: its scores and a small WebP thumbnail
    (stored under `moderation/`, served only to staff by the admin)."""
    thumbnail = ""
    try:
        small = image.convert("RGB")
        small.thumbnail((BLOCKED_THUMBNAIL_EDGE, BLOCKED_THUMBNAIL_EDGE))
        buffer = io.BytesIO()
        small.save(buffer, format="WEBP", quality=70)
        thumbnail = default_storage.save(
            f"moderation/{str(job.pk)[:2]}/{job.pk}-{verdict.index}.webp", ContentFile(buffer.getvalue())
        )
    except Exception:  # the record matters more than its picture
        logger.warning("could not store the thumbnail of withheld image %s of job %s", verdict.index, job.pk)
    return BlockedOutput.objects.create(
        tenant_id=job.tenant_id,
        api_key_id=job.api_key_id,
        job=job,
        index=verdict.index,
        model=job.model.public_id,
        endpoint=job.endpoint,
        level=level,
        categories=list(verdict.categories),
        scores=verdict.scores,
        thumbnail=thumbnail,
    )
