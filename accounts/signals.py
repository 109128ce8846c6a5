"""Signals accounts sends for the apps above it (billing, images, dashboard), so that
accounts calls none of them: the layers are dashboard > images > billing > accounts >
core (tests/test_import_rules.py)."""

from django.dispatch import Signal

# Sent by accounts.services.tenant_create_for_signup, inside its transaction, once a
# new customer's tenant and owner membership exist. Keyword arguments: `tenant`
# (accounts.models.Tenant), `user` (the new owner), `email` (the verified address the
# account signed up with). Receivers run synchronously; an exception rolls the sign-up
# back. billing.trials connects the trial grant.
tenant_signed_up = Signal()
