"""Idempotency records move to the `core` app (scope instead of a tenant foreign key,
job id instead of a job foreign key); existing records are copied over."""
from django.db import migrations


def copy_records(apps, schema_editor):
    Old = apps.get_model("billing", "IdempotencyRecord")
    New = apps.get_model("core", "IdempotencyRecord")
    New.objects.bulk_create([
        New(scope=f"tenant:{row.tenant_id}", key=row.key, request_hash=row.request_hash, status=row.status,
            job_id=row.job_id, response_status=row.response_status, response_body=row.response_body,
            response_headers=row.response_headers, created_at=row.created_at)
        for row in Old.objects.all().iterator()], batch_size=500)


class Migration(migrations.Migration):

    dependencies = [
        ("billing", "0002_idempotency"),
        ("core", "0001_initial"),
    ]

    operations = [
        migrations.RunPython(copy_records, migrations.RunPython.noop),
        migrations.DeleteModel(name="IdempotencyRecord"),
    ]
