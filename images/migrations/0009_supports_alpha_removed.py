"""ImageModel.supports_alpha removed: no code honoured it (issue 21). A transparent
background stays a 400 naming `background` until a model can really produce one."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("images", "0008_webhooks")]
    operations = [
        migrations.RemoveField(model_name="imagemodel", name="supports_alpha"),
    ]
