"""ASGI entry point: what `manage.py serve` (and `make run`) serves by default, with
gunicorn and uvicorn's worker (images/management/commands/serve.py). Another ASGI
server (`uvicorn asgi:application` from platform/) gets the same application.

Django's ASGI handler runs each request's sync code on a thread of its own (its
per-request ThreadSensitiveContext), which ends with the request: a persistent
database connection would outlive its thread, so CONN_MAX_AGE is 0 here (a waiting
request holds none; core/waiting.py), and the waiting cap is the ASGI one.
"""

import os
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")

from django.core.asgi import get_asgi_application  # noqa: E402

application = get_asgi_application()


def _configure() -> None:
    from django.conf import settings

    from core.waiting import waiting_configure

    for database in settings.DATABASES.values():
        database["CONN_MAX_AGE"] = 0
    waiting_configure(threads=settings.WEB_THREADS, asgi=True)


_configure()
