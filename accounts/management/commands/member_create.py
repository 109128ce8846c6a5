from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts.models import Membership, Tenant


class Command(BaseCommand):
    help = "Give a login access to a tenant's dashboard (creates the user if needed)."

    def add_arguments(self, parser):
        parser.add_argument("tenant")
        parser.add_argument("username")
        parser.add_argument("--password", help="set (or reset) the user's password")
        parser.add_argument("--email", default="")
        parser.add_argument("--role", choices=[r.value for r in Membership.Role], default=Membership.Role.MEMBER)

    def handle(self, *args, tenant: str, username: str, password: str | None, email: str, role: str, **options):
        found = Tenant.objects.filter(name=tenant).first()
        if found is None:
            raise CommandError(f"No tenant named {tenant!r}.")
        User = get_user_model()
        with transaction.atomic():
            user, created = User.objects.get_or_create(username=username, defaults={"email": email})
            if password:
                user.set_password(password)
                user.save(update_fields=["password"])
            elif created:
                user.set_unusable_password()
                user.save(update_fields=["password"])
            membership, _ = Membership.objects.update_or_create(tenant=found, user=user, defaults={"role": role})
        self.stdout.write(f"{'Created' if created else 'Updated'} user {username!r}: {role} of {found.name!r}.")
