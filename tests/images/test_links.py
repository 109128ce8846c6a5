"""Signed image links (/v1/files/{token}) are read without an API key, so the tenant is
checked when one is served: a suspended tenant's links stop at once, not at expiry."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from accounts.models import Tenant
from accounts.services import tenant_update
from images import selectors
from images.files import image_save, image_token
from images.models import GeneratedImage, ImageModel, Job
from tests.conftest import post_json

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


def stored_image(tenant: Tenant) -> GeneratedImage:
    job = Job.objects.create(
        tenant=tenant,
        model=ImageModel.objects.first(),
        prompt="a lighthouse",
        width=256,
        height=256,
        steps=1,
        guidance=1.0,
        seed=1,
        status=Job.Status.SUCCEEDED,
        deadline=timezone.now() + timedelta(minutes=5),
    )
    name = image_save(job_id=str(job.pk), index=0, data=PNG, output_format="png")
    return GeneratedImage.objects.create(
        job=job, index=0, file=name, content_type="image/png", width=256, height=256, bytes=len(PNG)
    )


def test_image_get_finds_nothing_for_a_suspended_tenant(registry, tenant, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    image = stored_image(tenant.tenant)
    assert selectors.image_get(tenant_id=tenant.tenant.pk, image_id=image.id.hex) == image
    tenant_update(tenant=tenant.tenant, status=Tenant.Status.SUSPENDED)
    assert selectors.image_get(tenant_id=tenant.tenant.pk, image_id=image.id.hex) is None
    tenant_update(tenant=tenant.tenant, status=Tenant.Status.ACTIVE)
    assert selectors.image_get(tenant_id=tenant.tenant.pk, image_id=image.id.hex) == image


def test_stored_link_stops_serving_while_its_tenant_is_suspended(api, registry, tenant, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    url = f"/v1/files/{image_token(stored_image(tenant.tenant))}"
    served = api.get(url)
    assert served.status_code == 200 and b"".join(served.streaming_content) == PNG
    tenant_update(tenant=tenant.tenant, status=Tenant.Status.SUSPENDED)
    refused = api.get(url)
    assert refused.status_code == 404
    assert refused.json()["error"]["code"] == "not_found"  # like a link that never existed
    tenant_update(tenant=tenant.tenant, status=Tenant.Status.ACTIVE)
    assert api.get(url).status_code == 200


def test_generated_link_stops_serving_once_the_tenant_is_suspended(api, worker, tenant):
    response = post_json(api, "/v1/images/generations", {"prompt": "a lighthouse", "size": "256x256"}, tenant)
    assert response.status_code == 200, response.content
    url = response.json()["data"][0]["url"].removeprefix("http://testserver")
    assert api.get(url).status_code == 200
    tenant_update(tenant=tenant.tenant, status=Tenant.Status.SUSPENDED)
    assert api.get(url).status_code == 404
    tenant_update(tenant=tenant.tenant, status=Tenant.Status.ACTIVE)
    assert api.get(url).status_code == 200
