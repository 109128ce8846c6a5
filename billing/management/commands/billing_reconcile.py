import sys

from django.core.management.base import BaseCommand

from billing.models import CreditAccount
from billing.selectors import credits_owed, ledger_reconcile, payments_uncredited, payments_unrecovered


class Command(BaseCommand):
    help = (
        "Recompute every balance from the ledger (exit 1 naming the tenants on any mismatch) and list every "
        "credit owed: tenants in debt after a refund or dispute (OWED), payments whose credits were never taken "
        "back (UNRECOVERED) and payments paid but not credited (UNCREDITED)."
    )

    def handle(self, *args, **options):
        for owed in credits_owed():
            self.stdout.write(
                f"OWED tenant {owed.tenant!r} (id {owed.tenant_id}): {owed.credits} credits "
                f"(balance {owed.balance}, held {owed.held}); refunded or disputed payments: "
                f"{', '.join(owed.payments) or 'none'}"
            )
        for payment in payments_unrecovered():
            self.stdout.write(
                f"UNRECOVERED tenant {payment.tenant.name!r} (id {payment.tenant_id}): {payment.credits_unrecovered} "
                f"credits of payment {payment.external_id} were never taken back; its next Stripe event takes them"
            )
        for payment in payments_uncredited():
            self.stdout.write(
                f"UNCREDITED tenant {payment.tenant.name!r} (id {payment.tenant_id}): payment {payment.external_id} "
                f"({payment.amount} {payment.currency} minor units, {payment.credits} credits) was paid with another "
                "amount or currency and granted nothing"
            )
        problems = ledger_reconcile()
        if problems:
            for problem in problems:
                self.stderr.write(f"MISMATCH tenant {problem.tenant!r} (id {problem.tenant_id}): {problem.problem}")
            sys.exit(1)
        self.stdout.write(f"OK: {CreditAccount.objects.count()} accounts agree with the ledger.")
