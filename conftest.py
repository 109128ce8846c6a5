"""Root conftest: put platform/ on sys.path by appending (it must never shadow the
stdlib `platform` module), exactly as manage.py and the WSGI/ASGI entry points do,
then load the test settings (platform/settings_test.py: the production settings with a
fast password hasher) so pytest-django sets Django up."""

import os
import sys
from pathlib import Path

_platform_dir = str(Path(__file__).resolve().parent / "platform")
if _platform_dir not in sys.path:
    sys.path.append(_platform_dir)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings_test")
# The in-process test worker neither sweeps nor warms up on its own: background
# database work would race pytest-django's per-test database access rules.
os.environ.setdefault("JOB_SWEEP_SECONDS", "0")
os.environ.setdefault("WARM_UP_MODELS", "false")
os.environ.setdefault("WORKER_HEARTBEAT_SECONDS", "0")  # (heartbeats and retention: tests drive them)
os.environ.setdefault("RETENTION_SWEEP_SECONDS", "0")

from django.conf import settings  # noqa: E402

settings.DATABASES  # noqa: B018  (loads settings; pytest-django then calls django.setup())
