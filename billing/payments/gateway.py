"""The Stripe SDK, configured from settings: STRIPE_SECRET_KEY, and STRIPE_API_BASE to
point it at another server (localstripe in the tests)."""

from __future__ import annotations

from typing import Any

import stripe
from django.conf import settings


def payments_enabled() -> bool:
    """Card payments are on when the secret and publishable keys are set."""
    return bool(settings.STRIPE_SECRET_KEY and settings.STRIPE_PUBLISHABLE_KEY)


def client() -> stripe.StripeClient:
    base = {"api": settings.STRIPE_API_BASE.rstrip("/")} if settings.STRIPE_API_BASE else None
    return stripe.StripeClient(settings.STRIPE_SECRET_KEY, base_addresses=base, max_network_retries=2)


def payment_intent_create(*, amount: int, currency: str, metadata: dict[str, str], idempotency_key: str) -> Any:
    """A PaymentIntent for `amount` minor units. STRIPE_PAYMENT_METHOD_TYPES names the
    methods (e.g. card); empty lets Stripe offer those turned on in its dashboard (cards,
    Alipay, WeChat Pay, ...) through the Payment Element."""
    params: dict[str, Any] = {"amount": amount, "currency": currency, "metadata": metadata}
    if settings.STRIPE_PAYMENT_METHOD_TYPES:
        params["payment_method_types"] = list(settings.STRIPE_PAYMENT_METHOD_TYPES)
    else:
        params["automatic_payment_methods"] = {"enabled": True}
    return client().v1.payment_intents.create(params=params, options={"idempotency_key": idempotency_key})


def webhook_event(*, payload: bytes, signature: str) -> Any:
    """The event, once its Stripe-Signature header is checked with the SDK against
    STRIPE_WEBHOOK_SECRET (ValueError or stripe.SignatureVerificationError otherwise)."""
    return stripe.Webhook.construct_event(payload, signature, settings.STRIPE_WEBHOOK_SECRET)
