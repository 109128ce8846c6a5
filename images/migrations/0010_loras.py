"""LoRA adapters (issue 23): the operator's catalog of adapters over base models."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("images", "0009_supports_alpha_removed"),
    ]
    operations = [
        migrations.CreateModel(
            name="LoraAdapter",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=100, unique=True)),
                ("path", models.CharField(max_length=500)),
                ("family", models.CharField(blank=True, default="", max_length=64)),
                ("surcharge_credits", models.PositiveIntegerField(default=0)),
                ("trigger_words", models.CharField(blank=True, default="", max_length=500)),
                (
                    "public",
                    models.BooleanField(
                        default=True, help_text="Every tenant may use it (else only the listed tenants)."
                    ),
                ),
                ("enabled", models.BooleanField(default=True)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "base_model",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="lora_adapters",
                        to="images.imagemodel",
                    ),
                ),
                (
                    "owner",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="owned_loras",
                        to="accounts.tenant",
                    ),
                ),
                ("tenants", models.ManyToManyField(blank=True, related_name="lora_adapters", to="accounts.tenant")),
            ],
            options={"ordering": ["name"]},
        ),
    ]
