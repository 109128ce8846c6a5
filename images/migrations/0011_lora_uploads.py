"""LoRA adapters (issue 23): tenants' own uploads (stored like images) and who may upload."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("images", "0010_loras"),
    ]

    operations = [
        migrations.AddField(
            model_name="loraadapter",
            name="storage_name",
            field=models.CharField(blank=True, default="", max_length=300),
        ),
        migrations.AddField(
            model_name="loraadapter",
            name="size_bytes",
            field=models.PositiveBigIntegerField(default=0),
        ),
        migrations.CreateModel(
            name="LoraUploadGrant",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("max_adapters", models.PositiveIntegerField(blank=True, null=True)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "tenant",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="lora_upload_grant",
                        to="accounts.tenant",
                    ),
                ),
            ],
        ),
    ]
