"""Low-balance alerts: one email each time a tenant's available balance falls below its
threshold, not one per request.

`balance_alert_check` runs inside the transaction that changed the balance (a capture,
a grant, a release): a single conditional UPDATE disarms the alert and stamps it when the
available balance is below the threshold, and the email is sent by a Dramatiq actor
after that transaction commits; the alert re-arms (the same UPDATE) once the available
balance is back at or above the threshold."""

from __future__ import annotations

from django.db import transaction
from django.db.models import Case, F, Q, Value, When
from django.utils import timezone

from billing.models import BalanceAlert, CreditAccount


def balance_alert_check(*, tenant_id: int, available: int) -> bool:
    """Fire (disarm + send after commit) or re-arm the tenant's alert for `available`
    credits; True when an email was scheduled.

    One conditional UPDATE flips `armed` exactly when it is wrong for `available` (armed
    and below the threshold: fire; disarmed and at or above it: re-arm), stamping
    `last_fired_at` when it fires. So a tenant without an alert, or whose alert is
    already right, costs one UPDATE that matches nothing; a flip costs one more
    statement, to tell a firing from a re-arming by the stamp."""
    fired_at = timezone.now()
    below = Q(threshold__gt=available)
    flipped = BalanceAlert.objects.filter(
        Q(armed=True, threshold__gt=available) | Q(armed=False, threshold__lte=available), tenant_id=tenant_id
    ).update(
        armed=Case(When(below, then=Value(False)), default=Value(True)),
        last_fired_at=Case(When(below, then=Value(fired_at)), default=F("last_fired_at")),
    )
    if (
        not flipped
        or not BalanceAlert.objects.filter(tenant_id=tenant_id, armed=False, last_fired_at=fired_at).exists()
    ):
        return False
    from billing.actors import low_balance_notify

    stamp = fired_at.isoformat()
    transaction.on_commit(lambda: low_balance_notify.send(tenant_id, stamp))
    return True


def balance_alert_due_sql(connection) -> str:
    """A boolean SQL expression, for the RETURNING clause of an UPDATE of
    billing_creditaccount (`billing.services.update_returning`): whether the tenant's
    alert needs a flip for the row's new available balance (balance - held), the same
    condition as balance_alert_check's UPDATE. So a settle calls balance_alert_check
    only when it will match a row, and a tenant without an alert, or whose alert is
    already right, costs no statement at all (issue 20). Read in the statement that
    changed the balance, under its row lock: as current as the UPDATE it replaces."""
    qn = connection.ops.quote_name
    alert, account = BalanceAlert._meta, CreditAccount._meta
    table, tenant = qn(alert.db_table), qn(alert.get_field("tenant").column)
    threshold, armed = qn(alert.get_field("threshold").column), qn(alert.get_field("armed").column)
    acc = qn(account.db_table)
    available = f"({acc}.{qn('balance')} - {acc}.{qn('held')})"
    return (
        f"EXISTS (SELECT 1 FROM {table} WHERE {table}.{tenant} = {acc}.{qn(account.get_field('tenant').column)} AND "
        f"(({table}.{armed} AND {table}.{threshold} > {available}) OR "
        f"(NOT {table}.{armed} AND {table}.{threshold} <= {available})))"
    )


def balance_alert_set(*, tenant, threshold: int) -> BalanceAlert:
    """Set the threshold in credits (0 turns the alert off); the alert is armed again."""
    if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 0 or threshold > 10**12:
        from billing.errors import InvalidAmount

        raise InvalidAmount("The threshold must be a whole number of credits, 0 or more.", param="threshold")
    alert, _ = BalanceAlert.objects.update_or_create(tenant=tenant, defaults={"threshold": threshold, "armed": True})
    return alert
