from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from images.seed import DEMO_SOURCE


class Command(BaseCommand):
    help = "Build the small random-weight demo Stable Diffusion model under MODEL_DIR (if missing)."

    def add_arguments(self, parser):
        parser.add_argument("--force", action="store_true", help="rebuild even if present")
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args, force: bool, seed: int, **options):
        path = Path(settings.MODEL_DIR) / DEMO_SOURCE
        if (path / "model_index.json").exists() and not force:
            return
        from images.backends.local.demo import build_demo_model  # imports torch: worker side only

        if force and path.exists():
            import shutil

            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        build_demo_model(path, seed=seed)
        self.stdout.write(f"Built the demo model in {path}")
