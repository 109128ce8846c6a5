"""Issue 19: invitations bound to the account that followed their link, one trial per
mailbox (TrialGrant), and keys linked to the person who made them."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def backfill(apps, schema_editor):
    """Existing keys: link each to the member whose username made it. Existing trials
    (ledger key `trial:user:<id>`): record their mailboxes, so those cannot get a
    second trial after the upgrade (the first grant per mailbox is kept)."""
    from accounts.services import mailbox_key

    APIKey = apps.get_model("accounts", "APIKey")
    Membership = apps.get_model("accounts", "Membership")
    TrialGrant = apps.get_model("accounts", "TrialGrant")
    LedgerEntry = apps.get_model("billing", "LedgerEntry")
    User = apps.get_model(*settings.AUTH_USER_MODEL.split("."))
    for membership in Membership.objects.select_related("user"):
        APIKey.objects.filter(
            tenant_id=membership.tenant_id, created_by=membership.user.username, created_by_user__isnull=True
        ).update(created_by_user_id=membership.user_id)
    for entry in LedgerEntry.objects.filter(idempotency_key__startswith="trial:user:").order_by("id"):
        user = User.objects.filter(pk=entry.idempotency_key.rsplit(":", 1)[-1]).first()
        mailbox = mailbox_key(email=user.email) if user is not None and user.email else ""
        if mailbox and not TrialGrant.objects.filter(mailbox=mailbox).exists():
            TrialGrant.objects.create(mailbox=mailbox, tenant_id=entry.tenant_id, user=user, credits=entry.amount)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0004_invitation"),
        ("billing", "0004_self_service"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="apikey",
            name="created_by_user",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AddField(
            model_name="invitation",
            name="claimed_by",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.CreateModel(
            name="TrialGrant",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("mailbox", models.CharField(max_length=254, unique=True)),
                ("credits", models.PositiveBigIntegerField()),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "tenant",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="+", to="accounts.tenant"
                    ),
                ),
                (
                    "user",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
