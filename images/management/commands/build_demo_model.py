from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from images.demo_model import demo_model_install
from images.seed import DEMO_SOURCE


class Command(BaseCommand):
    help = (
        "Install the trained demo model (committed weights, docs/demo-model.md) under MODEL_DIR "
        "if missing or outdated. Copies files only: no torch, no training."
    )

    def add_arguments(self, parser):
        parser.add_argument("--force", action="store_true", help="copy again even if present")

    def handle(self, *args, force: bool, **options):
        path = Path(settings.MODEL_DIR) / DEMO_SOURCE
        if force and (path / "platform_model.json").is_file():
            import shutil

            shutil.rmtree(path)
        if demo_model_install(path):
            self.stdout.write(f"Installed the demo model in {path}")
