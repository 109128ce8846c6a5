"""/v1/keys: owners' sessions, admin keys confined to their own scope, revocation down
the tree, and hostile ids."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from accounts.models import APIKey, Membership
from accounts.services import api_key_create
from tests.conftest import post_json

URL = "/v1/images/generations"
PASSWORD = "plum-orbit-tandem-42"


def bearer(raw: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def session_client(tenant, username: str, role: str) -> Client:
    """A browser: CSRF enforced, signed in through the dashboard's login form as a
    member of `tenant` with `role`."""
    user = User.objects.create_user(username, password=PASSWORD)
    Membership.objects.create(tenant=tenant, user=user, role=role)
    client = Client(enforce_csrf_checks=True)
    client.get("/dashboard/login/")
    signed_in = client.post(
        "/dashboard/login/",
        {"username": username, "password": PASSWORD, "csrfmiddlewaretoken": client.cookies["csrftoken"].value},
    )
    assert signed_in.status_code == 302, signed_in.content
    return client


def csrf_token(client: Client) -> str:
    """The token a page's JavaScript would send (the login rotated it)."""
    return client.cookies["csrftoken"].value


def test_owner_session_creates_a_key_with_csrf_and_a_member_cannot(registry, tenant):
    owner = session_client(tenant.tenant, "owner", Membership.Role.OWNER)
    token = csrf_token(owner)
    without_token = owner.post("/v1/keys", {"name": "ci"}, content_type="application/json")
    assert without_token.status_code == 403
    created = owner.post("/v1/keys", {"name": "ci"}, content_type="application/json", HTTP_X_CSRFTOKEN=token)
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["object"] == "api_key" and body["name"] == "ci" and body["key"].startswith(body["id"] + ".")
    assert APIKey.objects.get(prefix=body["id"]).tenant == tenant.tenant
    assert Client().get("/v1/balance", **bearer(body["key"])).status_code == 200  # the raw key works
    listed = owner.get("/v1/keys")
    assert listed.status_code == 200 and body["id"] in {k["id"] for k in listed.json()["data"]}

    member = session_client(tenant.tenant, "member", Membership.Role.MEMBER)
    member_token = csrf_token(member)
    refused = member.post("/v1/keys", {"name": "x"}, content_type="application/json", HTTP_X_CSRFTOKEN=member_token)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "insufficient_permissions"
    assert member.get("/v1/keys").status_code == 403
    assert APIKey.objects.filter(tenant=tenant.tenant).count() == 2  # the fixture's key and the owner's


def test_owner_session_is_unrestricted_and_may_create_admin_keys(registry, tenant):
    owner = session_client(tenant.tenant, "owner", Membership.Role.OWNER)
    token = csrf_token(owner)
    created = owner.post(
        "/v1/keys",
        {"is_admin": True, "monthly_credit_limit": 10**9},
        content_type="application/json",
        HTTP_X_CSRFTOKEN=token,
    )
    assert created.status_code == 201
    assert created.json()["is_admin"] is True and created.json()["monthly_credit_limit"] == 10**9
    assert APIKey.objects.get(prefix=created.json()["id"]).parent is None


@pytest.fixture
def restricted_admin(registry, tenant) -> tuple[APIKey, str]:
    """The issue's admin key: dall-e-2 only, 10 credits a month, 5 rpm, an expiry."""
    return api_key_create(
        tenant=tenant.tenant,
        name="restricted",
        is_admin=True,
        allowed_models=["dall-e-2"],
        monthly_credit_limit=10,
        rpm_limit=5,
        expiry_date=timezone.now() + timedelta(days=30),
    )


def test_key_created_by_a_restricted_admin_key_inherits_every_limit(api, restricted_admin):
    admin, raw = restricted_admin
    created = api.post("/v1/keys", {"name": "child"}, format="json", **bearer(raw))
    assert created.status_code == 201
    body = created.json()
    assert (
        body["allowed_models"],
        body["monthly_credit_limit"],
        body["rpm_limit"],
        body["expires_at"],
        body["is_admin"],
    ) == (["dall-e-2"], 10, 5, int(admin.expiry_date.timestamp()), False)
    assert APIKey.objects.get(prefix=body["id"]).parent == admin


def test_key_may_narrow_its_own_limits(api, restricted_admin):
    admin, raw = restricted_admin
    expiry = timezone.now() + timedelta(days=1)
    created = api.post(
        "/v1/keys",
        {"monthly_credit_limit": 3, "rpm_limit": 2, "expires_at": expiry.isoformat(), "allowed_models": ["dall-e-2"]},
        format="json",
        **bearer(raw),
    )
    assert created.status_code == 201
    body = created.json()
    assert (body["monthly_credit_limit"], body["rpm_limit"], body["expires_at"]) == (3, 2, int(expiry.timestamp()))


@pytest.mark.parametrize(
    "field, value",
    [
        ("allowed_models", ["dall-e-3"]),
        ("allowed_models", ["dall-e-2", "gpt-image-1"]),
        ("monthly_credit_limit", 11),
        ("rpm_limit", 6),
        ("expires_at", "2099-01-01T00:00:00Z"),
        ("is_admin", True),
    ],
)
def test_key_cannot_create_a_key_looser_than_itself(api, restricted_admin, field, value):
    _, raw = restricted_admin
    refused = api.post("/v1/keys", {field: value}, format="json", **bearer(raw))
    assert refused.status_code == 403, refused.content
    assert refused.json()["error"]["code"] == "key_scope_exceeded" and refused.json()["error"]["param"] == field
    assert APIKey.objects.count() == 2  # nothing was created


def test_unrestricted_admin_key_rpm_is_bounded_by_the_installation_default(api, registry, tenant, settings):
    settings.DEFAULT_KEY_RPM = 7
    _, raw = api_key_create(tenant=tenant.tenant, is_admin=True)
    assert api.post("/v1/keys", {"rpm_limit": 8}, format="json", **bearer(raw)).status_code == 403
    assert api.post("/v1/keys", {"rpm_limit": 7}, format="json", **bearer(raw)).status_code == 201


def test_child_of_a_restricted_key_cannot_run_another_model(api, parked, restricted_admin):
    _, raw = restricted_admin
    child = api.post("/v1/keys", {}, format="json", **bearer(raw)).json()["key"]
    response = post_json(api, URL, {"model": "dall-e-3", "prompt": "x", "quality": "hd"}, **bearer(child))
    assert response.status_code == 403 and response.json()["error"]["code"] == "model_not_allowed"


def test_unknown_model_id_is_400_naming_it(api, registry, tenant):
    _, raw = api_key_create(tenant=tenant.tenant, is_admin=True)
    response = api.post("/v1/keys", {"allowed_models": ["dall-e-2", "dall-e-9"]}, format="json", **bearer(raw))
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("allowed_models", "model_not_found") and "dall-e-9" in error["message"]


def test_revoking_an_admin_key_revokes_the_keys_it_created(api, registry, tenant):
    admin, raw = api_key_create(tenant=tenant.tenant, is_admin=True)
    child = api.post("/v1/keys", {}, format="json", **bearer(raw)).json()["key"]
    sibling = api.post("/v1/keys", {}, format="json", **bearer(raw)).json()["key"]
    assert api.get("/v1/balance", **bearer(child)).status_code == 200
    other_admin, other_raw = api_key_create(tenant=tenant.tenant, is_admin=True)
    assert api.delete(f"/v1/keys/{admin.prefix}", **bearer(other_raw)).json()["revoked"] is True
    for key in (raw, child, sibling):
        assert api.get("/v1/balance", **bearer(key)).status_code == 401
    assert api.get("/v1/balance", **tenant.auth).status_code == 200  # keys it did not create live on


def test_key_revoke_command_revokes_children_too(api, registry, tenant):
    admin, raw = api_key_create(tenant=tenant.tenant, is_admin=True)
    child = api.post("/v1/keys", {}, format="json", **bearer(raw)).json()["key"]
    call_command("key_revoke", admin.prefix)
    assert api.get("/v1/balance", **bearer(child)).status_code == 401


def test_migration_backfills_parents_and_revokes_children_of_revoked_keys(registry, tenant):
    from importlib import import_module

    from django.apps import apps

    migration = import_module("accounts.migrations.0003_key_parent")
    admin, _ = api_key_create(tenant=tenant.tenant, is_admin=True)
    child, _ = api_key_create(tenant=tenant.tenant, created_by=f"key:{admin.prefix}")
    APIKey.objects.filter(pk=admin.pk).update(revoked=True)
    migration.parents_backfill(apps, None)
    child.refresh_from_db()
    assert child.parent_id == admin.pk and child.revoked
    tenant.key.refresh_from_db()
    assert not tenant.key.revoked


@pytest.mark.parametrize("prefix", ["%00abc", "x" * 300, "%C3%A9t%C3%A9", "abc.def", "%F0%9F%94%91"])
def test_hostile_key_ids_are_404(api, registry, tenant, prefix):
    _, raw = api_key_create(tenant=tenant.tenant, is_admin=True)
    response = api.delete(f"/v1/keys/{prefix}", **bearer(raw))
    assert response.status_code == 404 and response.json()["error"]["code"] in ("not_found", "unknown_url")


@pytest.mark.parametrize("name", ["t" * 5000, "été", "🔑"])
def test_hostile_tenant_parameter_is_403_for_a_session(registry, tenant, name):
    owner = session_client(tenant.tenant, "owner", Membership.Role.OWNER)
    response = owner.get("/v1/keys", {"tenant": name})
    assert response.status_code == 403 and response.json()["error"]["code"] == "insufficient_permissions"


def test_a_nul_in_the_tenant_parameter_is_a_400_naming_it(registry, tenant):
    owner = session_client(tenant.tenant, "owner", Membership.Role.OWNER)
    response = owner.get("/v1/keys", {"tenant": "\x00"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "tenant"


@pytest.mark.parametrize(
    "body",
    [
        {"rpm_limit": 2**40},
        {"monthly_credit_limit": 2**70},
        {"allowed_models": "dall-e-2"},
        {"allowed_models": [1]},
        {"expires_at": "9999-12-31T23:59:59-05:00"},
        {"name": "\x00"},
        {"is_admin": "maybe"},
    ],
)
def test_hostile_bodies_are_400(api, registry, tenant, body):
    _, raw = api_key_create(tenant=tenant.tenant, is_admin=True)
    response = api.post("/v1/keys", body, format="json", **bearer(raw))
    assert response.status_code == 400, response.content
    assert response.json()["error"]["param"] == next(iter(body))


def test_key_create_command_takes_a_naive_expiry_and_refuses_impossible_ones(registry, tenant, capsys):
    call_command("key_create", tenant.tenant.name, "--expires", "2099-01-01T00:00:00")
    raw = capsys.readouterr().out.strip().splitlines()[-1]
    assert APIKey.objects.get(prefix=raw.split(".")[0]).expiry_date.year == 2099
    for value in ("2099-13-01T00:00:00", "9999-12-31T23:59:59-05:00"):
        with pytest.raises(CommandError, match="--expires"):
            call_command("key_create", tenant.tenant.name, "--expires", value)
    with pytest.raises(CommandError, match="dall-e-9"):
        call_command("key_create", tenant.tenant.name, "--models", "dall-e-2, dall-e-9")


def test_keys_schema_matches_the_bodies(api, db):
    schema = api.get("/v1/openapi.json").json()
    keys = schema["paths"]["/v1/keys"]
    listed = keys["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert listed == {"$ref": "#/components/schemas/APIKeyList"}  # one list object, not an array
    assert keys["post"]["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].endswith("/APIKeyObject")
    assert {"400", "403"} <= set(keys["post"]["responses"])
    assert "404" in schema["paths"]["/v1/keys/{prefix}"]["delete"]["responses"]
    fields = set(schema["components"]["schemas"]["APIKeyObject"]["properties"])
    assert fields == {
        "object",
        "id",
        "name",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked",
        "allowed_models",
        "rpm_limit",
        "monthly_credit_limit",
        "is_admin",
        "key",
    }
    assert "is_admin" in schema["components"]["schemas"]["KeyCreateRequest"]["properties"]


def test_admin_site_refuses_unknown_model_ids_like_the_api(registry, tenant):
    User.objects.create_superuser("ops", "ops@example.com", PASSWORD)
    client = Client()
    client.force_login(User.objects.get(username="ops"))
    refused = client.post(
        "/admin/accounts/apikey/add/", {"tenant": tenant.tenant.pk, "name": "x", "allowed_models": '["dall-e-9"]'}
    )
    assert refused.status_code == 200 and "dall-e-9" in refused.content.decode()
    assert not APIKey.objects.filter(name="x").exists()


def test_a_narrow_admin_key_sees_and_revokes_only_its_own_keys(api, registry, tenant):
    """The tenant's default key, and any key wider than the caller, are out of a scoped
    admin key's reach: not listed, and a DELETE is a 404 as for a missing key."""
    _, wide_raw = api_key_create(tenant=tenant.tenant, is_admin=True)  # unrestricted, made by the operator
    narrow, narrow_raw = api_key_create(tenant=tenant.tenant, is_admin=True, allowed_models=["dall-e-2"])
    child = api.post("/v1/keys", {"name": "child"}, format="json", **bearer(narrow_raw))
    assert child.status_code == 201
    listed = {k["id"] for k in api.get("/v1/keys", **bearer(narrow_raw)).json()["data"]}
    assert listed == {narrow.prefix, child.json()["id"]}
    assert api.delete(f"/v1/keys/{tenant.key.prefix}", **bearer(narrow_raw)).status_code == 404
    assert api.get("/v1/balance", **tenant.auth).status_code == 200  # the default key still works
    assert api.delete(f"/v1/keys/{child.json()['id']}", **bearer(narrow_raw)).status_code == 200
    wide_listed = {k["id"] for k in api.get("/v1/keys", **bearer(wide_raw)).json()["data"]}
    assert tenant.key.prefix in wide_listed and narrow.prefix in wide_listed
