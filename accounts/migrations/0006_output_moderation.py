"""Issue 25: each tenant's action for generated images the output classifier finds unsafe."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("accounts", "0005_signup_security")]

    operations = [
        migrations.AddField(
            model_name="tenant",
            name="output_moderation",
            field=models.CharField(
                choices=[("block", "Block"), ("blur", "Blur"), ("flag", "Flag"), ("off", "Off")],
                default="block",
                max_length=8,
            ),
        ),
    ]
