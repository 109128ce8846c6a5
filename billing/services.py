"""The money path. Lock, check, write: every change to a balance is one short
transaction that updates CreditAccount with F() and appends a LedgerEntry whose
idempotency key makes a repeat a no-op. No lock is ever held while a model runs."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime

from django.db import IntegrityError, transaction
from django.db.models import F, Sum
from django.utils import timezone

from accounts.models import APIKey, Tenant
from billing.alerts import balance_alert_check
from billing.errors import InsufficientCredits, InvalidAmount, KeyBudgetExceeded, PriceNotConfigured
from billing.models import CreditAccount, Hold, LedgerEntry, Price

logger = logging.getLogger(__name__)

# Refuse grants beyond this many credits in one go (a typo guard, not a business rule).
MAX_GRANT = 10**12


def account_for(*, tenant: Tenant) -> CreditAccount:
    account, _ = CreditAccount.objects.get_or_create(tenant=tenant)
    return account


def _append(
    *,
    tenant_id: int,
    kind: str,
    amount: int,
    held_delta: int,
    key: str,
    job=None,
    actor: str = "system",
    note: str = "",
) -> LedgerEntry:
    """Append a ledger row for an account row that the caller has just updated (so locked)."""
    balance, held = CreditAccount.objects.filter(tenant_id=tenant_id).values_list("balance", "held").get()
    return LedgerEntry.objects.create(
        tenant_id=tenant_id,
        kind=kind,
        amount=amount,
        held_delta=held_delta,
        balance_after=balance,
        held_after=held,
        job=job,
        actor=actor,
        note=note,
        idempotency_key=key,
    )


def credits_grant(
    *, tenant: Tenant, amount: int, actor: str = "operator", note: str = "", idempotency_key: str | None = None
) -> LedgerEntry:
    """Add (or, negative, remove) credits through the ledger. Removing more than is
    available is refused: held credits belong to jobs in flight."""
    if not isinstance(amount, int) or isinstance(amount, bool) or amount == 0 or abs(amount) > MAX_GRANT:
        raise InvalidAmount(f"The amount must be a non-zero whole number of credits up to {MAX_GRANT}.", param="amount")
    key = idempotency_key or f"grant:{tenant.pk}:{uuid.uuid4().hex}"
    with transaction.atomic():
        account_for(tenant=tenant)
        existing = LedgerEntry.objects.filter(idempotency_key=key).first()
        if existing is not None:
            return existing
        query = CreditAccount.objects.filter(tenant=tenant)
        if amount < 0:
            query = query.filter(balance__gte=F("held") - amount)
        if not query.update(balance=F("balance") + amount):
            account = CreditAccount.objects.get(tenant=tenant)
            raise InvalidAmount(
                f"Cannot remove {-amount} credits: only {account.available} are available "
                f"({account.held} are held by jobs in flight).",
                param="amount",
            )
        kind = LedgerEntry.Kind.GRANT if amount > 0 else LedgerEntry.Kind.ADJUSTMENT
        entry = _append(tenant_id=tenant.pk, kind=kind, amount=amount, held_delta=0, key=key, actor=actor, note=note)
        balance_alert_check(tenant_id=tenant.pk, available=entry.balance_after - entry.held_after)
        return entry


def price_quote(*, model, kind: str, size: str, quality: str, n: int) -> int:
    """Credits for n images of `model`: the matching Price row's credits_per_image times n.

    A row matches when each of its kind, size and quality equals the request's or is ''
    (any). Of the matching rows the most specific wins, the dimensions compared in order:
    a row naming the kind beats any row for all kinds, then one naming the size, then one
    naming the quality (so kind+size+quality > kind+size > kind > size+quality > size >
    quality > the model's catch-all row).

    A model the operator marked `is_free` costs 0 whatever its rows say. Otherwise it fails
    closed: no matching row raises PriceNotConfigured (400; the caller has held nothing
    and queued nothing yet). Integers only: credits_per_image is an integer column and n
    must be an int, so no float ever reaches a price.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise TypeError(f"n must be a whole number of images, at least 1 (got {n!r})")
    if model.is_free:
        return 0
    rows = Price.objects.filter(model=model, kind__in=[kind, ""], size__in=[size, ""], quality__in=[quality, ""])
    best: tuple[tuple[bool, bool, bool], int] | None = None
    for row in rows:
        rank = (row.kind != "", row.size != "", row.quality != "")
        if best is None or rank > best[0]:
            best = (rank, row.credits_per_image)
    if best is not None:
        return best[1] * n
    logger.warning(
        "No price for model %s (kind %s, size %s, quality %s): request refused", model.public_id, kind, size, quality
    )
    raise PriceNotConfigured(
        f"The model '{model.public_id}' has no price for {kind} requests of size {size} at quality {quality}, "
        "so it cannot be used for this request. Try another model or size, or ask your platform operator "
        "to configure its price."
    )


def _month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def key_month_spend(*, api_key: APIKey, now: datetime | None = None) -> int:
    """Credits this key has captured or holds open since the start of the month (UTC)."""
    since = _month_start(now or timezone.now())
    rows = Hold.objects.filter(api_key=api_key, created_at__gte=since)
    captured = rows.filter(status=Hold.Status.CAPTURED).aggregate(s=Sum("captured"))["s"] or 0
    held = rows.filter(status=Hold.Status.OPEN).aggregate(s=Sum("amount"))["s"] or 0
    return captured + held


def credits_hold(*, tenant: Tenant, api_key: APIKey | None, job, amount: int) -> Hold:
    """Reserve `amount` credits for `job`. Must run inside the transaction that creates
    the job, so a refusal (402) leaves neither a hold nor a job."""
    assert transaction.get_connection().in_atomic_block, "credits_hold must run inside the job's transaction"
    if api_key is not None and api_key.monthly_credit_limit is not None:
        # Serialise this key's spends so two requests cannot both fit under the limit.
        APIKey.objects.select_for_update().filter(pk=api_key.pk).first()
        spent = key_month_spend(api_key=api_key)
        if spent + amount > api_key.monthly_credit_limit:
            raise KeyBudgetExceeded(
                f"This API key's monthly budget of {api_key.monthly_credit_limit} credits is used up "
                f"({spent} spent or held); this request costs {amount} credits."
            )
    # One conditional UPDATE: the check and the write cannot be separated by another request.
    query = CreditAccount.objects.filter(tenant=tenant, balance__gte=F("held") + amount)
    if not query.update(held=F("held") + amount):
        account = account_for(tenant=tenant)  # (a tenant without an account row yet gets one)
        if not query.update(held=F("held") + amount):
            account.refresh_from_db()
            raise InsufficientCredits(
                f"Insufficient credits: this request costs {amount} credits and your available balance is "
                f"{account.available} credits ({account.balance} total, {account.held} held by requests in flight)."
            )
    hold = Hold.objects.create(job=job, tenant=tenant, api_key=api_key, amount=amount)
    _append(tenant_id=tenant.pk, kind=LedgerEntry.Kind.HOLD, amount=0, held_delta=amount, key=f"hold:{job.pk}", job=job)
    return hold


def _settle(*, job, charge: int | None) -> Hold | None:
    """Capture (charge is an int) or release (charge is None) the job's hold, once.
    No savepoints: any failure here fails the caller's whole transaction."""
    with transaction.atomic(savepoint=False):
        hold = Hold.objects.select_for_update().filter(job=job).first()
        if hold is None or hold.status != Hold.Status.OPEN:
            return hold  # already settled: a second run of the actor is a no-op
        if charge is None:
            kind, amount, status = LedgerEntry.Kind.RELEASE, 0, Hold.Status.RELEASED
        else:
            kind, amount, status = LedgerEntry.Kind.CAPTURE, -min(charge, hold.amount), Hold.Status.CAPTURED
        CreditAccount.objects.filter(tenant_id=hold.tenant_id).update(
            balance=F("balance") + amount, held=F("held") - hold.amount
        )
        try:
            with transaction.atomic(savepoint=False):
                entry = _append(
                    tenant_id=hold.tenant_id,
                    kind=kind,
                    amount=amount,
                    held_delta=-hold.amount,
                    key=f"{kind}:{job.pk}",
                    job=job,
                )
        except IntegrityError:
            raise RuntimeError(f"ledger already has a {kind} for job {job.pk} but its hold was open") from None
        hold.status = status
        hold.captured = -amount
        hold.settled_at = timezone.now()
        hold.save(update_fields=["status", "captured", "settled_at"])
        balance_alert_check(tenant_id=hold.tenant_id, available=entry.balance_after - entry.held_after)
        return hold


def hold_capture(*, job, charge: int) -> Hold | None:
    """Charge `charge` credits (at most the hold) and free the rest. Idempotent per job."""
    return _settle(job=job, charge=charge)


def hold_release(*, job) -> Hold | None:
    """Free the whole hold without charging. Idempotent per job."""
    return _settle(job=job, charge=None)
