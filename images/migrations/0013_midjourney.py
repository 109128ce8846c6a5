import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0006_output_moderation"),
        ("images", "0012_output_moderation"),
    ]

    operations = [
        migrations.CreateModel(
            name="MidjourneyTask",
            fields=[
                ("id", models.CharField(max_length=32, primary_key=True, serialize=False)),
                (
                    "action",
                    models.CharField(
                        choices=[
                            ("IMAGINE", "Imagine"),
                            ("UPSCALE", "Upscale"),
                            ("VARIATION", "Variation"),
                            ("REROLL", "Reroll"),
                            ("BLEND", "Blend"),
                            ("DESCRIBE", "Describe"),
                        ],
                        max_length=16,
                    ),
                ),
                ("index", models.PositiveSmallIntegerField(blank=True, null=True)),
                ("prompt", models.TextField(blank=True, default="")),
                ("prompt_en", models.TextField(blank=True, default="")),
                ("description", models.CharField(blank=True, default="", max_length=2000)),
                ("state", models.CharField(blank=True, default="", max_length=2000)),
                ("notify_hook", models.CharField(blank=True, default="", max_length=2000)),
                ("spec", models.JSONField(blank=True, default=dict)),
                ("grid_file", models.CharField(blank=True, default="", max_length=300)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "job",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE, related_name="midjourney_task", to="images.job"
                    ),
                ),
                (
                    "parent",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="children",
                        to="images.midjourneytask",
                    ),
                ),
                (
                    "tenant",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="midjourney_tasks",
                        to="accounts.tenant",
                    ),
                ),
            ],
            options={
                "ordering": ["-created_at"],
                "indexes": [models.Index(fields=["tenant", "-created_at"], name="images_midj_tenant__63606f_idx")],
            },
        ),
    ]
