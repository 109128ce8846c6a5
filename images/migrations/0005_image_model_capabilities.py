from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('images', '0004_image_model_is_free'),
    ]

    operations = [
        migrations.AddField(
            model_name='imagemodel',
            name='capabilities',
            field=models.JSONField(blank=True, default=dict),
        ),
    ]
