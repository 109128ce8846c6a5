"""The dashboard's prices page, money in its currency, the finished job's "Credits
charged", job thumbnails behind the tenant check, the favicon and the docs link (issue 21)."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core.files.storage import default_storage
from django.test import Client
from django.utils import timezone
from PIL import Image

from accounts.models import Membership
from billing.models import CreditPack, Hold, Payment
from images.files import image_save, image_thumbnail_name
from images.models import GeneratedImage, ImageModel, Job


def signed_in(tenant, name: str, role: str = "owner") -> Client:
    user = User.objects.create_user(name, f"{name}@example.com", "plum-orbit-tandem-42")
    Membership.objects.create(tenant=tenant, user=user, role=role)
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")
    return tmp_path / "media"


def finished_job(tenant, *, size: int = 1024, status: str = Job.Status.SUCCEEDED, charged: int = 40) -> Job:
    """A job that ran: its captured (or released) hold and, when it succeeded, one PNG."""
    model = ImageModel.objects.get(public_id="dall-e-3")
    now = timezone.now()
    job = Job.objects.create(
        tenant=tenant, model=model, status=status, prompt="a red fox", width=size, height=size, steps=4,
        guidance=5.0, seed=7, quote=charged, deadline=now + timedelta(minutes=5), finished_at=now,
    )  # fmt: skip
    captured = status == Job.Status.SUCCEEDED
    Hold.objects.create(
        job=job, tenant=tenant, amount=charged, captured=charged if captured else 0,
        status=Hold.Status.CAPTURED if captured else Hold.Status.RELEASED,
    )  # fmt: skip
    if captured:
        buffer = io.BytesIO()
        Image.new("RGB", (size, size), (200, 40, 40)).save(buffer, format="PNG")
        name = image_save(job_id=str(job.pk), index=0, data=buffer.getvalue(), output_format="png")
        GeneratedImage.objects.create(
            job=job, index=0, file=name, content_type="image/png", width=size, height=size,
            bytes=len(buffer.getvalue()), seed=7,
        )  # fmt: skip
    return job


def test_prices_page_lists_dalle2_256_in_credits_and_dollars(registry, tenant):
    page = signed_in(tenant.tenant, "pia").get("/dashboard/prices/")
    assert page.status_code == 200
    html = page.content.decode()
    row = html[html.index('data-model="dall-e-2" data-kind="generate" data-size="256x256"') :].split("</tr>")[0]
    assert '<td class="credits">16</td>' in row and "$0.016" in row
    assert 'data-model="dall-e-3" data-kind="generate" data-size="1792x1024" data-quality="hd"' in html
    assert "One credit is worth $0.001." in html


def test_billing_page_shows_money_in_its_currency(db, tenant, settings):
    settings.STRIPE_SECRET_KEY, settings.STRIPE_PUBLISHABLE_KEY = "sk_test_x", "pk_test_x"
    pack = CreditPack.objects.create(name="Starter", credits=10_000, price=1000, currency="usd")
    CreditPack.objects.create(name="Yen pack", credits=5_000, price=500, currency="jpy")
    Payment.objects.create(
        tenant=tenant.tenant, pack=pack, external_id="pi_1", amount=2550, currency="eur", credits=1, status="succeeded"
    )
    html = signed_in(tenant.tenant, "bill").get("/dashboard/billing/").content.decode()
    assert "$10.00" in html and "¥500" in html and "€25.50" in html
    assert "minor units" not in html


def test_a_finished_job_says_credits_charged(registry, tenant, media):
    client = signed_in(tenant.tenant, "joe")
    done = finished_job(tenant.tenant, charged=80)
    html = client.get(f"/dashboard/jobs/{done.pk}/").content.decode()
    assert "Credits charged" in html and "Credits held" not in html
    assert '<dd id="job-credits">80</dd>' in html
    failed = finished_job(tenant.tenant, status=Job.Status.FAILED, charged=80)
    html = client.get(f"/dashboard/jobs/{failed.pk}/").content.decode()
    assert '<dt>Credits charged</dt><dd id="job-credits">0</dd>' in html


def test_job_page_shows_a_small_thumbnail_and_a_download_link(registry, tenant, media):
    client = signed_in(tenant.tenant, "tia")
    job = finished_job(tenant.tenant, size=1024)
    image = job.images.get()
    html = client.get(f"/dashboard/jobs/{job.pk}/").content.decode()
    thumb_url = f"/dashboard/jobs/{job.pk}/images/0/thumb"
    assert f'src="{thumb_url}"' in html
    assert f'download="{job.pk}-0.png"' in html and "/v1/files/" in html
    response = client.get(thumb_url)
    assert response.status_code == 200 and response["Content-Type"] == "image/webp"
    assert "private" in response["Cache-Control"]
    with Image.open(io.BytesIO(response.content)) as thumb:
        assert thumb.format == "WEBP" and max(thumb.size) == 256
    assert len(response.content) < image.bytes
    assert default_storage.exists(image_thumbnail_name(image.file))  # cached: made once
    # the jobs list uses the thumbnail too, not the full image
    assert thumb_url in client.get("/dashboard/jobs/").content.decode()


def test_thumbnails_respect_the_tenant(registry, tenant, make_tenant, media):
    job = finished_job(tenant.tenant)
    other = make_tenant()
    assert signed_in(other.tenant, "eve").get(f"/dashboard/jobs/{job.pk}/images/0/thumb").status_code == 404
    assert Client().get(f"/dashboard/jobs/{job.pk}/images/0/thumb").status_code == 302  # to the sign-in
    assert signed_in(tenant.tenant, "own").get(f"/dashboard/jobs/{job.pk}/images/5/thumb").status_code == 404
    assert not default_storage.exists(image_thumbnail_name(job.images.get().file))


def test_a_purged_image_has_no_thumbnail(registry, tenant, media):
    client = signed_in(tenant.tenant, "pat")
    job = finished_job(tenant.tenant)
    default_storage.delete(job.images.get().file)
    assert client.get(f"/dashboard/jobs/{job.pk}/images/0/thumb").status_code == 404


def test_favicon_answers_and_pages_link_it_and_the_docs(db, tenant):
    response = Client().get("/favicon.ico")
    assert response.status_code == 200 and response["Content-Type"] == "image/x-icon"
    with Image.open(io.BytesIO(b"".join(response.streaming_content))) as icon:
        assert icon.format == "ICO"
    html = signed_in(tenant.tenant, "fay").get("/dashboard/").content.decode()
    assert 'rel="icon"' in html and "favicon.svg" in html
    assert 'id="nav-docs"' in html and 'href="/docs/"' in html
    assert 'href="/dashboard/prices/"' in html
    login = Client().get("/dashboard/login/").content.decode()
    assert 'rel="icon"' in login
