from datetime import UTC

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from accounts.models import Tenant
from accounts.services import api_key_create
from core.errors import APIError

# The columns' ranges (PostgreSQL integer and bigint).
RPM_MAX = 2**31 - 1
CREDITS_MAX = 2**63 - 1


class Command(BaseCommand):
    help = "Create an API key for a tenant; the key is printed as the last line (shown once)."

    def add_arguments(self, parser):
        parser.add_argument("tenant", help="tenant name")
        parser.add_argument("--name", default="default")
        parser.add_argument("--rpm", type=int, help="requests per minute for this key")
        parser.add_argument("--expires", help="ISO 8601 date-time, e.g. 2027-01-31T00:00:00Z")
        parser.add_argument("--models", help="comma-separated model ids this key may use")
        parser.add_argument("--monthly-credits", type=int, help="credits this key may spend per month")
        parser.add_argument("--admin", action="store_true", help="may manage the tenant's keys via /v1/keys")

    def handle(self, *args, tenant, name, rpm, expires, models, monthly_credits, admin, **options):
        found = Tenant.objects.filter(name=tenant).first()
        if found is None:
            raise CommandError(f"No tenant named {tenant!r}.")
        if rpm is not None and not 1 <= rpm <= RPM_MAX:
            raise CommandError(f"--rpm must be 1 to {RPM_MAX}.")
        if monthly_credits is not None and not 0 <= monthly_credits <= CREDITS_MAX:
            raise CommandError(f"--monthly-credits must be 0 to {CREDITS_MAX}.")
        expiry = None
        if expires:
            try:
                expiry = parse_datetime(expires)
                if expiry is not None:
                    expiry = timezone.make_aware(expiry, UTC) if timezone.is_naive(expiry) else expiry.astimezone(UTC)
            except (ValueError, OverflowError):  # well-formed but impossible: month 13, past year 9999 in UTC
                expiry = None
            if expiry is None:
                raise CommandError(f"--expires must be an ISO 8601 date-time, not {expires!r}.")
        allowed = (models or "").split(",")
        try:  # the service checks the model ids, as it does for /v1/keys and the admin site
            key, raw = api_key_create(
                tenant=found,
                name=name,
                created_by="manage.py",
                rpm_limit=rpm,
                expiry_date=expiry,
                allowed_models=allowed,
                monthly_credit_limit=monthly_credits,
                is_admin=admin,
            )
        except APIError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"Created key {key.prefix} ({key.name!r}) for {found.name}; shown once:")
        self.stdout.write(raw)
