"""Issue 19: reversals may leave a debt (`held <= balance + debt_allowed`), a `reversal`
ledger kind, the charge's dispute status on a payment, and currencies in Stripe's
lower-case spelling (existing packs and payments normalised)."""

from django.db import migrations, models

import billing.currencies


def currencies_lower(apps, schema_editor):
    for name in ("CreditPack", "Payment"):
        model = apps.get_model("billing", name)
        for row in model.objects.all().only("pk", "currency"):
            normal = billing.currencies.currency_normalise(row.currency)
            if normal != row.currency:
                model.objects.filter(pk=row.pk).update(currency=normal)


class Migration(migrations.Migration):
    dependencies = [("billing", "0004_self_service")]

    operations = [
        migrations.RemoveConstraint(model_name="creditaccount", name="account_held_covered"),
        migrations.AddField(model_name="creditaccount", name="debt_allowed", field=models.BigIntegerField(default=0)),
        migrations.AddConstraint(
            model_name="creditaccount",
            constraint=models.CheckConstraint(
                condition=models.Q(("balance__gte", models.F("held") - models.F("debt_allowed"))),
                name="account_held_covered",
            ),
        ),
        migrations.AddConstraint(
            model_name="creditaccount",
            constraint=models.CheckConstraint(
                condition=models.Q(("debt_allowed__gte", 0)), name="account_debt_allowed_non_negative"
            ),
        ),
        migrations.AddField(
            model_name="payment",
            name="dispute_status",
            field=models.CharField(blank=True, default="", max_length=16),
        ),
        migrations.AlterField(
            model_name="creditpack",
            name="currency",
            field=models.CharField(default="usd", max_length=3, validators=[billing.currencies.currency_validate]),
        ),
        migrations.AlterField(
            model_name="ledgerentry",
            name="kind",
            field=models.CharField(
                choices=[
                    ("grant", "Grant"),
                    ("adjustment", "Adjustment"),
                    ("hold", "Hold"),
                    ("capture", "Capture"),
                    ("release", "Release"),
                    ("refund", "Refund"),
                    ("reversal", "Reversal"),
                ],
                max_length=16,
            ),
        ),
        migrations.AlterField(
            model_name="payment",
            name="currency",
            field=models.CharField(max_length=3, validators=[billing.currencies.currency_validate]),
        ),
        migrations.RunPython(currencies_lower, migrations.RunPython.noop),
    ]
