from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime
from django.utils import timezone

from accounts.models import Tenant
from accounts.services import api_key_create
from images.models import ImageModel


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
        if rpm is not None and rpm < 1:
            raise CommandError("--rpm must be at least 1.")
        if monthly_credits is not None and monthly_credits < 0:
            raise CommandError("--monthly-credits must be zero or positive.")
        expiry = None
        if expires:
            expiry = parse_datetime(expires)
            if expiry is None:
                raise CommandError(f"--expires must be an ISO 8601 date-time, not {expires!r}.")
            if timezone.is_naive(expiry):
                expiry = timezone.make_aware(expiry, timezone.utc)
        allowed = [m.strip() for m in (models or "").split(",") if m.strip()]
        unknown = set(allowed) - set(ImageModel.objects.filter(public_id__in=allowed).values_list("public_id", flat=True))
        if unknown:
            raise CommandError(f"Unknown model(s): {', '.join(sorted(unknown))}.")
        key, raw = api_key_create(tenant=found, name=name, created_by="manage.py", rpm_limit=rpm,
                                  expiry_date=expiry, allowed_models=allowed, monthly_credit_limit=monthly_credits,
                                  is_admin=admin)
        self.stdout.write(f"Created key {key.prefix} ({key.name!r}) for {found.name}; shown once:")
        self.stdout.write(raw)
