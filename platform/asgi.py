"""ASGI entry point: what `manage.py serve` (and `make run`) serves by default, with
gunicorn and uvicorn's worker (images/management/commands/serve.py). Another ASGI
server (`uvicorn asgi:application` from platform/) gets the same application.

Django's ASGI handler, except that every request's sync code runs on one shared pool of
WEB_THREADS threads per process (core.waiting.PooledASGIHandler) rather than on a thread
of its own kept while the request is open: a waiting request holds no thread and no
database connection, each pool thread keeps its connection as CONN_MAX_AGE says, and
the waiting cap is the ASGI one.
"""

import os
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")

import django  # noqa: E402

django.setup(set_prefix=False)  # (as django.core.asgi.get_asgi_application)

from core.waiting import PooledASGIHandler  # noqa: E402

application = PooledASGIHandler()


def _configure() -> None:
    from django.conf import settings

    from core.waiting import waiting_configure

    waiting_configure(threads=settings.WEB_THREADS, asgi=True)


_configure()
