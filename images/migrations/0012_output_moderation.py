"""Output safety (issue 25): what the output classifier did to a job and to each image,
and the operator's list of withheld images."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0006_output_moderation"),
        ("images", "0011_lora_uploads"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="output_moderation",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.AddField(
            model_name="generatedimage",
            name="moderation",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.CreateModel(
            name="BlockedOutput",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("index", models.PositiveSmallIntegerField()),
                ("model", models.CharField(max_length=100)),
                ("endpoint", models.CharField(max_length=100)),
                ("level", models.CharField(max_length=16)),
                ("categories", models.JSONField(default=list)),
                ("scores", models.JSONField(default=dict)),
                ("thumbnail", models.CharField(blank=True, default="", max_length=300)),
                ("created_at", models.DateTimeField(auto_now_add=True, db_index=True)),
                (
                    "api_key",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="accounts.apikey",
                    ),
                ),
                (
                    "job",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="blocked_outputs",
                        to="images.job",
                    ),
                ),
                (
                    "tenant",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="blocked_outputs",
                        to="accounts.tenant",
                    ),
                ),
            ],
            options={"ordering": ["-created_at"]},
        ),
    ]
