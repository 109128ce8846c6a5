"""POST /webhooks/stripe: Stripe's signed events (signature checked with the SDK)."""

from __future__ import annotations

import logging

import stripe
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing.payments import gateway, services

logger = logging.getLogger(__name__)


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    """400 for a missing or bad signature (nothing is done); 200 once handled, also for
    event types this platform does not use; a database failure is a 5xx, so Stripe
    delivers the event again."""
    if not settings.STRIPE_WEBHOOK_SECRET:
        return JsonResponse({"error": "webhooks are not configured"}, status=404)
    try:
        event = gateway.webhook_event(payload=request.body, signature=request.headers.get("Stripe-Signature", ""))
    except (ValueError, stripe.SignatureVerificationError) as exc:
        logger.warning("Stripe webhook refused: %s", exc.__class__.__name__)
        return JsonResponse({"error": "invalid signature or payload"}, status=400)
    outcome = services.webhook_handle(event=event)
    logger.info("Stripe event %s (%s): %s", services.field(event, "id"), services.field(event, "type"), outcome)
    return JsonResponse({"received": True, "outcome": outcome})
