"""`make worker`: django_dramatiq's rundramatiq, with platform/ on the worker's path.

rundramatiq execs the `dramatiq` CLI, a fresh interpreter that cannot import our
settings module (platform/ is appended to sys.path by our entry points, never put on
PYTHONPATH, so it can't shadow anything). This runs the same CLI with the same
arguments in an interpreter that appends platform/ first; worker processes are
forked from it and inherit the path.

`--processes auto` (the default, and `make worker`'s) sizes the worker for the device:
one process per usable core (at most 4) on CPU, where processes beat threads (each
pipeline call holds the GIL for its Python-side work), and one process on a GPU, where
one process owns the device and batches. The count is exported to the processes as
PLATFORM_WORKER_PROCESSES so that each takes its share of the cores
(images/backends/local: config.worker_processes, lanes.lane_count and
lanes.configure_threads).

`--threads auto` gives each process two jobs per image slot of its pipeline lanes
(lanes x default max batch x 2: 2 on CPU, 16 on CUDA): one set running while the next
is staged. Each process prefetches only as many messages as it has threads
(dramatiq_queue_prefetch, unless set), so one process never hoards the jobs another,
idle one could run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from django_dramatiq.management.commands.rundramatiq import Command as RunDramatiq

PLATFORM_DIR = str(Path(__file__).resolve().parents[3] / "platform")
BOOT = (
    "import sys; sys.path.append({platform!r}); sys.argv[0] = 'dramatiq'; "
    "from dramatiq.cli import main; sys.exit(main())"
)


def processes_arg(value: str) -> int | str:
    """A count (at least 1) or 'auto' (for --processes and --threads)."""
    if value == "auto":
        return value
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number or 'auto'") from None
    if number < 1:
        raise argparse.ArgumentTypeError("expected at least 1")
    return number


def auto_threads(processes: int) -> int:
    """Two jobs per image slot of the process's lanes (see the module docstring)."""
    from images.backends import get_backend

    get_backend()  # imports the local package once, whole (images/backends/__init__.py)
    from images.backends.local import lanes, runner

    return 2 * lanes.lane_count(processes) * runner.resolve_max_batch(None)


def auto_processes() -> int:
    """One per usable core (at most 4) on CPU; one on CUDA/MPS."""
    # Imports torch; this process is exec'd over right after.
    from images.backends import get_backend

    get_backend()  # imports the local package once, whole (images/backends/__init__.py)
    from images.backends.local import device, lanes

    kind, _ = device.select_device()
    return min(lanes.usable_cores(), 4) if kind == "cpu" else 1


class Command(RunDramatiq):
    help = "Run Dramatiq GPU workers (rundramatiq with the project's settings importable)."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        action = parser._option_string_actions["--processes"]
        action.type, action.default = processes_arg, "auto"
        action.help = "worker processes, or 'auto': one per core (at most 4) on CPU, one on a GPU"
        action = parser._option_string_actions["--threads"]
        action.type, action.default = processes_arg, "auto"
        action.help = "threads per process, or 'auto': lanes x max batch x 2 (2 on CPU, 16 on CUDA)"

    def handle(self, *args, **options):
        from django.conf import settings

        if options["processes"] == "auto":
            options["processes"] = auto_processes()
        if options["threads"] == "auto":
            options["threads"] = auto_threads(options["processes"])
        os.environ["PLATFORM_WORKER_PROCESSES"] = str(options["processes"])
        os.environ.setdefault("dramatiq_queue_prefetch", str(options["threads"]))
        # The longest an idle consumer waits between fetches (ms); on Redis a wake-up
        # normally ends the wait at once (broker_setup.WakingRedisBroker). The dramatiq
        # CLI reads this variable when it starts.
        os.environ.setdefault("dramatiq_worker_timeout", str(settings.WORKER_POLL_MS))
        real_execvp = os.execvp

        def execvp(_file: str, argv: list[str]) -> None:
            real_execvp(sys.executable, [sys.executable, "-c", BOOT.format(platform=PLATFORM_DIR), *argv[1:]])

        os.execvp = execvp
        try:
            return super().handle(*args, **options)
        finally:
            os.execvp = real_execvp
