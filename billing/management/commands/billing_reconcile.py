import sys

from django.core.management.base import BaseCommand

from billing.models import CreditAccount
from billing.selectors import ledger_reconcile


class Command(BaseCommand):
    help = "Recompute every balance from the ledger; exit 1 naming the tenants on any mismatch."

    def handle(self, *args, **options):
        problems = ledger_reconcile()
        if problems:
            for problem in problems:
                self.stderr.write(f"MISMATCH tenant {problem.tenant!r} (id {problem.tenant_id}): {problem.problem}")
            sys.exit(1)
        self.stdout.write(f"OK: {CreditAccount.objects.count()} accounts agree with the ledger.")
