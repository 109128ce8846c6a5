"""`make worker`: django_dramatiq's rundramatiq, with platform/ on the worker's path.

rundramatiq execs the `dramatiq` CLI, a fresh interpreter that cannot import our
settings module (platform/ is appended to sys.path by our entry points, never put on
PYTHONPATH, so it can't shadow anything). This runs the same CLI with the same
arguments in an interpreter that appends platform/ first; worker processes are
forked from it and inherit the path.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from django_dramatiq.management.commands.rundramatiq import Command as RunDramatiq

PLATFORM_DIR = str(Path(__file__).resolve().parents[3] / "platform")
BOOT = (
    "import sys; sys.path.append({platform!r}); sys.argv[0] = 'dramatiq'; "
    "from dramatiq.cli import main; sys.exit(main())"
)


class Command(RunDramatiq):
    help = "Run Dramatiq GPU workers (rundramatiq with the project's settings importable)."

    def handle(self, *args, **options):
        from django.conf import settings

        # How long an idle consumer backs off between empty fetches (ms). Dramatiq's
        # default, 1000, left a new job waiting ~175 ms on average (docs/benchmarks.md);
        # the dramatiq CLI reads this variable when it starts.
        os.environ.setdefault("dramatiq_worker_timeout", str(settings.WORKER_POLL_MS))
        real_execvp = os.execvp

        def execvp(_file: str, argv: list[str]) -> None:
            real_execvp(sys.executable, [sys.executable, "-c", BOOT.format(platform=PLATFORM_DIR), *argv[1:]])

        os.execvp = execvp
        try:
            return super().handle(*args, **options)
        finally:
            os.execvp = real_execvp
