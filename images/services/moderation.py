"""The prompt check at the tenant's moderation level (matcher: images/moderation.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings

from accounts.models import APIKey, Tenant
from billing.models import UsageRecord
from core.errors import InvalidRequest, ServiceUnavailable
from images.models import BlockedPrompt, ImageModel, ModerationTerm

logger = logging.getLogger(__name__)


class ModerationBlocked(InvalidRequest):
    """400 in the body OpenAI uses for the request's profile (reference §9)."""


class ModerationUnavailable(ServiceUnavailable):
    """The classifier failed and MODERATION_CLASSIFIER_FAILURE is "closed": 503, and
    `x-should-retry: false` so the SDK does not hammer a classifier that is down."""

    code = "moderation_unavailable"
    should_retry = False


_terms_cache: dict[str, Any] = {"at": 0.0, "terms": None}
TERMS_TTL = 30.0  # seconds an edit in the admin takes to reach every web process


def moderation_terms() -> dict[str, dict[str, list[str]]]:
    """Enabled terms from the admin-editable table, cached briefly per process."""
    now = time.monotonic()
    if _terms_cache["terms"] is None or now - _terms_cache["at"] > TERMS_TTL:
        terms: dict[str, dict[str, list[str]]] = {}
        for category, tier, term in ModerationTerm.objects.filter(enabled=True).values_list("category", "tier", "term"):
            terms.setdefault(category, {}).setdefault(tier, []).append(term)
        _terms_cache.update(at=now, terms=terms)
    return _terms_cache["terms"]


def prompt_moderate(
    *,
    tenant: Tenant,
    api_key: APIKey | None,
    model: ImageModel,
    prompt: str,
    requested: str | None,
    endpoint: str,
    request_id: str = "",
) -> None:
    """Check a prompt at the level the tenant and the request allow; a block is logged
    for the operator, recorded as usage and raised before any credit is held."""
    from images import moderation

    level = moderation.effective_level(tenant.moderation_level, requested)
    failures: list[Exception] = []
    classifier = _guarded_classifier(failures) if settings.MODERATION_CLASSIFIER else None
    # An emptied term table falls back to the defaults rather than blocking nothing.
    verdict = moderation.moderation_check(prompt, level=level, terms=moderation_terms() or None, classifier=classifier)
    if not verdict.blocked:
        if failures and settings.MODERATION_CLASSIFIER_FAILURE == "closed":
            raise ModerationUnavailable(
                "The moderation service is unavailable, so the request was not processed; nothing was charged."
            )
        return
    BlockedPrompt.objects.create(
        tenant=tenant,
        api_key=api_key,
        model=model.public_id,
        endpoint=endpoint,
        level=level,
        categories=list(verdict.categories),
        matched=list(verdict.matched),
        prompt=prompt,
    )
    UsageRecord.objects.create(
        tenant=tenant,
        api_key=api_key,
        model=model.public_id,
        endpoint=endpoint,
        outcome=UsageRecord.Outcome.BLOCKED,
        error_code="moderation_blocked",
    )
    if model.profile == ImageModel.Profile.GPT_IMAGE:
        raise ModerationBlocked(
            "Your request was rejected by the safety system. If you believe this is an error, contact your "
            f"platform operator and include the request ID {request_id}. "
            f"safety_violations=[{', '.join(verdict.categories)}].",
            type="image_generation_user_error",
            code="moderation_blocked",
        )
    raise ModerationBlocked(
        "Your request was rejected as a result of our safety system. Your prompt may contain text that is "
        "not allowed by our safety system.",
        code="content_policy_violation",
    )


def _guarded_classifier(failures: list[Exception]) -> Callable[[str], Iterable[str]]:
    """MODERATION_CLASSIFIER, loaded and called so that its failure (a bad path
    included) is recorded in `failures` rather than raised: the term lists still decide,
    then MODERATION_CLASSIFIER_FAILURE says what a failure means."""
    from images import moderation

    def classify(text: str) -> Iterable[str]:
        try:
            return list(moderation.load_classifier(settings.MODERATION_CLASSIFIER)(text) or ())
        except Exception as exc:  # any failure of operator-supplied code, whatever it raises
            logger.exception(
                "moderation classifier %r failed (failure policy: %s)",
                settings.MODERATION_CLASSIFIER,
                settings.MODERATION_CLASSIFIER_FAILURE,
            )
            failures.append(exc)
            return ()

    return classify
