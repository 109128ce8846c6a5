"""The accounts app's typed errors (rendered once, in the envelope, by core.errors)."""

from __future__ import annotations

from core.errors import PermissionDeniedError

TENANT_SUSPENDED_MESSAGE = "This organization is suspended. Contact your platform operator."


class TenantSuspended(PermissionDeniedError):
    """403 `tenant_suspended`: the caller's tenant is not active. Raised only by
    `accounts.principals.tenant_active_check`, whichever way the tenant was reached (an
    API key at authentication, a dashboard session, the playground, key and webhook
    management by session, the generation service). Not a 404: the caller's own
    tenant is no secret to them; not retryable: only an operator lifts it
    (`manage.py tenant_update --activate`)."""

    code = "tenant_suspended"

    def __init__(self, message: str = TENANT_SUSPENDED_MESSAGE) -> None:
        super().__init__(message)
