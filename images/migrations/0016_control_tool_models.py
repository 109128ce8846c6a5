"""Control tool models (issue 26, Stability's control/*): ImageModel.kind's new choices."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("images", "0015_tool_models")]

    operations = [
        migrations.AlterField(
            model_name="imagemodel",
            name="kind",
            field=models.CharField(
                choices=[
                    ("generator", "Generator"),
                    ("upscaler", "Upscaler"),
                    ("background_remover", "Background Remover"),
                    ("segmenter", "Segmenter"),
                    ("captioner", "Captioner"),
                    ("controlnet", "Controlnet"),
                    ("depth_estimator", "Depth Estimator"),
                    ("ip_adapter", "Ip Adapter"),
                ],
                default="generator",
                max_length=32,
            ),
        ),
    ]
