"""The money path. Lock, check, write: every change to a balance is one short
transaction that updates CreditAccount with F() and appends a LedgerEntry whose
idempotency key makes a repeat a no-op. No lock is ever held while a model runs."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime

from django.db import IntegrityError, connections, transaction
from django.db.models import Case, F, IntegerField, Q, QuerySet, Sum, Value, When
from django.db.models.expressions import RawSQL
from django.db.models.functions import Greatest, Least
from django.db.models.signals import post_delete, post_save
from django.db.models.sql import UpdateQuery
from django.utils import timezone

from accounts.models import APIKey, Tenant
from billing.alerts import balance_alert_check, balance_alert_due_sql
from billing.errors import InsufficientCredits, InvalidAmount, KeyBudgetExceeded, PriceNotConfigured
from billing.models import CreditAccount, Hold, LedgerEntry, Price

logger = logging.getLogger(__name__)

# Refuse grants beyond this many credits in one go (a typo guard, not a business rule).
MAX_GRANT = 10**12


def account_for(*, tenant: Tenant) -> CreditAccount:
    account, _ = CreditAccount.objects.get_or_create(tenant=tenant)
    return account


def _returning_supported(connection) -> bool:
    """Whether the database takes UPDATE ... RETURNING (PostgreSQL; SQLite >= 3.35, the
    version from which Django reports RETURNING for inserts)."""
    return connection.features.can_return_columns_from_insert


def update_returning(
    queryset: QuerySet, returning: Sequence[str], *, extra: Sequence[str] = (), **values
) -> list[tuple]:
    """`queryset.update(**values)` that also returns the `returning` columns (attnames,
    in that order) of every row it updated, after the update: one statement instead of
    an UPDATE and a re-read (issue 20: the money path's round trips).

    The ORM builds the UPDATE (F() expressions, quoting, conversions of the written
    values); only ` RETURNING cols` is appended, which PostgreSQL and SQLite >= 3.35 both
    take (Django 5.2's ORM has no update-returning). `extra`: SQL expressions returned
    after the columns (trusted code only, never user input). Values come back raw (no
    from_db converters): use it for integer, boolean and id columns. On a database without RETURNING it
    falls back to reading the rows' ids, updating those and reading them again (3
    statements), which is exact only inside a transaction that holds the write lock
    (SQLite's BEGIN IMMEDIATE does)."""
    db = queryset.db
    connection = connections[db]
    if not _returning_supported(connection):
        ids = list(queryset.values_list("pk", flat=True))
        if not ids or not queryset.filter(pk__in=ids).update(**values):
            return []
        rows = queryset.model._base_manager.using(db).filter(pk__in=ids)
        names = [f"_extra{i}" for i in range(len(extra))]
        rows = rows.annotate(**{name: RawSQL(sql, ()) for name, sql in zip(names, extra, strict=True)})
        return list(rows.values_list(*returning, *names))
    query = queryset.query.chain(UpdateQuery)
    query.add_update_values(values)
    sql, params = query.get_compiler(db).as_sql()
    opts = queryset.model._meta
    columns = ", ".join([*(connection.ops.quote_name(opts.get_field(name).column) for name in returning), *extra])
    with transaction.mark_for_rollback_on_error(using=db), connection.cursor() as cursor:
        cursor.execute(f"{sql} RETURNING {columns}", params)
        return cursor.fetchall()


def _ledger_insert(
    *,
    tenant_id: int,
    kind: str,
    amount: int,
    held_delta: int,
    balance_after: int,
    held_after: int,
    key: str,
    job=None,
) -> LedgerEntry:
    """Append a ledger row for an account row that the caller has just updated (so
    locked), with the balance and held amount that its UPDATE ... RETURNING gave back."""
    return LedgerEntry.objects.create(
        tenant_id=tenant_id,
        kind=kind,
        amount=amount,
        held_delta=held_delta,
        balance_after=balance_after,
        held_after=held_after,
        job=job,
        idempotency_key=key,
    )


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
    """The 402 for a request costing `cost` credits that `account` cannot pay (the hold
    and the pre-check): its price and the account's available and held credits."""
    return InsufficientCredits(required=cost, available=account.available, held=account.held)


def price_quote(*, model, kind: str, size: str, quality: str, n: int, action: str = "") -> int:
    """Credits for n images of `model`: the matching Price row's credits_per_image times n.

    `action`: a vendor action priced on its own (the Midjourney proxy's `mj_imagine`,
    `mj_upscale`, `mj_variation`, `mj_reroll`: images/services/midjourney.py). When the
    model has a row whose kind names it, that action is the kind matched below; without
    one the request's own `kind` prices it, as for every other request.

    A row matches when each of its kind, size and quality equals the request's or is ''
    (any). Of the matching rows the most specific wins, the dimensions compared in order:
    a row naming the kind beats any row for all kinds, then one naming the size, then one
    naming the quality (so kind+size+quality > kind+size > kind > size+quality > size >
    quality > the model's catch-all row).

    A model the operator marked `is_free` costs 0 whatever its rows say. Otherwise it fails
    closed: no matching row raises PriceNotConfigured (400; the caller has held nothing
    and queued nothing yet). Integers only: credits_per_image is an integer column and n
    must be an int, so no float ever reaches a price.

    The model's rows come from a per-process cache (`_price_rows`): a price saved in
    this process applies at once, one saved elsewhere (another web process, the admin
    of another server, `manage.py model_add`) within PRICE_CACHE_SECONDS.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise TypeError(f"n must be a whole number of images, at least 1 (got {n!r})")
    if model.is_free:
        return 0
    from billing.selectors import price_best

    rows = _price_rows(model_id=model.pk)
    if action and any(row.kind == action for row in rows):
        kind = action
    credits = price_best(rows, kind=kind, size=size, quality=quality)
    if credits is not None:
        return credits * n
    logger.warning(
        "No price for model %s (kind %s, size %s, quality %s): request refused", model.public_id, kind, size, quality
    )
    raise PriceNotConfigured(
        f"The model '{model.public_id}' has no price for {kind} requests of size {size} at quality {quality}, "
        "so it cannot be used for this request. Try another model or size, or ask your platform operator "
        "to configure its price."
    )


# Price rows per model, cached in each process (issue 20: one statement fewer per
# request). A save or delete of a Price or ImageModel row through the ORM in this process
# empties the cache at once (and again when its transaction commits); a change made in
# another process, or by a queryset update()/bulk_create (no signals), is seen here
# within this many seconds. docs/configuration.md ("Prices") says so to operators.
PRICE_CACHE_SECONDS = 5.0
_price_cache: dict[int, tuple[float, list[Price]]] = {}
_price_cache_lock = threading.Lock()


def _price_rows(*, model_id: int) -> list[Price]:
    """The model's Price rows (read-only: shared between threads), at most
    PRICE_CACHE_SECONDS old (see above)."""
    now = time.monotonic()
    cached = _price_cache.get(model_id)
    if cached is not None and cached[0] > now:
        return cached[1]
    rows = list(Price.objects.filter(model_id=model_id))
    with _price_cache_lock:
        _price_cache[model_id] = (now + PRICE_CACHE_SECONDS, rows)
    return rows


def price_cache_clear(**ignored) -> None:
    """Forget every cached price (a signal receiver: Price and ImageModel saves and
    deletes), now and again once the saving transaction commits, so no request of
    this process that reads after the commit prices with the old rows."""
    with _price_cache_lock:
        _price_cache.clear()

    def clear_again() -> None:
        with _price_cache_lock:
            _price_cache.clear()

    transaction.on_commit(clear_again)


for _signal in (post_save, post_delete):
    for _sender in (Price, "images.ImageModel"):
        _signal.connect(price_cache_clear, sender=_sender, dispatch_uid=f"price-cache-{_signal}-{_sender}")


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
    if lock and not budgeted and api_key.parent_id is None:
        # A root key without a budget, as this request read it: nothing to lock (issue 20:
        # one statement less per generation). A budget set on it meanwhile binds from the
        # next request on, which reads the key afresh (a key's save drops its cached row:
        # accounts.key_cache), as if it had been set just after this one. A key with keys
        # above it still reads them under lock below: their budgets may have changed
        # without its own row changing.
        return
    if lock:
        assert transaction.get_connection().in_atomic_block, "a locked budget check runs inside the hold's transaction"
        # Budgets as they are now (one set on an ancestor meanwhile binds too), read and
        # locked in one statement, root first: PostgreSQL locks the rows of SELECT ...
        # ORDER BY ... FOR UPDATE in the order it returns them (issue 20: one statement
        # whatever the depth, was 1 + one per budgeted key).
        depth = Case(*(When(pk=k.pk, then=Value(i)) for i, k in enumerate(lineage)), output_field=IntegerField())
        budgeted = list(
            APIKey.objects.select_for_update()
            .filter(pk__in=[k.pk for k in lineage], monthly_credit_limit__isnull=False)
            .only("pk", "prefix", "monthly_credit_limit")
            .order_by(depth)
        )
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


def _account_take(*, tenant: Tenant, amount: int) -> tuple[int, int, int] | None:
    """One conditional `UPDATE ... RETURNING`: held += amount and holds_open += 1 where
    balance >= held + amount, so the check and the write cannot be separated by another
    request. When it matches, the account row stays locked until the transaction ends,
    and (balance, held, holds_open) after it come back; None when the account cannot pay
    or has no row yet (then nothing is locked). A hold that fits leaves no debt, so it
    also clears a reversal's debt allowance."""
    rows = update_returning(
        CreditAccount.objects.filter(tenant=tenant, balance__gte=F("held") + amount),
        ("balance", "held", "holds_open"),
        held=F("held") + amount,
        holds_open=F("holds_open") + 1,
        debt_allowed=0,
    )
    return rows[0] if rows else None


def credits_hold(
    *,
    tenant: Tenant,
    api_key: APIKey | None,
    job,
    amount: int,
    locked_check: Callable[[int], None] | None = None,
) -> Hold:
    """Reserve `amount` credits for `job`. Must run inside the transaction that creates
    the job, so a refusal (402) leaves neither a hold nor a job.

    Lock, check, write, in this order on every path (so no two requests deadlock): the
    account row (locked by the conditional UPDATE that takes the credits or, when that
    matches nothing, by SELECT ... FOR UPDATE to tell why), then `locked_check` under
    that lock (the caller's in-flight cap: it gets the tenant's jobs in flight, this one
    included, from the account's `holds_open`), then the key's monthly budgets (its own and
    those above it, each under its row lock, root first: `key_budget_check`). A refusal
    raises, and the caller's transaction rolls the taken credits back. Refusals come in
    the order locked_check's (429), 402 `key_budget_exceeded`, 402 `insufficient_quota`.

    Statements when it fits (issue 20): the UPDATE ... RETURNING, the budget read (plus
    locks and spend sums where budgets exist), the hold and its ledger row."""
    assert transaction.get_connection().in_atomic_block, "credits_hold must run inside the job's transaction"
    taken = _account_take(tenant=tenant, amount=amount)
    if taken is None:  # cannot pay, or no account row yet: lock it (creating it) to say why
        locked = CreditAccount.objects.select_for_update()
        account = locked.filter(tenant=tenant).first()
        if account is None:
            account_for(tenant=tenant)
            account = locked.get(tenant=tenant)
        if locked_check is not None:
            locked_check(account.holds_open + 1)
        key_budget_check(api_key=api_key, amount=amount, lock=True)
        taken = _account_take(tenant=tenant, amount=amount)  # (a new row, or credits freed meanwhile)
        if taken is None:
            account.refresh_from_db()
            raise insufficient_credits(account=account, cost=amount)
    else:
        if locked_check is not None:
            locked_check(taken[2])
        key_budget_check(api_key=api_key, amount=amount, lock=True)
    hold = Hold.objects.create(job=job, tenant=tenant, api_key=api_key, amount=amount)
    balance, held, _ = taken
    _ledger_insert(
        tenant_id=tenant.pk,
        kind=LedgerEntry.Kind.HOLD,
        amount=0,
        held_delta=amount,
        balance_after=balance,
        held_after=held,
        key=f"hold:{job.pk}",
        job=job,
    )
    return hold


# The hold's columns that _settle's UPDATE ... RETURNING gives back (integers and ids).
_SETTLED_COLUMNS = ("id", "job_id", "tenant_id", "api_key_id", "amount", "captured")


def _settle(*, job, charge: int | None) -> Hold | None:
    """Capture (charge is an int) or release (charge is None) the job's hold, once.
    No savepoints: any failure here fails the caller's whole transaction.

    Exactly once, keyed by the job: the hold's own conditional `UPDATE ... WHERE status =
    'open' RETURNING` is the check (a second settler waits on the row lock, then matches
    nothing and gets the settled hold back), then the account's `UPDATE ... RETURNING`
    (lock order: the hold, then the account, as before; it also says whether the
    balance alert needs a flip: `balance_alert_due_sql`) and the ledger row (its key
    `capture:<job>` / `release:<job>` is unique): 3 statements, 4 or 5 when the alert
    fires or re-arms."""
    now = timezone.now()
    with transaction.atomic(savepoint=False):
        if charge is None:
            kind, status, captured = LedgerEntry.Kind.RELEASE, Hold.Status.RELEASED, Value(0)
        else:
            kind, status, captured = LedgerEntry.Kind.CAPTURE, Hold.Status.CAPTURED, Least(F("amount"), Value(charge))
        rows = update_returning(
            Hold.objects.filter(job=job, status=Hold.Status.OPEN),
            _SETTLED_COLUMNS,
            status=status,
            captured=captured,
            settled_at=now,
        )
        if not rows:
            return Hold.objects.filter(job=job).first()  # already settled: a second run of the actor is a no-op
        hold = Hold.from_db(Hold.objects.db, [*_SETTLED_COLUMNS, "status", "settled_at"], [*rows[0], status, now])
        amount = -hold.captured
        ((balance, held, alert_due),) = update_returning(
            CreditAccount.objects.filter(tenant_id=hold.tenant_id),
            ("balance", "held"),
            extra=[balance_alert_due_sql(connections[CreditAccount.objects.db])],
            balance=F("balance") + amount,
            held=F("held") - hold.amount,
            holds_open=F("holds_open") - 1,
        )
        try:
            with transaction.atomic(savepoint=False):
                _ledger_insert(
                    tenant_id=hold.tenant_id,
                    kind=kind,
                    amount=amount,
                    held_delta=-hold.amount,
                    balance_after=balance,
                    held_after=held,
                    key=f"{kind}:{job.pk}",
                    job=job,
                )
        except IntegrityError:
            raise RuntimeError(f"ledger already has a {kind} for job {job.pk} but its hold was open") from None
        if alert_due:  # (the account's UPDATE said whether the alert's UPDATE would match)
            balance_alert_check(tenant_id=hold.tenant_id, available=balance - held)
        return hold


def hold_capture(*, job, charge: int) -> Hold | None:
    """Charge `charge` credits (at most the hold) and free the rest. Idempotent per job."""
    return _settle(job=job, charge=charge)


def hold_release(*, job) -> Hold | None:
    """Free the whole hold without charging. Idempotent per job."""
    return _settle(job=job, charge=None)
