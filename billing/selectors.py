"""Reads for balances and the ledger."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import F, Sum

from billing.models import CreditAccount, Hold, LedgerEntry


@dataclass
class Mismatch:
    tenant_id: int
    tenant: str
    problem: str


def ledger_reconcile() -> list[Mismatch]:
    """Recompute every balance and held amount from the ledger and the open holds."""
    problems: list[Mismatch] = []
    sums = {
        row["tenant_id"]: row
        for row in LedgerEntry.objects.values("tenant_id").annotate(amount=Sum("amount"), held=Sum("held_delta"))
    }
    open_holds = {
        row["tenant_id"]: row["s"]
        for row in Hold.objects.filter(status=Hold.Status.OPEN).values("tenant_id").annotate(s=Sum("amount"))
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
        if account.balance < 0 or account.held > account.balance:
            problems.append(Mismatch(account.tenant_id, account.tenant.name, "negative available balance"))
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


USAGE_GROUPS = ("day", "model", "key")


def usage_summary(*, tenant, start, end, group_by: str) -> list[dict]:
    """Usage records of one tenant between two dates (inclusive, UTC), grouped."""
    from django.db.models import Count, Q
    from django.db.models.functions import TruncDate

    from billing.models import UsageRecord

    rows = UsageRecord.objects.filter(tenant=tenant, created_at__date__gte=start, created_at__date__lte=end)
    if group_by == "day":
        rows = rows.annotate(group=TruncDate("created_at")).values("group")
    elif group_by == "model":
        rows = rows.values(group=F("model"))
    else:
        rows = rows.values(group=F("api_key__prefix"))
    rows = rows.annotate(
        requests=Count("id"),
        images=Sum("images"),
        pixels=Sum("pixels"),
        credits=Sum("credits_charged"),
        succeeded=Count("id", filter=Q(outcome="succeeded")),
        failed=Count("id", filter=Q(outcome="failed")),
        refused=Count("id", filter=Q(outcome__in=["refused", "blocked"])),
    ).order_by("group")
    result = []
    for row in rows:
        group = row.pop("group")
        result.append(
            {
                group_by: group.isoformat() if hasattr(group, "isoformat") else group,
                **{k: int(v or 0) for k, v in row.items()},
            }
        )
    return result


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
