"""Retention (images/services/retention.py, `manage.py images_purge`): exactly what is
past RETENTION_DAYS goes, from the object store too (moto's S3 server on loopback), and
a purged job answers 410 images_expired instead of links to nothing."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.utils import timezone

from core.models import IdempotencyRecord, WorkerHeartbeat
from images.files import image_save, image_token
from images.models import GeneratedImage, ImageModel, Job
from tests.s3 import MotoS3, use_s3

PNG = bytes.fromhex("89504e470d0a1a0a")  # (the bytes do not matter here)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    server = MotoS3(tmp_path_factory.mktemp("moto"), bucket="retention").start()
    yield server
    server.stop()


@pytest.fixture
def s3(store, settings):
    store.clear()
    use_s3(settings, store)
    settings.RETENTION_DAYS = 30
    return store


def finished_job(tenant, *, days_ago: float, images: int = 1, status=Job.Status.SUCCEEDED, inputs: bool = False):
    now = timezone.now()
    finished = now - timedelta(days=days_ago)
    job = Job.objects.create(
        tenant=tenant,
        model=ImageModel.objects.get(public_id="dall-e-2"),
        prompt="x",
        width=256,
        height=256,
        steps=1,
        guidance=1.0,
        seed=1,
        status=status,
        params={"profile": "dalle2", "response_format": "url"},
        deadline=finished + timedelta(minutes=5),
        finished_at=finished,
    )
    Job.objects.filter(pk=job.pk).update(created_at=finished - timedelta(seconds=5))
    for index in range(images):
        name = image_save(job_id=str(job.pk), index=index, data=PNG, output_format="png")
        GeneratedImage.objects.create(
            job=job, index=index, file=name, content_type="image/png", width=256, height=256, bytes=len(PNG)
        )
    if inputs:  # left behind (a crash between storing and settling)
        default_storage.save(f"inputs/{job.pk}/init.png", ContentFile(PNG))
    return Job.objects.get(pk=job.pk)


def test_purge_deletes_exactly_what_is_past_its_age_from_the_bucket(registry, tenant, s3):
    old = finished_job(tenant.tenant, days_ago=31, images=2, inputs=True)
    edge = finished_job(tenant.tenant, days_ago=29.9, inputs=True)
    fresh = finished_job(tenant.tenant, days_ago=1)
    failed_old = finished_job(tenant.tenant, days_ago=40, images=0, status=Job.Status.FAILED, inputs=True)
    running = Job.objects.create(
        tenant=tenant.tenant,
        model=old.model,
        prompt="x",
        width=256,
        height=256,
        steps=1,
        guidance=1.0,
        seed=1,
        status=Job.Status.RUNNING,
        deadline=timezone.now() + timedelta(minutes=5),
    )
    default_storage.save(f"inputs/{running.pk}/init.png", ContentFile(PNG))
    kept_images = sorted(img.file for job in (edge, fresh) for img in job.images.all())

    call_command("images_purge")

    assert s3.keys("images/") == kept_images
    assert s3.keys("inputs/") == sorted([f"inputs/{edge.pk}/init.png", f"inputs/{running.pk}/init.png"])
    assert not GeneratedImage.objects.filter(job=old).exists()
    assert GeneratedImage.objects.filter(job__in=[edge, fresh]).count() == 2
    old.refresh_from_db()
    assert old.status == Job.Status.SUCCEEDED and old.error_code == "images_expired"  # the job stays: history
    failed_old.refresh_from_db()
    assert failed_old.error_code == ""
    edge.refresh_from_db()
    assert edge.error_code == ""


def test_dry_run_counts_and_deletes_nothing(registry, tenant, s3):
    finished_job(tenant.tenant, days_ago=45, images=3)
    from io import StringIO

    out = StringIO()
    call_command("images_purge", "--dry-run", stdout=out)
    assert "would delete" in out.getvalue() and "3 image(s) of 1 job(s)" in out.getvalue()
    assert len(s3.keys("images/")) == 3


def test_a_purged_job_answers_410_images_expired(api, registry, tenant, s3):
    job = finished_job(tenant.tenant, days_ago=31)
    link = f"/v1/files/{image_token(job.images.get())}"
    call_command("images_purge")
    task = api.get(f"/v1/images/tasks/{job.pk}", **tenant.auth).json()
    assert task["status"] == "succeeded" and task["result"] is None
    assert task["error"]["code"] == "images_expired"
    assert api.get(link).status_code == 404  # the image row is gone with its object


def test_an_image_gone_from_the_store_answers_410_not_500(api, registry, tenant, s3, settings):
    settings.S3_PRESIGNED_REDIRECT = False
    job = finished_job(tenant.tenant, days_ago=1)
    image = job.images.get()
    s3.client().delete_object(Bucket=s3.bucket, Key=image.file)
    response = api.get(f"/v1/files/{image_token(image)}")
    assert response.status_code == 410 and response.json()["error"]["code"] == "images_expired"


def test_growing_tables_are_pruned_on_the_same_schedule(registry, tenant, s3):
    now = timezone.now()
    stale = IdempotencyRecord.objects.create(scope="t:1", key="a", request_hash="h")
    IdempotencyRecord.objects.filter(pk=stale.pk).update(created_at=now - timedelta(hours=25))
    recent = IdempotencyRecord.objects.create(scope="t:1", key="b", request_hash="h")
    from core.heartbeats import heartbeat_record

    heartbeat_record(
        worker_id="gone:1",
        host="gone",
        pid=1,
        queues=["gpu"],
        device="cpu",
        started_at=now,
        jobs_running=0,
        jobs_done=0,
        now=now - timedelta(days=31),
    )
    heartbeat_record(
        worker_id="here:2",
        host="here",
        pid=2,
        queues=["gpu"],
        device="cpu",
        started_at=now,
        jobs_running=0,
        jobs_done=0,
    )
    from images.services.retention import retention_sweep

    result = retention_sweep()
    assert list(IdempotencyRecord.objects.values_list("pk", flat=True)) == [recent.pk]
    assert list(WorkerHeartbeat.objects.values_list("worker_id", flat=True)) == ["here:2"]
    assert result.rows["idempotency_records"] == 1 and result.rows["worker_heartbeats"] == 1


def test_retention_days_zero_keeps_everything(registry, tenant, s3, settings):
    settings.RETENTION_DAYS = 0
    finished_job(tenant.tenant, days_ago=400)
    from images.services.retention import retention_sweep

    assert retention_sweep().total == 0 and len(s3.keys("images/")) == 1
