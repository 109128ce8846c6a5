"""Billing's Dramatiq actors: thin, ids in, a service does the work."""

from __future__ import annotations

import dramatiq


@dramatiq.actor(queue_name="default", max_retries=3, time_limit=60_000, throws=())
def low_balance_notify(tenant_id: int, fired_at: str) -> None:
    """Email the tenant's owners that the available balance fell below their threshold.
    Safe twice: the service claims the firing (`fired_at`) before sending."""
    from billing.notifications import low_balance_email_send

    low_balance_email_send(tenant_id=tenant_id, fired_at=fired_at)
