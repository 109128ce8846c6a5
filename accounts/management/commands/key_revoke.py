from django.core.management.base import BaseCommand, CommandError

from accounts.models import APIKey
from accounts.services import api_key_revoke


class Command(BaseCommand):
    help = "Revoke an API key by its prefix (the part before the dot)."

    def add_arguments(self, parser):
        parser.add_argument("prefix")

    def handle(self, *args, prefix: str, **options):
        key = APIKey.objects.select_related("tenant").filter(prefix=prefix.split(".")[0]).first()
        if key is None:
            raise CommandError(f"No key with prefix {prefix!r}.")
        api_key_revoke(key=key)
        self.stdout.write(f"Revoked key {key.prefix} ({key.name!r}) of {key.tenant.name}.")
