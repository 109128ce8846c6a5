"""Low-balance alerts: one email each time a tenant's available balance falls below its
threshold, not one per request.

`balance_alert_check` runs inside the transaction that changed the balance (a capture,
a grant, a release): a single conditional UPDATE disarms the alert and stamps it when the
available balance is below the threshold, and the email is sent by a Dramatiq actor
after that transaction commits; the alert re-arms (again one conditional UPDATE) once
the available balance is back at or above the threshold."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from billing.models import BalanceAlert


def balance_alert_check(*, tenant_id: int, available: int) -> bool:
    """Fire (disarm + send after commit) or re-arm the tenant's alert for `available`
    credits; True when an email was scheduled. Tenants without a threshold cost one
    UPDATE that matches nothing."""
    fired_at = timezone.now()
    fired = BalanceAlert.objects.filter(tenant_id=tenant_id, armed=True, threshold__gt=available).update(
        armed=False, last_fired_at=fired_at
    )
    if fired:
        from billing.actors import low_balance_notify

        stamp = fired_at.isoformat()
        transaction.on_commit(lambda: low_balance_notify.send(tenant_id, stamp))
        return True
    BalanceAlert.objects.filter(tenant_id=tenant_id, armed=False, threshold__lte=available).update(armed=True)
    return False


def balance_alert_set(*, tenant, threshold: int) -> BalanceAlert:
    """Set the threshold in credits (0 turns the alert off); the alert is armed again."""
    if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 0 or threshold > 10**12:
        from billing.errors import InvalidAmount

        raise InvalidAmount("The threshold must be a whole number of credits, 0 or more.", param="threshold")
    alert, _ = BalanceAlert.objects.update_or_create(tenant=tenant, defaults={"threshold": threshold, "armed": True})
    return alert
