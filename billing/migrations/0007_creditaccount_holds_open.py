"""Issue 20: the account counts its open holds (its jobs in flight), kept by the hold's
and the settle's own UPDATE, so the in-flight cap costs no COUNT of jobs per request.
Existing accounts start from their open holds."""

from django.db import migrations, models
from django.db.models import Count, IntegerField, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce


def holds_open_count(apps, schema_editor):
    CreditAccount = apps.get_model("billing", "CreditAccount")
    Hold = apps.get_model("billing", "Hold")
    open_holds = (
        Hold.objects.filter(tenant_id=OuterRef("tenant_id"), status="open")
        .order_by()
        .values("tenant_id")
        .annotate(n=Count("id"))
        .values("n")
    )
    CreditAccount.objects.update(holds_open=Coalesce(Subquery(open_holds, output_field=IntegerField()), Value(0)))


class Migration(migrations.Migration):
    dependencies = [("billing", "0006_usage_output_moderation")]

    operations = [
        migrations.AddField(
            model_name="creditaccount",
            name="holds_open",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.RunPython(holds_open_count, migrations.RunPython.noop),
    ]
