from django.core.management.base import BaseCommand, CommandError

from accounts.models import Tenant
from billing.errors import InvalidAmount
from billing.services import account_for, credits_grant


class Command(BaseCommand):
    help = "Add credits to a tenant (or remove them with a negative amount) through the ledger."

    def add_arguments(self, parser):
        parser.add_argument("tenant", help="tenant name or id")
        parser.add_argument("amount", help="whole credits; negative removes")
        parser.add_argument("--note", default="")

    def handle(self, *args, tenant: str, amount: str, note: str, **options):
        try:
            value = int(amount)
        except ValueError:
            raise CommandError(f"AMOUNT must be a whole number of credits, not {amount!r}.") from None
        found = Tenant.objects.filter(name=tenant).first() or (
            Tenant.objects.filter(pk=int(tenant)).first() if tenant.isdigit() else None
        )
        if found is None:
            raise CommandError(f"No tenant named {tenant!r}.")
        try:
            entry = credits_grant(tenant=found, amount=value, actor="manage.py", note=note)
        except InvalidAmount as exc:
            raise CommandError(exc.message) from exc
        account = account_for(tenant=found)
        self.stdout.write(
            f"{found.name}: {value:+d} credits (ledger #{entry.pk}); balance {account.balance}, "
            f"held {account.held}, available {account.available}."
        )
