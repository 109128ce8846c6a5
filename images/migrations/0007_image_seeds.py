from django.db import migrations, models


def seeds_fill(apps, schema_editor):
    """Images made before seeds were recorded used job.seed + index (no wrap-around)."""
    GeneratedImage = apps.get_model("images", "GeneratedImage")
    Job = apps.get_model("images", "Job")
    seed = models.Subquery(Job.objects.filter(pk=models.OuterRef("job_id")).values("seed")[:1])
    GeneratedImage.objects.filter(seed__isnull=True).update(seed=seed + models.F("index"))


class Migration(migrations.Migration):
    dependencies = [("images", "0006_capabilities_source")]

    operations = [
        migrations.AddField(
            model_name="generatedimage",
            name="seed",
            field=models.BigIntegerField(blank=True, null=True),
        ),
        migrations.RunPython(seeds_fill, migrations.RunPython.noop),
    ]
