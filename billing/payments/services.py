"""Payments: a PaymentIntent per pack bought, credits only from the signed webhook.

Exactly once per payment: the grant happens in the same transaction as a conditional
`UPDATE payment SET status='succeeded' WHERE status IN ('pending', 'failed')`, so of two
deliveries of the event (or two racing ones) only one finds the row still pending; the
ledger's idempotency key `stripe:<payment_intent id>` backs it up. Refunds and disputes
take back credits in proportion to the money returned, through the ledger, all of them:
credits already spent or held leave a debt that stops all spending until later credits
cover it (billing.services.credits_reverse). Stripe does not order events: a refund or
dispute that arrives before the success is recorded on the pending payment and booked
when the success grants."""

from __future__ import annotations

import logging
from typing import Any

import stripe
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import Tenant
from billing.currencies import amount_display, currency_normalise, minimum_charge_problem
from billing.models import CreditAccount, CreditPack, Payment
from billing.payments import gateway
from billing.services import credits_grant, credits_reverse
from core.errors import APIError, NotFound

logger = logging.getLogger(__name__)


class PaymentsOff(APIError):
    status_code = 400
    code = "payments_disabled"


class PaymentRefused(APIError):
    """Stripe (or its known minimum charge) refuses this pack: 400, a retry cannot help;
    the message says why, for the owner and the operator."""

    status_code = 400
    code = "payment_refused"
    param = "pack"


class PaymentsUnavailable(APIError):
    """Stripe could not be reached or failed: 503, try again later."""

    status_code = 503
    type = "server_error"
    code = "payments_unavailable"


def payment_start(*, tenant: Tenant, pack_id: int, created_by: str = "") -> tuple[Payment, str]:
    """Create a PaymentIntent for an active pack and its Payment row (pending); returns
    the payment and the intent's client secret for Stripe.js. Grants nothing."""
    if not gateway.payments_enabled():
        raise PaymentsOff("Card payments are off on this installation.")
    pack = CreditPack.objects.filter(pk=pack_id, active=True).first()
    if pack is None:
        raise NotFound("No such credit pack.", param="pack", code="pack_not_found")
    import uuid

    currency = currency_normalise(pack.currency)
    too_small = minimum_charge_problem(amount=pack.price, currency=currency)
    if too_small:
        logger.error("Credit pack %s (%s): %s", pack.pk, pack.name, too_small)
        raise PaymentRefused(
            f"The pack '{pack.name}' cannot be paid by card: its price of {too_small} "
            "Please ask the platform operator to change the pack."
        )
    attempt = uuid.uuid4().hex
    try:
        intent = gateway.payment_intent_create(
            amount=pack.price,
            currency=currency,
            metadata={"tenant_id": str(tenant.pk), "pack_id": str(pack.pk), "credits": str(pack.credits)},
            idempotency_key=f"pack:{tenant.pk}:{pack.pk}:{attempt}",
        )
    except (stripe.InvalidRequestError, stripe.CardError) as exc:
        logger.error("Stripe refused a PaymentIntent for pack %s (%s): %s", pack.pk, pack.name, exc.user_message)
        raise PaymentRefused(
            f"Stripe refused this payment for the pack '{pack.name}' "
            f"({amount_display(amount=pack.price, currency=currency)}): "
            f"{exc.user_message or 'no reason given'}. Please ask the platform operator to check the pack."
        ) from None
    except stripe.StripeError as exc:  # connection, authentication, rate limit, Stripe's own errors
        logger.error("Stripe failed to create a PaymentIntent for pack %s: %r", pack.pk, exc)
        raise PaymentsUnavailable(
            "Card payments are unavailable right now; please try again in a few minutes."
        ) from None
    payment = Payment.objects.create(
        tenant=tenant,
        pack=pack,
        provider="stripe",
        external_id=intent["id"],
        amount=pack.price,
        currency=currency,
        credits=pack.credits,
        created_by=created_by[:150],
    )
    return payment, intent["client_secret"]


def field(obj: Any, name: str, default: Any = None) -> Any:
    """obj[name] of a Stripe object or a dict; `default` when absent or null."""
    try:
        value = obj[name]
    except (KeyError, TypeError, IndexError):
        return default
    return default if value is None else value


def _id(value: Any) -> str:
    """An id, whether Stripe sent the id or the expanded object."""
    return value if isinstance(value, str) else str(field(value, "id", ""))


def payment_succeeded(*, intent: Any) -> str:
    """payment_intent.succeeded: grant the payment's credits once; returns the outcome
    ("granted", "already handled", "mismatch", "not ours").

    A refund or dispute that Stripe delivered before this event was recorded on the
    pending payment (`payment_reverse`): it is booked right after the grant, in the same
    transaction, so the tenant can only ever spend what was not returned."""
    intent_id = _id(intent)
    with transaction.atomic():
        payment = Payment.objects.filter(external_id=intent_id).select_related("pack").first()
        if payment is None:
            logger.warning("Stripe payment %s is not one of ours: ignored", intent_id)
            return "not ours"
        if payment.status == Payment.Status.MISMATCH:
            return "mismatch"  # paid the wrong amount or currency before: still the operator's to settle
        amount = field(intent, "amount_received") or field(intent, "amount")
        if amount != payment.amount or currency_normalise(field(intent, "currency", "")) != currency_normalise(
            payment.currency
        ):
            mismatched = Payment.objects.filter(
                pk=payment.pk, status__in=[Payment.Status.PENDING, Payment.Status.FAILED]
            ).update(status=Payment.Status.MISMATCH)
            if not mismatched:
                return "already handled"  # credited by a matching event before
            logger.error(
                "Stripe payment %s paid %s %s, expected %s %s: not credited",
                intent_id,
                amount,
                field(intent, "currency"),
                payment.amount,
                payment.currency,
            )
            return "mismatch"
        claimed = Payment.objects.filter(
            pk=payment.pk, status__in=[Payment.Status.PENDING, Payment.Status.FAILED]
        ).update(status=Payment.Status.SUCCEEDED, paid_at=timezone.now())
        if not claimed:
            return "already handled"  # a repeated or racing delivery: the first one granted
        credits_grant(
            tenant=payment.tenant,
            amount=int(payment.credits),
            actor="stripe",
            note=f"payment {intent_id}" + (f" ({payment.pack.name})" if payment.pack else ""),
            idempotency_key=f"stripe:{intent_id}",
        )
        payment = Payment.objects.select_for_update().get(pk=payment.pk)  # what early events recorded
        if payment.amount_refunded or payment.amount_disputed:
            _reversal_book(payment=payment, reason="early refund or dispute")
        return "granted"


def payment_failed(*, intent: Any) -> str:
    """payment_intent.payment_failed / canceled: a pending payment is marked failed (a
    later success still grants); one already paid is left alone (Stripe does not order
    events)."""
    done = Payment.objects.filter(external_id=_id(intent), status=Payment.Status.PENDING).update(
        status=Payment.Status.FAILED
    )
    return "failed" if done else "already handled"


def payment_receipt(*, charge: Any) -> None:
    """charge.succeeded / charge.updated: keep the receipt link."""
    url = field(charge, "receipt_url", "")
    intent_id = _id(field(charge, "payment_intent", ""))
    if url and intent_id:
        Payment.objects.filter(external_id=intent_id).exclude(receipt_url=url).update(receipt_url=url[:500])


CREDITED = (Payment.Status.SUCCEEDED, Payment.Status.PARTIALLY_REFUNDED, Payment.Status.REFUNDED)

# A dispute only moves forward: withdrawn (Stripe took the funds) -> won (reinstated) or
# lost. A state of lower rank arriving late (funds_withdrawn after funds_reinstated) is
# ignored; "lost" outranks "won" so that contradictory events keep the money returned.
DISPUTE_RANK = {"": 0, "withdrawn": 1, "won": 2, "lost": 3}


def payment_reverse(
    *,
    intent_id: str,
    amount_refunded: int | None = None,
    dispute_status: str | None = None,
    dispute_amount: int = 0,
    reason: str,
) -> Payment | None:
    """Record the money returned on a payment and take back its credits.

    `amount_refunded` is Stripe's running total of refunds on the charge (it only grows
    here); `dispute_status` ("withdrawn", "won", "lost") with the dispute's amount (minor
    units) moves the dispute forward (DISPUTE_RANK). Both are absolute, so a repeated or
    late event changes nothing. A payment not credited yet (pending, failed, mismatch)
    only records them: the success event books them when it grants. A credited payment
    books the change at once (`_reversal_book`), held and spent credits included."""
    with transaction.atomic():
        payment = Payment.objects.select_for_update().filter(external_id=intent_id).first()
        if payment is None:
            logger.warning("Stripe %s for payment %s, not one of ours: ignored", reason, intent_id)
            return None
        if amount_refunded is not None:
            payment.amount_refunded = max(payment.amount_refunded, min(max(amount_refunded, 0), payment.amount))
        if dispute_status is not None and DISPUTE_RANK[dispute_status] > DISPUTE_RANK.get(payment.dispute_status, 0):
            payment.dispute_status = dispute_status
            payment.amount_disputed = 0 if dispute_status == "won" else min(max(dispute_amount, 0), payment.amount)
        payment.save(update_fields=["amount_refunded", "amount_disputed", "dispute_status"])
        if payment.status in CREDITED:
            _reversal_book(payment=payment, reason=reason)
        return payment


def _reversal_book(*, payment: Payment, reason: str) -> None:
    """Bring the payment's reversed credits to credits x returned / paid (rounded down),
    returned = refunded + disputed (at most the amount paid), through the ledger
    (`credits_reverse`: all of them, even if spent or held; a dispute won gives them
    back). The caller holds the payment's row lock."""
    returned = min(payment.amount, payment.amount_refunded + payment.amount_disputed)
    target = payment.credits * returned // payment.amount
    change = target - payment.credits_reversed  # includes credits_unrecovered left by an earlier version
    if change:
        credits_reverse(
            tenant=payment.tenant,
            credits=change,
            actor="stripe",
            note=f"{reason} of payment {payment.external_id}"
            + (f": {change} credits taken back" if change > 0 else f": {-change} credits returned"),
            idempotency_key=(
                f"stripe:reversal:{payment.external_id}:r{payment.amount_refunded}"
                f":d{payment.amount_disputed}:{payment.dispute_status or 'none'}"
            ),
        )
        account = CreditAccount.objects.get(tenant_id=payment.tenant_id)
        if account.owed:
            logger.warning(
                "%s of payment %s: tenant %s now owes %s credits (spent or held)",
                reason,
                payment.external_id,
                payment.tenant_id,
                account.owed,
            )
    payment.credits_reversed, payment.credits_unrecovered = target, 0
    payment.status = (
        Payment.Status.REFUNDED
        if returned >= payment.amount
        else (Payment.Status.PARTIALLY_REFUNDED if returned else Payment.Status.SUCCEEDED)
    )
    payment.save(update_fields=["credits_reversed", "credits_unrecovered", "status"])


# The events to enable on the Stripe webhook endpoint (docs/operations.md).
HANDLED = (
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.canceled",
    "charge.succeeded",
    "charge.updated",
    "charge.refunded",
    "charge.dispute.funds_withdrawn",
    "charge.dispute.funds_reinstated",
    "charge.dispute.closed",
)


def webhook_handle(*, event: Any) -> str:
    """Dispatch one verified event; returns what was done (for the log and the reply).
    Any event may arrive before payment_intent.succeeded, twice, or late: each handler
    records absolute values under the payment's row lock."""
    kind = field(event, "type", "")
    obj = field(field(event, "data", {}), "object", {})
    if kind == "payment_intent.succeeded":
        return payment_succeeded(intent=obj)
    if kind in ("payment_intent.payment_failed", "payment_intent.canceled"):
        return payment_failed(intent=obj)
    if kind in ("charge.succeeded", "charge.updated"):
        payment_receipt(charge=obj)
        return "receipt"
    intent_id = _id(field(obj, "payment_intent", ""))
    if kind == "charge.refunded":
        payment = payment_reverse(
            intent_id=intent_id, amount_refunded=int(field(obj, "amount_refunded", 0)), reason="refund"
        )
        payment_receipt(charge=obj)
        return _reversal_outcome(payment, "refund")
    if kind.startswith("charge.dispute."):
        status = field(obj, "status", "")
        dispute = {
            "charge.dispute.funds_withdrawn": ("withdrawn", "dispute funds withdrawn"),
            "charge.dispute.funds_reinstated": ("won", "dispute funds reinstated"),
            "charge.dispute.closed": {"lost": ("lost", "dispute lost"), "won": ("won", "dispute won")}.get(status),
        }.get(kind)
        if dispute is None:
            return "dispute: nothing to do"  # an inquiry closed (warning_closed) or an event not used
        payment = payment_reverse(
            intent_id=intent_id,
            dispute_status=dispute[0],
            dispute_amount=int(field(obj, "amount", 0)),
            reason="dispute",
        )
        return _reversal_outcome(payment, dispute[1])
    return "ignored"


def _reversal_outcome(payment: Payment | None, done: str) -> str:
    if payment is None:
        return "not ours"
    return done if payment.status in CREDITED else f"{done} (recorded: the payment is {payment.status})"


def payments_for(*, tenant: Tenant, limit: int = 50) -> list[Payment]:
    """The tenant's payments, newest first (abandoned ones, pending for a day, left out)."""
    from datetime import timedelta

    stale = Q(status=Payment.Status.PENDING) & Q(created_at__lt=timezone.now() - timedelta(days=1))
    return list(Payment.objects.filter(tenant=tenant).exclude(stale).select_related("pack")[:limit])
