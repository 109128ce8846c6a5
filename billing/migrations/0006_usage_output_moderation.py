"""Issue 25: usage records say what the output classifier did (action, categories and
how many images it withheld), as columns the usage API and CSV can sum."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("billing", "0005_payment_reversals")]

    operations = [
        migrations.AddField(
            model_name="usagerecord",
            name="output_action",
            field=models.CharField(
                blank=True,
                choices=[("", "none"), ("blocked", "Blocked"), ("blurred", "Blurred"), ("flagged", "Flagged")],
                default="",
                max_length=16,
            ),
        ),
        migrations.AddField(
            model_name="usagerecord",
            name="output_categories",
            field=models.JSONField(blank=True, default=list),
        ),
        migrations.AddField(
            model_name="usagerecord",
            name="images_withheld",
            field=models.PositiveIntegerField(default=0),
        ),
    ]
