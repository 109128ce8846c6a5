"""APIKey.parent: the admin key that created a key through /v1/keys.

Keys made that way before this migration carry `created_by = "key:<prefix>"`; their
parent is filled in from it, and the rule that revoking a key revokes the keys it
created is applied to them once (a key minted by an admin key that is already revoked
stops working now, as it would have had the rule existed).
"""
import django.db.models.deletion
from django.db import migrations, models


def parents_backfill(apps, schema_editor):
    APIKey = apps.get_model("accounts", "APIKey")
    for key in APIKey.objects.filter(created_by__startswith="key:", parent__isnull=True):
        parent = APIKey.objects.filter(tenant_id=key.tenant_id, prefix=key.created_by[4:]).first()
        if parent is not None and parent.pk != key.pk:
            APIKey.objects.filter(pk=key.pk).update(parent=parent)
    # Revoked parents revoke their children, down the whole tree.
    while APIKey.objects.filter(revoked=False, parent__revoked=True).update(revoked=True):
        pass


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0002_key_admin'),
    ]

    operations = [
        migrations.AddField(
            model_name='apikey',
            name='parent',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE,
                                    related_name='children', to='accounts.apikey'),
        ),
        migrations.RunPython(parents_backfill, migrations.RunPython.noop),
    ]
