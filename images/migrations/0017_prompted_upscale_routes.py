"""Stability's upscale/creative and upscale/conservative move from the ESRGAN upscaler to
a diffusion upscaler (issue 26; images/stability.py DEFAULT_ROUTES: `sd-x4-upscaler-tiny`).

`stability_seed` (make setup) only creates missing StabilityRoute rows, so an install
seeded before keeps rows pointing at the seeded ESRGAN (`esrgan-tiny-x4`). This data
migration, run once, deletes those two rows where they still point at it and are
enabled (the seeded state); the next `make setup` (images.seed.registry_seed) seeds
`sd-x4-upscaler-tiny` and recreates the rows on it with their price rows, and until then
the endpoints resolve to DEFAULT_ROUTES. A row the operator pointed at another model, or
disabled, is left alone; once run, an operator who points them back at the ESRGAN keeps
that. Reversing does nothing (the rows are the seeder's to recreate).
"""

from django.db import migrations

SERVICES = ("upscale/creative", "upscale/conservative")
OLD_MODEL = "esrgan-tiny-x4"


def forwards(apps, schema_editor):
    StabilityRoute = apps.get_model("images", "StabilityRoute")
    StabilityRoute.objects.filter(
        service__in=SERVICES, model_value="", enabled=True, image_model__public_id=OLD_MODEL
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("images", "0016_control_tool_models")]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
