"""Reads for balances and the ledger."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.db.models import Count, F, Sum

from billing.models import CreditAccount, Hold, LedgerEntry


@dataclass
class Mismatch:
    tenant_id: int
    tenant: str
    problem: str


def ledger_reconcile() -> list[Mismatch]:
    """Recompute every balance and held amount from the ledger and the open holds (and the
    count of open holds, which the in-flight cap reads)."""
    problems: list[Mismatch] = []
    sums = {
        row["tenant_id"]: row
        for row in LedgerEntry.objects.values("tenant_id").annotate(amount=Sum("amount"), held=Sum("held_delta"))
    }
    open_holds, open_counts = {}, {}
    holds = Hold.objects.filter(status=Hold.Status.OPEN).values("tenant_id")
    for row in holds.annotate(s=Sum("amount"), n=Count("id")):
        open_holds[row["tenant_id"]], open_counts[row["tenant_id"]] = row["s"], row["n"]
    reversed_taken = {
        row["tenant_id"]: -row["s"]
        for row in LedgerEntry.objects.filter(kind=LedgerEntry.Kind.REVERSAL, amount__lt=0)
        .values("tenant_id")
        .annotate(s=Sum("amount"))
    }
    for account in CreditAccount.objects.select_related("tenant"):
        row = sums.get(account.tenant_id, {"amount": 0, "held": 0})
        if account.balance != (row["amount"] or 0):
            problems.append(
                Mismatch(
                    account.tenant_id, account.tenant.name, f"balance {account.balance} != ledger {row['amount'] or 0}"
                )
            )
        if account.held != (row["held"] or 0):
            problems.append(
                Mismatch(account.tenant_id, account.tenant.name, f"held {account.held} != ledger {row['held'] or 0}")
            )
        if account.held != open_holds.get(account.tenant_id, 0):
            problems.append(
                Mismatch(
                    account.tenant_id,
                    account.tenant.name,
                    f"held {account.held} != open holds {open_holds.get(account.tenant_id, 0)}",
                )
            )
        if account.holds_open != open_counts.get(account.tenant_id, 0):
            problems.append(
                Mismatch(
                    account.tenant_id,
                    account.tenant.name,
                    f"holds_open {account.holds_open} != open holds {open_counts.get(account.tenant_id, 0)}",
                )
            )
        # Only a reversal can leave a balance below what is held (a debt, listed by
        # credits_owed): a debt without one, or larger than its reversals took, is a fault.
        if account.owed > reversed_taken.get(account.tenant_id, 0):
            problems.append(
                Mismatch(
                    account.tenant_id,
                    account.tenant.name,
                    f"negative available balance: owes {account.owed} credits, more than refunds and disputes "
                    f"took back ({reversed_taken.get(account.tenant_id, 0)})",
                )
            )
    last = {}
    for entry in LedgerEntry.objects.order_by("tenant_id", "id").values("tenant_id", "balance_after", "amount", "id"):
        previous = last.get(entry["tenant_id"], 0)
        if previous + entry["amount"] != entry["balance_after"]:
            problems.append(
                Mismatch(
                    entry["tenant_id"],
                    str(entry["tenant_id"]),
                    f"ledger row {entry['id']} balance_after does not follow the previous row",
                )
            )
        last[entry["tenant_id"]] = entry["balance_after"]
    return problems


@dataclass
class Owed:
    """A tenant's debt: `credits` it must pay before it can spend again (held credits
    counted as spent), and the payments whose refunds or disputes took them back."""

    tenant_id: int
    tenant: str
    credits: int
    balance: int
    held: int
    payments: list[str]


def credits_owed() -> list[Owed]:
    """Every tenant that owes credits (CreditAccount.owed > 0: a refund or dispute took
    back credits already spent or held), by tenant id."""
    from billing.models import Payment

    owed = []
    for account in CreditAccount.objects.filter(held__gt=F("balance")).select_related("tenant").order_by("tenant_id"):
        payments = list(
            Payment.objects.filter(tenant_id=account.tenant_id, credits_reversed__gt=0)
            .order_by("id")
            .values_list("external_id", flat=True)
        )
        owed.append(Owed(account.tenant_id, account.tenant.name, account.owed, account.balance, account.held, payments))
    return owed


def payments_uncredited() -> list:
    """Payments the customer paid that granted nothing (`mismatch`: another amount or
    currency than the pack's): credits owed to the customer until the operator settles."""
    from billing.models import Payment

    return list(
        Payment.objects.filter(status=Payment.Status.MISMATCH)
        .annotate(returned=F("amount_refunded") + F("amount_disputed"))
        .filter(returned__lt=F("amount"))  # a mismatch refunded in full owes nothing
        .select_related("tenant")
        .order_by("id")
    )


def payments_unrecovered() -> list:
    """Payments with credits a refund or dispute never took back (left by a version
    before reversals reached held and spent credits; the payment's next event takes them)."""
    from billing.models import Payment

    return list(Payment.objects.filter(credits_unrecovered__gt=0).select_related("tenant").order_by("id"))


USAGE_GROUPS = ("day", "model", "key")

# The columns of every usage row, in the order CSV exports write them (new columns are
# appended, so positional readers of older exports keep working). Each request counts in
# exactly one of succeeded/failed/cancelled/refused/pending (their sum is `requests`), and
# every charged credit in one of credits_succeeded/credits_cancelled (their sum is
# `credits`, which equals the ledger's captures): a succeeded job pays its quote pro rata
# to the images made, a cancelled one the steps it ran, a failed, refused or blocked
# request nothing, and one still in flight nothing yet (its credits are held, not charged).
USAGE_COLUMNS = (
    "requests",
    "succeeded",
    "failed",
    "refused",  # refused (402, 429) or blocked by moderation (the prompt, or every output image)
    "images",
    "pixels",
    "credits",
    "cancelled",
    "pending",  # queued or running at the time of the read
    "credits_succeeded",
    "credits_cancelled",
    # The output check (issue 25; UsageRecord.output_action): images it withheld (never
    # charged), and requests whose delivered images it blurred or flagged.
    "images_withheld",
    "output_blurred",
    "output_flagged",
)


def usage_summary(*, tenant, start, end, group_by: str) -> list[dict]:
    """Usage records of one tenant between two dates (inclusive, UTC), grouped by
    `group_by` (day, model or key); each row has the group and USAGE_COLUMNS (integers;
    credits in credits)."""
    from django.db.models import Count, Q
    from django.db.models.functions import TruncDate

    from billing.models import UsageRecord

    Outcome = UsageRecord.Outcome
    rows = UsageRecord.objects.filter(tenant=tenant, created_at__date__gte=start, created_at__date__lte=end)
    if group_by == "day":
        rows = rows.annotate(group=TruncDate("created_at")).values("group")
    elif group_by == "model":
        rows = rows.values(group=F("model"))
    else:
        rows = rows.values(group=F("api_key__prefix"))
    rows = rows.annotate(
        requests=Count("id"),
        succeeded=Count("id", filter=Q(outcome=Outcome.SUCCEEDED)),
        failed=Count("id", filter=Q(outcome=Outcome.FAILED)),
        refused=Count("id", filter=Q(outcome__in=[Outcome.REFUSED, Outcome.BLOCKED])),
        images=Sum("images"),
        pixels=Sum("pixels"),
        credits=Sum("credits_charged"),
        cancelled=Count("id", filter=Q(outcome=Outcome.CANCELLED)),
        pending=Count("id", filter=Q(outcome=Outcome.PENDING)),
        credits_succeeded=Sum("credits_charged", filter=Q(outcome=Outcome.SUCCEEDED)),
        credits_cancelled=Sum("credits_charged", filter=Q(outcome=Outcome.CANCELLED)),
        images_withheld=Sum("images_withheld"),
        output_blurred=Count("id", filter=Q(output_action=UsageRecord.OutputAction.BLURRED)),
        output_flagged=Count("id", filter=Q(output_action=UsageRecord.OutputAction.FLAGGED)),
    ).order_by("group")
    result = []
    for row in rows:
        group = row.pop("group")
        result.append(
            {
                group_by: group.isoformat() if hasattr(group, "isoformat") else group,
                **{k: int(row[k] or 0) for k in USAGE_COLUMNS},
            }
        )
    return result


def usage_totals(rows: list[dict]) -> dict[str, int]:
    """The sum of every USAGE_COLUMNS column over usage_summary rows."""
    return {k: sum(r[k] for r in rows) for k in USAGE_COLUMNS}


def credits_available(*, tenant_id: int) -> int:
    """Credits the tenant may still spend (balance minus held); 0 without an account."""
    account = CreditAccount.objects.filter(tenant_id=tenant_id).first()
    return account.available if account else 0


def account_get(*, tenant) -> CreditAccount:
    """The tenant's account (an unsaved empty one when it has none yet)."""
    return CreditAccount.objects.filter(tenant=tenant).first() or CreditAccount(tenant=tenant)


def usage_window(*, since) -> dict:
    """Every tenant's traffic since `since`: requests, images, credits, outcomes, failure rate."""
    from django.db.models import Count, Q

    from billing.models import UsageRecord

    row = UsageRecord.objects.filter(created_at__gte=since).aggregate(
        requests=Count("id"),
        images=Sum("images"),
        credits=Sum("credits_charged"),
        succeeded=Count("id", filter=Q(outcome=UsageRecord.Outcome.SUCCEEDED)),
        failed=Count("id", filter=Q(outcome=UsageRecord.Outcome.FAILED)),
    )
    row = {k: int(v or 0) for k, v in row.items()}
    finished = row["succeeded"] + row["failed"]
    row["failure_rate"] = f"{100 * row['failed'] / finished:.1f} %" if finished else "–"
    return row


def vouchers_enabled() -> bool:
    from django.conf import settings

    return bool(settings.VOUCHERS_ENABLED)


# ---- Prices as data (GET /v1/models `pricing`, the dashboard's prices page) ----


def price_best(rows, *, kind: str, size: str, quality: str) -> int | None:
    """The one rule for which Price row prices a request (billing.services.price_quote):
    of the rows whose kind, size and quality each equal the request's or are '' (any),
    the most specific wins, compared kind first, then size, then quality. Returns its
    credits per image, or None when no row matches. `rows`: Price rows of one model."""
    best: tuple[tuple[bool, bool, bool], int] | None = None
    for row in rows:
        if row.kind not in (kind, "") or row.size not in (size, "") or row.quality not in (quality, ""):
            continue
        rank = (row.kind != "", row.size != "", row.quality != "")
        if best is None or rank > best[0]:
            best = (rank, row.credits_per_image)
    return None if best is None else best[1]


def credits_money(credits: int) -> tuple[Decimal, str] | None:
    """What `credits` are worth as (amount in whole units, ISO currency in lower case),
    from settings CREDIT_VALUE and CREDIT_CURRENCY: 16 credits at 0.001 usd ->
    (Decimal("0.016"), "usd"). None when CREDIT_VALUE is empty (credits only). Exact:
    Decimal arithmetic, no floats."""
    from django.conf import settings

    if not settings.CREDIT_VALUE:
        return None
    return Decimal(int(credits)) * Decimal(settings.CREDIT_VALUE.strip()), settings.CREDIT_CURRENCY


@dataclass(frozen=True)
class PriceLine:
    """The price of one image of a model for one request kind, size and quality."""

    kind: str  # generate | edit | variation
    size: str  # "1024x1024"
    quality: str  # the resolved quality ("standard", "hd", "low"...)
    credits: int  # credits per image (integer; what price_quote charges for n=1)
    amount: Decimal | None  # the same in whole units of `currency`; None: CREDIT_VALUE unset
    currency: str  # ISO 4217, lower case ("usd"); "" when amount is None

    def as_dict(self) -> dict[str, object]:
        """The `pricing` item of GET /v1/models (docs/api.md): amount as a decimal string
        ("0.016"), currency in capitals ("USD"), both null when CREDIT_VALUE is unset."""
        return {
            "kind": self.kind,
            "size": self.size,
            "quality": self.quality,
            "credits": self.credits,
            "amount": None if self.amount is None else format(self.amount.normalize(), "f"),
            "currency": self.currency.upper() or None,
        }


def model_price_list(
    *, model, kinds: tuple[str, ...], sizes: tuple[str, ...], qualities: tuple[str, ...], rows=None
) -> list[PriceLine]:
    """The price of one image for every kind x size x quality the caller names (the
    model's API profile, images/profiles.py: what a request can ask for), resolved by the
    same rule as billing.services.price_quote. A combination without a matching row is
    left out (a request for it is refused, 400 `price_not_configured`); a model marked
    `is_free` costs 0 everywhere. `rows`: the model's Price rows when already loaded
    (prefetched), else read here. Ordered kind, size, quality as given."""
    from billing.models import Price

    rows = list(Price.objects.filter(model=model) if rows is None else rows)
    lines = []
    for kind in kinds:
        for size in sizes:
            for quality in qualities:
                credits = 0 if model.is_free else price_best(rows, kind=kind, size=size, quality=quality)
                if credits is None:
                    continue
                money = credits_money(credits)
                amount, currency = money if money else (None, "")
                lines.append(PriceLine(kind, size, quality, credits, amount, currency))
    return lines
