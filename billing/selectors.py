"""Reads for balances and the ledger."""
from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Sum

from billing.models import CreditAccount, Hold, LedgerEntry


@dataclass
class Mismatch:
    tenant_id: int
    tenant: str
    problem: str


def ledger_reconcile() -> list[Mismatch]:
    """Recompute every balance and held amount from the ledger and the open holds."""
    problems: list[Mismatch] = []
    sums = {row["tenant_id"]: row for row in
            LedgerEntry.objects.values("tenant_id").annotate(amount=Sum("amount"), held=Sum("held_delta"))}
    open_holds = {row["tenant_id"]: row["s"] for row in
                  Hold.objects.filter(status=Hold.Status.OPEN).values("tenant_id").annotate(s=Sum("amount"))}
    for account in CreditAccount.objects.select_related("tenant"):
        row = sums.get(account.tenant_id, {"amount": 0, "held": 0})
        if account.balance != (row["amount"] or 0):
            problems.append(Mismatch(account.tenant_id, account.tenant.name,
                                     f"balance {account.balance} != ledger {row['amount'] or 0}"))
        if account.held != (row["held"] or 0):
            problems.append(Mismatch(account.tenant_id, account.tenant.name,
                                     f"held {account.held} != ledger {row['held'] or 0}"))
        if account.held != open_holds.get(account.tenant_id, 0):
            problems.append(Mismatch(account.tenant_id, account.tenant.name,
                                     f"held {account.held} != open holds {open_holds.get(account.tenant_id, 0)}"))
        if account.balance < 0 or account.held > account.balance:
            problems.append(Mismatch(account.tenant_id, account.tenant.name, "negative available balance"))
    last = {}
    for entry in LedgerEntry.objects.order_by("tenant_id", "id").values("tenant_id", "balance_after", "amount", "id"):
        previous = last.get(entry["tenant_id"], 0)
        if previous + entry["amount"] != entry["balance_after"]:
            problems.append(Mismatch(entry["tenant_id"], str(entry["tenant_id"]),
                                     f"ledger row {entry['id']} balance_after does not follow the previous row"))
        last[entry["tenant_id"]] = entry["balance_after"]
    return problems
