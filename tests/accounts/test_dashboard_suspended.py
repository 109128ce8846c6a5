"""A suspended tenant's signed-in member gets 403 everywhere on the dashboard: every
HTML page (the "suspended" page) and every dashboard API endpoint (403
`tenant_suspended` in the error envelope), reading a task included; nothing about the
tenant's jobs is shown and nothing is charged."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from accounts.models import Membership
from billing.models import CreditAccount
from images.models import Job
from tests.conftest import post_json

SMALL = {"model": "dall-e-2", "prompt": "x", "size": "256x256", "response_format": "b64_json"}

PAGES_GET = ["/dashboard/", "/dashboard/keys/", "/dashboard/usage/", "/dashboard/usage.csv", "/dashboard/jobs/"]
PAGES_GET += ["/dashboard/playground/", "/dashboard/billing/", "/dashboard/members/"]
PAGES_POST = ["/dashboard/billing/redeem/", "/dashboard/billing/alert/", "/dashboard/billing/pay/"]
PAGES_POST += ["/dashboard/keys/abc/revoke/", "/dashboard/members/1/remove/"]


@pytest.fixture
def suspended(api, parked, tenant):
    """A member signed in, a task made while the tenant was active, then the suspension."""
    user = get_user_model().objects.create_user(username="suspended-member", password="x-long-enough-1")
    Membership.objects.create(user=user, tenant=tenant.tenant, role=Membership.Role.OWNER)
    task = post_json(api, "/v1/images/generations", SMALL, tenant, HTTP_PREFER="respond-async").json()
    api.force_login(user)
    assert api.get(f"/dashboard/api/tasks/{task['id']}").status_code == 200  # while active
    call_command("tenant_update", tenant.tenant.name, "--suspend")
    return task


def _assert_suspended_error(response) -> None:
    assert response.status_code == 403, response.content
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}  # the envelope, and nothing else
    assert (error["code"], error["message"]) == (
        "tenant_suspended",
        "This organization is suspended. Contact your platform operator.",
    )


def test_member_of_a_suspended_tenant_cannot_read_its_tasks(api, suspended, tenant):
    response = api.get(f"/dashboard/api/tasks/{suspended['id']}")
    _assert_suspended_error(response)
    assert suspended["id"] not in response.content.decode()
    # an id that does not exist answers the same: the suspension is checked first
    _assert_suspended_error(api.get("/dashboard/api/tasks/00000000-0000-0000-0000-000000000000"))


def test_member_of_a_suspended_tenant_cannot_submit_from_the_playground(api, suspended, tenant):
    _assert_suspended_error(api.post("/dashboard/api/generations", {"prompt": "x"}, format="json"))
    assert Job.objects.filter(tenant=tenant.tenant).count() == 1
    assert CreditAccount.objects.get(tenant=tenant.tenant).held == 16  # only the task made before


@pytest.mark.parametrize("path", PAGES_GET)
def test_every_dashboard_page_is_the_suspended_page(api, suspended, path):
    response = api.get(path)
    assert response.status_code == 403
    assert b"suspended" in response.content.lower()


@pytest.mark.parametrize("path", PAGES_POST)
def test_every_dashboard_action_is_refused(api, suspended, tenant, path):
    response = api.post(path, {"code": "X", "threshold": "5", "pack": "1"})
    assert response.status_code == 403
    assert CreditAccount.objects.get(tenant=tenant.tenant).balance == 10_000


def test_job_detail_page_is_the_suspended_page(api, suspended):
    response = api.get(f"/dashboard/jobs/{suspended['id']}/")
    assert response.status_code == 403 and suspended["id"] not in response.content.decode()
