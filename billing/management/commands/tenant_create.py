"""manage.py tenant_create NAME [--credits N]: a tenant, its first key and its opening
credits. In billing (not accounts) because it writes the ledger: billing sits above
accounts in the layers (tests/test_import_rules.py)."""

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts.models import Tenant
from accounts.services import tenant_create_with_key
from billing.errors import InvalidAmount
from billing.services import account_for, credits_grant


class Command(BaseCommand):
    help = "Create a tenant and its first API key; the key is printed as the last line."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--credits", type=int, default=0, help="credits granted at creation")

    def handle(self, *args, name: str, credits: int, **options):
        name = name.strip()
        if not name or len(name) > 100:
            raise CommandError("The tenant name must be 1 to 100 characters.")
        if credits < 0:
            raise CommandError("--credits must be zero or positive.")
        if Tenant.objects.filter(name=name).exists():
            raise CommandError(f"A tenant named {name!r} already exists.")
        with transaction.atomic():
            tenant, key, raw = tenant_create_with_key(name=name, created_by="manage.py")
            if credits:
                try:
                    credits_grant(
                        tenant=tenant,
                        amount=credits,
                        actor="manage.py",
                        note="initial credits",
                        idempotency_key=f"initial:{tenant.pk}",
                    )
                except InvalidAmount as exc:
                    raise CommandError(exc.message) from exc
        account = account_for(tenant=tenant)
        self.stdout.write(f"Created tenant {tenant.name!r} (id {tenant.pk}); balance {account.balance} credits.")
        self.stdout.write(f"API key {key.prefix}… (shown once; store it now):")
        self.stdout.write(raw)
