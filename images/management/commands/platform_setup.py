from django.core.management import call_command
from django.core.management.base import BaseCommand

from core.db_locks import advisory_lock
from images.seed import registry_seed


class Command(BaseCommand):
    help = "Idempotent setup after migrate: install the demo model if missing, seed models and prices."

    def add_arguments(self, parser):
        parser.add_argument("--no-model", action="store_true", help="skip the demo model (web-only hosts)")

    def handle(self, *args, no_model: bool, **options):
        # `make run` and `make worker` started together both run this: one at a time
        # (the demo model's folder and the seeded rows are made once).
        with advisory_lock("platform:setup"):
            if not no_model:
                call_command("build_demo_model")
                call_command("build_tool_models")  # (issue 26: the embedded tool models)
            created = registry_seed()
        if created:
            self.stdout.write(f"Seeded {created} model(s) with default prices.")
