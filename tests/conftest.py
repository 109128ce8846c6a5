"""Shared fixtures: tenants with keys, an API client, and a real Dramatiq worker
running in this process (on the StubBroker when embedded, on Redis/RabbitMQ when
BROKER_URL is set), so jobs go through the same actor, service and pipeline as
in production."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from django.conf import settings
from django.core.management import call_command
from rest_framework.test import APIClient

_names = itertools.count()


@pytest.fixture(scope="session", autouse=True)
def _demo_model():
    """The demo model under MODEL_DIR (built once; `make setup` normally has)."""
    call_command("build_demo_model")


@pytest.fixture
def registry(db):
    from images.seed import registry_seed

    registry_seed()


@pytest.fixture(scope="session")
def _session_worker(django_db_setup):
    """One Dramatiq worker for the session, stopped before the test database goes."""
    import broker_setup

    worker = broker_setup.start_embedded_worker(threads=2, any_broker=True, queues={*settings.GPU_QUEUES, "default"})
    yield worker
    broker_setup.stop_embedded_worker()


@pytest.fixture
def worker(_session_worker, transactional_db, registry):
    """A live Dramatiq worker thread; it needs committed data, hence transactional_db."""
    return _session_worker


@dataclass
class TenantKey:
    tenant: object
    key: object
    raw: str

    @property
    def auth(self) -> dict[str, str]:
        return {"HTTP_AUTHORIZATION": f"Bearer {self.raw}"}


@pytest.fixture
def make_tenant(db):
    from accounts.services import tenant_create_with_key
    from billing.services import credits_grant

    def make(credits: int = 10_000, name: str | None = None) -> TenantKey:
        tenant, key, raw = tenant_create_with_key(name=name or f"tenant-{next(_names)}")
        if credits:
            credits_grant(tenant=tenant, amount=credits, note="test")
        return TenantKey(tenant, key, raw)

    return make


@pytest.fixture
def tenant(make_tenant) -> TenantKey:
    return make_tenant()


@pytest.fixture
def api() -> APIClient:
    return APIClient()


def post_json(api: APIClient, path: str, body, tenant: TenantKey | None = None, **extra):
    headers = dict(tenant.auth) if tenant else {}
    headers.update(extra)
    return api.post(path, body, format="json", **headers)


@pytest.fixture
def parked(registry, settings):
    """Jobs go to a queue no worker consumes and requests stop waiting at once: they
    stay queued (priced and held) for the test to drive by hand."""
    from images.models import ImageModel
    from images.selectors import image_model_cache_clear

    ImageModel.objects.update(queue="parked")
    image_model_cache_clear()  # (a bulk update sends no signal)
    settings.GPU_QUEUES = [*settings.GPU_QUEUES, "parked"]  # served (so accepted), but by no running worker
    settings.JOB_WAIT_SECONDS = 0.05


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Rate-limit counters live in the cache; ids are reused between tests. So do model
    rows, which this process caches (images.selectors.image_model_get)."""
    from django.core.cache import cache

    from images.selectors import image_model_cache_clear

    cache.clear()
    image_model_cache_clear()
    yield
