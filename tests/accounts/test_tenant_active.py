"""One home for "is this tenant active?" (issue 21 item 5): every path that serves a
suspended tenant refuses it with the one TenantSuspended error, rendered as the same
403 `tenant_suspended` envelope: its API keys, its members' sessions on the key and
webhook management endpoints and on the dashboard's API, and the generation service."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from accounts.errors import TenantSuspended
from accounts.models import Membership
from accounts.principals import Caller, tenant_active_check
from images.services.generation import GenerationRequest, generation_create

SUSPENDED = {
    "message": "This organization is suspended. Contact your platform operator.",
    "type": "invalid_request_error",
    "param": None,
    "code": "tenant_suspended",
}


@pytest.fixture
def owner_session(api, tenant):
    """The tenant's owner signed in, then the tenant suspended."""
    user = get_user_model().objects.create_user(username="owner-of-suspended", password="x-long-enough-1")
    Membership.objects.create(user=user, tenant=tenant.tenant, role=Membership.Role.OWNER)
    api.force_login(user)
    assert api.get("/v1/keys").status_code == 200  # while active
    call_command("tenant_update", tenant.tenant.name, "--suspend")
    tenant.tenant.refresh_from_db()
    return user


def _assert_suspended(response) -> None:
    assert response.status_code == 403, response.content
    assert response.json() == {"error": SUSPENDED}


def test_tenant_active_check_raises_tenant_suspended(tenant):
    tenant_active_check(tenant=tenant.tenant)  # active: nothing
    call_command("tenant_update", tenant.tenant.name, "--suspend")
    tenant.tenant.refresh_from_db()
    with pytest.raises(TenantSuspended) as raised:
        tenant_active_check(tenant=tenant.tenant)
    assert (raised.value.status_code, raised.value.body()) == (403, {"error": SUSPENDED})


@pytest.mark.parametrize("path", ["/v1/keys", "/v1/webhooks"])
def test_owner_session_of_a_suspended_tenant_gets_tenant_suspended(api, owner_session, path):
    _assert_suspended(api.get(path))


def test_api_key_and_session_get_the_same_refusal(api, owner_session, tenant):
    _assert_suspended(api.get("/dashboard/api/tasks/00000000-0000-0000-0000-000000000000"))
    api.logout()
    _assert_suspended(api.get("/v1/balance", **tenant.auth))
    _assert_suspended(api.get("/v1/keys", **tenant.auth))


def test_generation_service_refuses_a_suspended_tenant_before_anything(registry, tenant):
    call_command("tenant_update", tenant.tenant.name, "--suspend")
    tenant.tenant.refresh_from_db()
    caller = Caller(tenant=tenant.tenant, api_key=tenant.key)
    with pytest.raises(TenantSuspended):
        generation_create(caller=caller, request=GenerationRequest(endpoint="/v1/images/generations", fields={}))
