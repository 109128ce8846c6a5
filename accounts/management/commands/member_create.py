from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
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
        try:
            username = User._meta.get_field(User.USERNAME_FIELD).clean(username, None)
        except ValidationError as exc:
            raise CommandError("The username was refused: " + " ".join(exc.messages)) from exc
        with transaction.atomic():
            user, created = User.objects.get_or_create(username=username, defaults={"email": email})
            if password:
                try:  # AUTH_PASSWORD_VALIDATORS, as the admin's password forms apply them
                    validate_password(password, user)
                except ValidationError as exc:  # rolls back a user created just now
                    raise CommandError("The password was refused: " + " ".join(exc.messages)) from exc
                user.set_password(password)
                user.save(update_fields=["password"])
            elif created:
                user.set_unusable_password()
                user.save(update_fields=["password"])
            membership, _ = Membership.objects.update_or_create(tenant=found, user=user, defaults={"role": role})
        self.stdout.write(f"{'Created' if created else 'Updated'} user {username!r}: {role} of {found.name!r}.")
