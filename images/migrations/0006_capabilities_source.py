from django.db import migrations, models
from django.db.models import F


def trust_recorded_capabilities(apps, schema_editor):
    """Rows that already have capabilities got them from their current source (model_add,
    the worker, the admin action): record that, so they stay trusted."""
    ImageModel = apps.get_model("images", "ImageModel")
    ImageModel.objects.exclude(capabilities={}).update(capabilities_source=F("source"))


class Migration(migrations.Migration):
    dependencies = [("images", "0005_image_model_capabilities")]

    operations = [
        migrations.AddField(
            model_name="imagemodel",
            name="capabilities_source",
            field=models.CharField(blank=True, default="", editable=False, max_length=500),
        ),
        migrations.RunPython(trust_recorded_capabilities, migrations.RunPython.noop),
    ]
