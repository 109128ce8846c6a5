"""Removing a member revokes the keys they made (and the keys those keys made); owners
see each member's keys before removing them (issue 19)."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.test import Client

from accounts.models import APIKey, Membership
from accounts.services import api_key_create

PASSWORD = "plum-orbit-tandem-42"


def member(tenant, name: str, role: str) -> tuple[Membership, Client]:
    user = User.objects.create_user(name, f"{name}@example.com", PASSWORD)
    membership = Membership.objects.create(tenant=tenant, user=user, role=role)
    client = Client()
    client.force_login(user)
    return membership, client


def test_removing_a_member_revokes_the_keys_they_made_and_their_children(tenant, api):
    owner, owner_client = member(tenant.tenant, "olive", "owner")
    leaver, leaver_client = member(tenant.tenant, "lee", "admin")
    # The leaver makes a key on the dashboard and an admin key through /v1/keys, which makes a child key.
    page = leaver_client.post("/dashboard/keys/", {"name": "lee-dash"})
    assert page.status_code == 200
    api.login(username="lee", password=PASSWORD)
    made = api.post("/v1/keys", {"name": "lee-admin", "is_admin": True}, format="json")
    assert made.status_code == 201, made.json()
    admin_raw = made.json()["key"]
    api.logout()
    child = api.post("/v1/keys", {"name": "child"}, format="json", HTTP_AUTHORIZATION=f"Bearer {admin_raw}")
    assert child.status_code == 201, child.json()
    owners_key = owner_client.post("/dashboard/keys/", {"name": "olive-dash"})
    assert owners_key.status_code == 200

    listing = owner_client.get("/dashboard/members/").content.decode()
    row = listing[listing.index(f'data-member="{leaver.pk}"') :].split("</tr>")[0]
    assert "lee-dash" in row and "lee-admin" in row and "olive-dash" not in row

    response = owner_client.post(f"/dashboard/members/{leaver.pk}/remove/")
    assert response.status_code == 302
    assert not Membership.objects.filter(pk=leaver.pk).exists()
    revoked = dict(APIKey.objects.filter(tenant=tenant.tenant).values_list("name", "revoked"))
    assert revoked == {"default": False, "olive-dash": False, "lee-dash": True, "lee-admin": True, "child": True}
    gone = api.get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {admin_raw}")
    assert gone.status_code == 401


def test_only_owners_remove_members_and_the_last_owner_stays(tenant):
    owner, owner_client = member(tenant.tenant, "olive", "owner")
    plain, plain_client = member(tenant.tenant, "pat", "member")
    assert plain_client.post(f"/dashboard/members/{owner.pk}/remove/").status_code == 403
    refused = owner_client.post(f"/dashboard/members/{owner.pk}/remove/")
    assert refused.status_code == 400 and "last owner" in refused.content.decode()
    assert Membership.objects.filter(pk=owner.pk).exists()


def test_another_tenants_member_is_a_404(make_tenant):
    first, second = make_tenant(), make_tenant()
    _, owner_client = member(first.tenant, "olive", "owner")
    stranger, _ = member(second.tenant, "sam", "member")
    assert owner_client.post(f"/dashboard/members/{stranger.pk}/remove/").status_code == 404
    assert Membership.objects.filter(pk=stranger.pk).exists()


def test_the_service_revokes_keys_made_through_any_session(tenant):
    from accounts.services import membership_remove

    leaver, _ = member(tenant.tenant, "lee", "member")
    member(tenant.tenant, "olive", "owner")
    key, _ = api_key_create(tenant=tenant.tenant, name="by-lee", created_by="lee", created_by_user=leaver.user)
    assert [k.pk for k in membership_remove(membership=leaver)] == [key.pk]
    key.refresh_from_db()
    assert key.revoked


def _operator() -> Client:
    User.objects.create_superuser("ops", "ops@example.com", PASSWORD)
    client = Client()
    client.force_login(User.objects.get(username="ops"))
    return client


def test_removing_a_member_in_the_admin_revokes_their_keys(tenant):
    owner, _ = member(tenant.tenant, "olive", "owner")
    leaver, _ = member(tenant.tenant, "lee", "member")
    key, _ = api_key_create(tenant=tenant.tenant, name="by-lee", created_by="lee", created_by_user=leaver.user)
    t = tenant.tenant
    data = {
        "name": t.name,
        "status": t.status,
        "moderation_level": t.moderation_level,
        "output_moderation": t.output_moderation,
        "rpm_limit": "",
        "max_concurrent_jobs": "",
        "memberships-TOTAL_FORMS": "2",
        "memberships-INITIAL_FORMS": "2",
        "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "1000",
    }
    for i, m in enumerate((owner, leaver)):
        data.update({f"memberships-{i}-id": m.pk, f"memberships-{i}-tenant": t.pk})
        data.update({f"memberships-{i}-user": m.user_id, f"memberships-{i}-role": m.role})
    data["memberships-1-DELETE"] = "on"
    response = _operator().post(f"/admin/accounts/tenant/{t.pk}/change/", data)
    assert response.status_code == 302, response.content.decode()[:2000]
    assert not Membership.objects.filter(pk=leaver.pk).exists()
    key.refresh_from_db()
    assert key.revoked


def test_deleting_a_user_in_the_admin_revokes_their_keys(tenant):
    leaver, _ = member(tenant.tenant, "lee", "member")
    key, _ = api_key_create(tenant=tenant.tenant, name="by-lee", created_by="lee", created_by_user=leaver.user)
    response = _operator().post(f"/admin/auth/user/{leaver.user_id}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not User.objects.filter(pk=leaver.user_id).exists()
    key.refresh_from_db()
    assert key.revoked
