"""StabilityRoute: the operator's mapping of Stability v2beta endpoints (and `model`
values) to own models (issue 26 item 2)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("images", "0013_midjourney")]

    operations = [
        migrations.CreateModel(
            name="StabilityRoute",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("service", models.CharField(max_length=64)),
                ("model_value", models.CharField(blank=True, default="", max_length=100)),
                ("enabled", models.BooleanField(default=True)),
                (
                    "image_model",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="stability_routes",
                        to="images.imagemodel",
                    ),
                ),
            ],
            options={
                "ordering": ["service", "model_value"],
                "constraints": [
                    models.UniqueConstraint(fields=("service", "model_value"), name="stability_route_unique")
                ],
            },
        ),
    ]
