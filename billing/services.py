"""The money path. Lock, check, write: every change to a balance is one short
transaction that updates CreditAccount with F() and appends a LedgerEntry whose
idempotency key makes a repeat a no-op. No lock is ever held while a model runs."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime

from django.db import IntegrityError, transaction
from django.db.models import F, Q, Sum
from django.db.models.functions import Greatest
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


def credits_reverse(*, tenant: Tenant, credits: int, actor: str, note: str, idempotency_key: str) -> LedgerEntry:
    """Take back `credits` (or, negative, give them back) for a payment's refund or
    dispute: a `reversal` ledger row. Unlike credits_grant, taking back is never refused:
    credits held by jobs in flight and credits already spent are reached too, and what
    the balance cannot cover becomes a debt (`CreditAccount.owed`, a balance below what
    is held), which stops all spending (holds need `balance >= held + price`) until
    later credits pay it. The policy: Stripe withdraws disputed and refunded money at
    once, so the credits it bought stop being spendable at once (docs/operations.md).
    Idempotent by `idempotency_key`."""
    if not isinstance(credits, int) or isinstance(credits, bool) or credits == 0 or abs(credits) > MAX_GRANT:
        raise InvalidAmount(f"The amount must be a non-zero whole number of credits up to {MAX_GRANT}.", param="amount")
    with transaction.atomic():
        account_for(tenant=tenant)
        existing = LedgerEntry.objects.filter(idempotency_key=idempotency_key).first()
        if existing is not None:
            return existing
        # One statement (the database checks held <= balance + debt_allowed on its result):
        # the allowance grows to the debt this reversal leaves, if any.
        CreditAccount.objects.filter(tenant=tenant).update(
            balance=F("balance") - credits,
            debt_allowed=Greatest(F("debt_allowed"), F("held") - F("balance") + credits),
        )
        entry = _append(
            tenant_id=tenant.pk,
            kind=LedgerEntry.Kind.REVERSAL,
            amount=-credits,
            held_delta=0,
            key=idempotency_key,
            actor=actor,
            note=note,
        )
        balance_alert_check(tenant_id=tenant.pk, available=entry.balance_after - entry.held_after)
        return entry


def insufficient_credits(*, account: CreditAccount, cost: int) -> InsufficientCredits:
    """The 402 for a request costing `cost` credits that `account` cannot pay: one
    sentence for the hold and the pre-check. A debt is named as one (never a negative
    available balance)."""
    if account.owed:
        return InsufficientCredits(
            f"Insufficient credits: this request costs {cost} credits and your account owes {account.owed} credits "
            "(credits of a refunded or disputed payment, already spent or held). Nothing can be spent until new "
            "credits cover the debt."
        )
    return InsufficientCredits(
        f"Insufficient credits: this request costs {cost} credits and your available balance is "
        f"{account.available} credits ({account.balance} total, {account.held} held by requests in flight)."
    )


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
    """Credits captured or held open since the start of the month (UTC) by this key and
    every key below it (the keys it created, and theirs): what its budget bounds."""
    from accounts.selectors import key_subtree_ids

    since = _month_start(now or timezone.now())
    ids = key_subtree_ids(key=api_key)
    rows = Hold.objects.filter(api_key_id__in=ids, created_at__gte=since)
    totals = rows.aggregate(
        captured=Sum("captured", filter=Q(status=Hold.Status.CAPTURED)),
        held=Sum("amount", filter=Q(status=Hold.Status.OPEN)),
    )
    return (totals["captured"] or 0) + (totals["held"] or 0)


def key_budget_check(*, api_key: APIKey | None, amount: int | None, lock: bool = False) -> None:
    """The one rule for "does this key's budget allow it?": every monthly budget on the
    path from the root of the key's tree down to the key itself (a key's budget is a
    ceiling for its whole subtree, issue 19) must cover what that key's subtree has
    spent or holds this month plus `amount` credits. With `amount` None (not yet
    priced), refuses only a budget that is already used up.

    With `lock` (inside the job's transaction, from credits_hold), each budgeted key is
    locked with SELECT ... FOR UPDATE in root-first order (one order for every request,
    so no deadlock) and its limit re-read, so two requests from anywhere in one subtree
    cannot both fit under a shared budget. Without it (generation_create's pre-check
    before any fetch or decode), reads only; the hold checks again under the locks.

    Raises KeyBudgetExceeded (402 `key_budget_exceeded`) naming the key whose budget
    it is, the first from the root that does not allow it."""
    from accounts.selectors import key_lineage

    if api_key is None:
        return
    lineage = key_lineage(key=api_key)
    budgeted = [key for key in lineage if key.monthly_credit_limit is not None]
    if lock:
        assert transaction.get_connection().in_atomic_block, "a locked budget check runs inside the hold's transaction"
        # Budgets as they are now (one set on an ancestor meanwhile binds too), each row
        # locked root first and read again under its lock.
        now_budgeted = set(
            APIKey.objects.filter(pk__in=[k.pk for k in lineage], monthly_credit_limit__isnull=False).values_list(
                "pk", flat=True
            )
        )
        locked = APIKey.objects.select_for_update().only("pk", "prefix", "monthly_credit_limit")
        budgeted = [locked.get(pk=k.pk) for k in lineage if k.pk in now_budgeted]
    for key in budgeted:
        limit = key.monthly_credit_limit
        if limit is None:  # (lifted since this request read the key)
            continue
        spent = key_month_spend(api_key=key)
        if (spent < limit) if amount is None else (spent + amount <= limit):
            continue
        cost = f"; this request costs {amount} credits" if amount is not None else ""
        if key.pk == api_key.pk:
            whose = "This API key's monthly budget"
            by = ""
        else:
            whose = f"The monthly budget of the API key '{key.prefix}' that created this key"
            by = " by it and the keys it created; it is shared by all of them"
        raise KeyBudgetExceeded(
            f"{whose} of {limit} credits is used up ({spent} spent or held{by}){cost}.",
            budget_key=key.prefix,
            limit=limit,
            spent=spent,
            required=amount,
        )


def credits_hold(*, tenant: Tenant, api_key: APIKey | None, job, amount: int) -> Hold:
    """Reserve `amount` credits for `job`. Must run inside the transaction that creates
    the job, so a refusal (402) leaves neither a hold nor a job. The key's monthly
    budgets (its own and those above it) are checked under their row locks first
    (`key_budget_check`)."""
    assert transaction.get_connection().in_atomic_block, "credits_hold must run inside the job's transaction"
    key_budget_check(api_key=api_key, amount=amount, lock=True)
    # One conditional UPDATE: the check and the write cannot be separated by another request.
    query = CreditAccount.objects.filter(tenant=tenant, balance__gte=F("held") + amount)
    # A hold that fits leaves no debt, so it also clears a reversal's debt allowance.
    if not query.update(held=F("held") + amount, debt_allowed=0):
        account = account_for(tenant=tenant)  # (a tenant without an account row yet gets one)
        if not query.update(held=F("held") + amount, debt_allowed=0):
            account.refresh_from_db()
            raise insufficient_credits(account=account, cost=amount)
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
