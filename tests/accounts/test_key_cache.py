"""API keys served from the cache (accounts/key_cache.py, issue 20): a request with a
cached key reads no key row from the database, and every change to a key or its tenant
takes effect on the next request (the cached row is dropped), bulk revocations included."""

from __future__ import annotations

import time

from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.key_cache import api_key_cache_put, api_key_cache_refresh_claim, api_key_cached
from accounts.models import APIKey, Tenant
from accounts.services import api_key_create, api_key_revoke

BALANCE = "/v1/balance"


def key_reads(api, raw: str) -> tuple[int, int]:
    """(status, statements that read the api key table) of one GET /v1/balance."""
    with CaptureQueriesContext(connection) as queries:
        status = api.get(BALANCE, HTTP_AUTHORIZATION=f"Bearer {raw}").status_code
    return status, sum(1 for q in queries.captured_queries if 'FROM "accounts_apikey"' in q["sql"])


def test_a_cached_key_costs_no_database_read(api, tenant):
    assert key_reads(api, tenant.raw) == (200, 1)  # first request: read and cached
    assert key_reads(api, tenant.raw) == (200, 0)
    assert key_reads(api, tenant.raw[:-3] + "zzz")[0] == 401  # the secret is still checked


def test_a_revoked_key_is_refused_at_once(api, tenant):
    assert key_reads(api, tenant.raw) == (200, 1)
    api_key_revoke(key=APIKey.objects.get(pk=tenant.key.pk))
    assert key_reads(api, tenant.raw) == (401, 1)


def test_the_keys_a_key_made_are_revoked_with_it_at_once(api, tenant):
    parent = APIKey.objects.get(pk=tenant.key.pk)
    parent.is_admin = True
    parent.save()
    child, raw = api_key_create(tenant=tenant.tenant, name="child", parent=parent)
    status, reads = key_reads(api, raw)  # (a key with a parent also reads its lineage)
    assert status == 200 and key_reads(api, raw) == (200, reads - 1)
    api_key_revoke(key=parent)  # the child goes by a bulk update(): no signal
    assert key_reads(api, raw)[0] == 401


def test_a_suspended_tenant_is_refused_at_once(api, tenant):
    assert key_reads(api, tenant.raw) == (200, 1)
    row = Tenant.objects.get(pk=tenant.tenant.pk)
    row.status = Tenant.Status.SUSPENDED
    row.save()
    assert key_reads(api, tenant.raw)[0] == 403


def test_zero_seconds_turns_the_cache_off(api, tenant, settings):
    settings.API_KEY_CACHE_SECONDS = 0
    assert key_reads(api, tenant.raw) == (200, 1)
    assert key_reads(api, tenant.raw) == (200, 1)


def test_a_row_past_half_its_life_is_read_again_once_before_it_expires(api, tenant, settings):
    settings.API_KEY_CACHE_SECONDS = 10
    assert key_reads(api, tenant.raw) == (200, 1)
    key = api_key_cached(prefix=tenant.key.prefix)
    api_key_cache_put(key=key, cached_at=time.time() - 4)  # under half its life: served as is
    assert key_reads(api, tenant.raw) == (200, 0)
    api_key_cache_put(key=key, cached_at=time.time() - 6)  # past half: read again and cached anew
    assert key_reads(api, tenant.raw) == (200, 1)
    assert time.time() - api_key_cached(prefix=tenant.key.prefix).cached_at < 2
    assert key_reads(api, tenant.raw) == (200, 0)


def test_a_refresh_is_claimed_once(tenant, settings):
    settings.API_KEY_CACHE_SECONDS = 10
    assert api_key_cache_refresh_claim(prefix=tenant.key.prefix) is True
    assert api_key_cache_refresh_claim(prefix=tenant.key.prefix) is False  # (another caller, within 5 s)
    assert api_key_cache_refresh_claim(prefix=tenant.key.prefix + "x") is True
