"""The sign-up trial: SIGNUP_TRIAL_CREDITS for a new customer's tenant, once per mailbox.

Granted on `accounts.signals.tenant_signed_up` (connected in BillingConfig.ready):
accounts creates the tenant and announces it; billing, the layer above, writes the
ledger."""

from __future__ import annotations

from django.conf import settings
from django.db import IntegrityError, transaction

from accounts.models import Tenant, TrialGrant
from accounts.services import mailbox_key
from billing.services import credits_grant


def trial_grant(*, tenant: Tenant, user, email: str) -> int:
    """SIGNUP_TRIAL_CREDITS for a new tenant, once per mailbox (`mailbox_key`): a
    TrialGrant row with a unique mailbox is written first, in a savepoint, so of two
    concurrent sign-ups of one mailbox exactly one gets the credits. Returns the
    credits granted (0: trials off, or this mailbox already had one)."""
    credits = settings.SIGNUP_TRIAL_CREDITS
    if credits <= 0:
        return 0
    try:
        with transaction.atomic():
            TrialGrant.objects.create(mailbox=mailbox_key(email=email), tenant=tenant, user=user, credits=credits)
    except IntegrityError:
        return 0
    credits_grant(tenant=tenant, amount=credits, actor="signup", note="trial", idempotency_key=f"trial:user:{user.pk}")
    return credits


def on_tenant_signed_up(sender, *, tenant: Tenant, user, email: str, **kwargs) -> None:
    """Receiver of accounts.signals.tenant_signed_up: the trial grant."""
    trial_grant(tenant=tenant, user=user, email=email)
