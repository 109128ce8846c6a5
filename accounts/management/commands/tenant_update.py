from django.core.management.base import BaseCommand, CommandError

from accounts.models import Tenant
from accounts.services import tenant_update


class Command(BaseCommand):
    help = "Change a tenant's moderation level, output moderation, status or limits."

    def add_arguments(self, parser):
        parser.add_argument("tenant")
        parser.add_argument("--moderation", choices=Tenant.Moderation.values)
        parser.add_argument(
            "--output-moderation",
            choices=Tenant.OutputModeration.values,
            help="what happens to a generated image the output classifier finds unsafe (issue 25)",
        )
        state = parser.add_mutually_exclusive_group()
        state.add_argument("--suspend", action="store_true")
        state.add_argument("--activate", action="store_true")
        parser.add_argument("--rpm", type=int, help="requests per minute for the whole tenant")
        parser.add_argument("--max-concurrent", type=int, help="jobs queued or running at once")

    def handle(self, *args, tenant, moderation, output_moderation, suspend, activate, rpm, max_concurrent, **options):
        found = Tenant.objects.filter(name=tenant).first()
        if found is None:
            raise CommandError(f"No tenant named {tenant!r}.")
        for flag, value in (("--rpm", rpm), ("--max-concurrent", max_concurrent)):
            if value is not None and value < 1:
                raise CommandError(f"{flag} must be at least 1.")
        status = Tenant.Status.SUSPENDED if suspend else Tenant.Status.ACTIVE if activate else None
        found = tenant_update(
            tenant=found,
            moderation_level=moderation,
            status=status,
            rpm_limit=rpm,
            max_concurrent_jobs=max_concurrent,
            output_moderation=output_moderation,
        )
        self.stdout.write(
            f"{found.name}: status {found.status}, moderation {found.moderation_level}, "
            f"output moderation {found.output_moderation}, "
            f"rpm {found.rpm_limit or 'default'}, max concurrent {found.max_concurrent_jobs or 'default'}."
        )
