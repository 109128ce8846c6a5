"""Emails about money (sent by billing.actors, never inside a money transaction)."""

from __future__ import annotations

from django.db.models import F

from billing.models import BalanceAlert


def low_balance_email_send(*, tenant_id: int, fired_at: str) -> int:
    """Send the alert that fired at `fired_at` to the tenant's owners and admins, once:
    a second run of the actor for the same firing sends nothing. Returns emails sent."""
    from datetime import datetime

    from django.conf import settings
    from django.core.mail import send_mail

    from accounts.models import Membership
    from billing.models import CreditAccount

    stamp = datetime.fromisoformat(fired_at)
    claimed = (
        BalanceAlert.objects.filter(tenant_id=tenant_id, last_fired_at=stamp)
        .exclude(last_sent_at=F("last_fired_at"))
        .update(last_sent_at=F("last_fired_at"))
    )
    if not claimed:
        return 0
    alert = BalanceAlert.objects.select_related("tenant").get(tenant_id=tenant_id)
    account = CreditAccount.objects.filter(tenant_id=tenant_id).first()
    available = account.available if account else 0
    recipients = sorted(
        {
            m.user.email
            for m in Membership.objects.filter(
                tenant_id=tenant_id, role__in=[Membership.Role.OWNER, Membership.Role.ADMIN]
            ).select_related("user")
            if m.user.email
        }
    )
    if not recipients:
        return 0
    top_up = f"\nAdd credits: {settings.PUBLIC_BASE_URL}{settings.TOP_UP_URL}\n" if settings.TOP_UP_URL else ""
    return send_mail(
        f"{settings.ACCOUNT_EMAIL_SUBJECT_PREFIX}Low balance: {available} credits left",
        f"The available balance of {alert.tenant.name} is {available} credits, below your alert threshold of "
        f"{alert.threshold} credits.\n{top_up}\nYou will get this email again the next time the balance falls "
        "below the threshold after rising above it.\n",
        None,
        recipients,
    )
