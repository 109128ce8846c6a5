"""Tool models (issue 26 item 1): ImageModel.kind, the tool job kinds, Job.output_text."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("images", "0014_stability")]

    operations = [
        migrations.AddField(
            model_name="imagemodel",
            name="kind",
            field=models.CharField(
                choices=[
                    ("generator", "Generator"),
                    ("upscaler", "Upscaler"),
                    ("background_remover", "Background Remover"),
                    ("segmenter", "Segmenter"),
                    ("captioner", "Captioner"),
                ],
                default="generator",
                max_length=32,
            ),
        ),
        migrations.AlterField(
            model_name="job",
            name="kind",
            field=models.CharField(
                choices=[
                    ("generate", "Generate"),
                    ("edit", "Edit"),
                    ("variation", "Variation"),
                    ("upscale", "Upscale"),
                    ("remove_bg", "Remove Background"),
                    ("segment", "Segment"),
                    ("describe", "Describe"),
                ],
                default="generate",
                max_length=16,
            ),
        ),
        migrations.AddField(
            model_name="job",
            name="output_text",
            field=models.TextField(blank=True, default=""),
        ),
    ]
