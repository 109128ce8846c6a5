"""`manage.py build_tool_models`: the embedded tool models (issue 26 item 1), tiny and
random-weight, built from code under MODEL_DIR where the seeded rows point
(images/tool_models.py SEEDED_TOOLS; images/backends/local/tool_builders.py). Seconds on
a CPU; a folder already built is left alone, and an operator's own folder at one of
those paths is never replaced (the command says so and goes on). A web-only host (no
torch) skips them with a notice: the hosts that run tool jobs are the workers."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from images.tool_models import SEEDED_TOOLS


class Command(BaseCommand):
    help = "Build the embedded tiny tool models (upscaler, background remover, segmenter, captioner) if missing."

    def handle(self, *args, **options) -> None:
        # Imported here: it imports torch, transformers and spandrel (a worker-only set).
        try:
            from images.backends.local.tool_builders import build_tool_model
        except ImportError as exc:  # a web-only host (requirements/base.txt): workers build them
            self.stderr.write(f"Skipped the tool models: building them needs requirements/worker.txt ({exc})")
            return
        for public_id, (kind, folder, _, _) in SEEDED_TOOLS.items():
            path = Path(settings.MODEL_DIR) / folder
            try:
                if build_tool_model(path, kind=kind):
                    self.stdout.write(f"Built the tool model {public_id} ({kind}) in {path}")
            except FileExistsError as exc:
                self.stderr.write(f"Skipped {public_id}: {exc}")
