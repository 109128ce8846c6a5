"""Payments: a PaymentIntent per pack bought, credits only from the signed webhook.

Exactly once per payment: the grant happens in the same transaction as a conditional
`UPDATE payment SET status='succeeded' WHERE status IN ('pending', 'failed')`, so of two
deliveries of the event (or two racing ones) only one finds the row still pending; the
ledger's idempotency key `stripe:<payment_intent id>` backs it up. Refunds and lost
disputes take back credits in proportion to the money returned, through the ledger;
what is already spent or held is recorded on the Payment (`credits_unrecovered`)."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import Tenant
from billing.errors import InvalidAmount
from billing.models import CreditAccount, CreditPack, Payment
from billing.payments import gateway
from billing.services import credits_grant
from core.errors import APIError, NotFound

logger = logging.getLogger(__name__)


class PaymentsOff(APIError):
    status_code = 400
    code = "payments_disabled"


def payment_start(*, tenant: Tenant, pack_id: int, created_by: str = "") -> tuple[Payment, str]:
    """Create a PaymentIntent for an active pack and its Payment row (pending); returns
    the payment and the intent's client secret for Stripe.js. Grants nothing."""
    if not gateway.payments_enabled():
        raise PaymentsOff("Card payments are off on this installation.")
    pack = CreditPack.objects.filter(pk=pack_id, active=True).first()
    if pack is None:
        raise NotFound("No such credit pack.", param="pack", code="pack_not_found")
    import uuid

    attempt = uuid.uuid4().hex
    intent = gateway.payment_intent_create(
        amount=pack.price,
        currency=pack.currency,
        metadata={"tenant_id": str(tenant.pk), "pack_id": str(pack.pk), "credits": str(pack.credits)},
        idempotency_key=f"pack:{tenant.pk}:{pack.pk}:{attempt}",
    )
    payment = Payment.objects.create(
        tenant=tenant,
        pack=pack,
        provider="stripe",
        external_id=intent["id"],
        amount=pack.price,
        currency=pack.currency,
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


def payment_succeeded(*, intent: Any) -> bool:
    """payment_intent.succeeded: grant the payment's credits once. True when this call granted."""
    intent_id = _id(intent)
    with transaction.atomic():
        payment = Payment.objects.filter(external_id=intent_id).select_related("pack").first()
        if payment is None:
            logger.warning("Stripe payment %s is not one of ours: ignored", intent_id)
            return False
        amount = field(intent, "amount_received") or field(intent, "amount")
        if amount != payment.amount or str(field(intent, "currency", "")).lower() != payment.currency:
            Payment.objects.filter(pk=payment.pk, status=Payment.Status.PENDING).update(status=Payment.Status.MISMATCH)
            logger.error(
                "Stripe payment %s paid %s %s, expected %s %s: not credited",
                intent_id,
                amount,
                field(intent, "currency"),
                payment.amount,
                payment.currency,
            )
            return False
        claimed = Payment.objects.filter(
            pk=payment.pk, status__in=[Payment.Status.PENDING, Payment.Status.FAILED]
        ).update(status=Payment.Status.SUCCEEDED, paid_at=timezone.now())
        if not claimed:
            return False  # a repeated or racing delivery: the first one granted
        credits_grant(
            tenant=payment.tenant,
            amount=int(payment.credits),
            actor="stripe",
            note=f"payment {intent_id}" + (f" ({payment.pack.name})" if payment.pack else ""),
            idempotency_key=f"stripe:{intent_id}",
        )
        return True


def payment_failed(*, intent: Any) -> None:
    Payment.objects.filter(external_id=_id(intent), status=Payment.Status.PENDING).update(status=Payment.Status.FAILED)


def payment_receipt(*, charge: Any) -> None:
    """charge.succeeded / charge.updated: keep the receipt link."""
    url = field(charge, "receipt_url", "")
    intent_id = _id(field(charge, "payment_intent", ""))
    if url and intent_id:
        Payment.objects.filter(external_id=intent_id).exclude(receipt_url=url).update(receipt_url=url[:500])


def payment_reverse(
    *, intent_id: str, amount_refunded: int | None = None, amount_disputed: int | None = None, reason: str
) -> Payment | None:
    """Take back the credits for the money returned: `amount_refunded` is Stripe's running
    total of refunds on the charge, `amount_disputed` the amount of a lost dispute (both
    absolute, so a repeated event changes nothing). Credits due = credits x returned /
    paid (rounded down); what the available balance cannot cover (spent or held) is
    recorded in `credits_unrecovered`."""
    with transaction.atomic():
        payment = Payment.objects.select_for_update().filter(external_id=intent_id).first()
        if payment is None or payment.status not in (
            Payment.Status.SUCCEEDED,
            Payment.Status.PARTIALLY_REFUNDED,
            Payment.Status.REFUNDED,
        ):
            return payment  # never credited: nothing to take back
        refunded = max(payment.amount_refunded, min(amount_refunded or 0, payment.amount))
        disputed = max(payment.amount_disputed, min(amount_disputed or 0, payment.amount))
        returned = min(payment.amount, refunded + disputed)
        due = payment.credits * returned // payment.amount - payment.credits_reversed - payment.credits_unrecovered
        if due > 0:
            account = CreditAccount.objects.select_for_update().get(tenant_id=payment.tenant_id)
            take = max(0, min(due, account.available))
            if take:
                try:
                    credits_grant(
                        tenant=payment.tenant,
                        amount=-take,
                        actor="stripe",
                        note=f"{reason} of payment {intent_id}",
                        idempotency_key=f"stripe:{reason}:{intent_id}:{returned}",
                    )
                except InvalidAmount:  # the balance moved under us (cannot, under the lock): record it all
                    take = 0
            payment.credits_reversed += take
            payment.credits_unrecovered += due - take
            if due - take:
                logger.warning(
                    "%s of payment %s: %s credits could not be taken back (spent or held)",
                    reason,
                    intent_id,
                    due - take,
                )
        payment.amount_refunded, payment.amount_disputed = refunded, disputed
        payment.status = (
            Payment.Status.REFUNDED
            if returned >= payment.amount
            else (Payment.Status.PARTIALLY_REFUNDED if returned else payment.status)
        )
        payment.save(
            update_fields=["amount_refunded", "amount_disputed", "credits_reversed", "credits_unrecovered", "status"]
        )
        return payment


HANDLED = (
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "charge.succeeded",
    "charge.updated",
    "charge.refunded",
    "charge.dispute.closed",
)


def webhook_handle(*, event: Any) -> str:
    """Dispatch one verified event; returns what was done (for the log and the reply)."""
    kind = field(event, "type", "")
    obj = field(field(event, "data", {}), "object", {})
    if kind == "payment_intent.succeeded":
        return "granted" if payment_succeeded(intent=obj) else "already handled"
    if kind == "payment_intent.payment_failed":
        payment_failed(intent=obj)
        return "failed"
    if kind in ("charge.succeeded", "charge.updated"):
        payment_receipt(charge=obj)
        return "receipt"
    if kind == "charge.refunded":
        payment_reverse(
            intent_id=_id(field(obj, "payment_intent", "")),
            amount_refunded=int(field(obj, "amount_refunded", 0)),
            reason="refund",
        )
        payment_receipt(charge=obj)
        return "refund"
    if kind == "charge.dispute.closed":
        if field(obj, "status") != "lost":
            return "dispute not lost"
        payment_reverse(
            intent_id=_id(field(obj, "payment_intent", "")),
            amount_disputed=int(field(obj, "amount", 0)),
            reason="dispute",
        )
        return "dispute lost"
    return "ignored"


def payments_for(*, tenant: Tenant, limit: int = 50) -> list[Payment]:
    """The tenant's payments, newest first (abandoned ones, pending for a day, left out)."""
    from datetime import timedelta

    stale = Q(status=Payment.Status.PENDING) & Q(created_at__lt=timezone.now() - timedelta(days=1))
    return list(Payment.objects.filter(tenant=tenant).exclude(stale).select_related("pack")[:limit])
