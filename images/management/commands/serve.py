"""`make run`: serve the API with gunicorn, and in the embedded mode also run the
Dramatiq worker inside the same process.

The server (WEB_SERVER): `asgi` (the default; see core/waiting.py) is gunicorn with
uvicorn's worker
(uvicorn-worker) over platform/asgi.py: a request that waits for its job (a
synchronous generation, a stream, a long poll) costs no thread and no database
connection while it waits (core/waiting.py), so one process holds thousands of them,
up to WEB_MAX_WAITING (default core.waiting.ASGI_MAX_WAITING). WEB_THREADS is then how
many requests run their sync code (the DRF views, the ORM) at once per process.
`gthread` is the WSGI server, WEB_THREADS threads per process, each waiting
request holding one (WEB_MAX_WAITING below WEB_THREADS), kept as a fallback.
WEB_CONCURRENCY processes either way; the embedded worker starts in post_worker_init
and the prometheus multiprocess hooks are the same."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

import broker_setup


def _demo_key_file() -> Path:
    return Path(settings.VAR_DIR) / "demo_api_key"


def demo_tenant_ensure(stdout) -> str | None:
    """Embedded mode only: create the demo tenant once and keep its key in var/ (a
    local development file) so every `make run` can print a working curl line."""
    from accounts.models import Tenant
    from accounts.services import tenant_create_with_key
    from billing.services import credits_grant

    path = _demo_key_file()
    if not Tenant.objects.filter(name="demo").exists():
        tenant, _, raw = tenant_create_with_key(name="demo", created_by="make run")
        credits_grant(
            tenant=tenant, amount=100_000, actor="make run", note="demo credits", idempotency_key=f"initial:{tenant.pk}"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(raw)
        path.chmod(0o600)
        stdout.write("Created the demo tenant with 100000 credits.")
    return path.read_text().strip() if path.exists() else None


def port_free_check(host: str, port: int) -> None:
    """CommandError (so a non-zero exit) naming the address when `host`:`port` cannot be
    bound, e.g. another server holds it: checked before anything is printed, so no
    "Serving on" or curl line points at whatever holds the port. The test socket is
    closed at once; SO_REUSEADDR as the server's own, so a port in TIME_WAIT passes."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CommandError(
            f"Cannot serve on {host}:{port}: {exc.strerror}. Set HOST to an address of this machine."
        ) from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            state = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
            raise CommandError(
                f"Port {port} on {host} {state}: stop what holds it, or choose another port, "
                f"e.g. PORT={port + 1} make run."
            ) from exc


class Command(BaseCommand):
    help = "Serve the platform on 127.0.0.1:$PORT (in-process worker when BROKER_URL is unset)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=settings.PORT)
        parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "1")))
        parser.add_argument("--threads", type=int, default=settings.WEB_THREADS)

    def handle(self, *args, host: str, port: int, workers: int, threads: int, **options):
        port_free_check(host, port)
        from gunicorn.app.base import BaseApplication

        from core.waiting import waiting_configure

        server = os.environ.get("WEB_SERVER", "asgi")
        if server not in ("asgi", "gthread"):
            raise CommandError(f"WEB_SERVER={server!r}: use 'asgi' (the default) or 'gthread'")
        asgi = server == "asgi"
        try:  # (before gunicorn forks: every process inherits it)
            max_waiting = waiting_configure(threads=threads, asgi=asgi)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if asgi:
            from uvicorn_worker import UvicornWorker

            from asgi import application

            class Worker(UvicornWorker):
                CONFIG_KWARGS = {"loop": "auto", "http": "auto", "lifespan": "off"}  # (Django has no lifespan)

            worker_class: Any = Worker
        else:
            from wsgi import application

            worker_class = "gthread"
        embedded = not settings.BROKER_URL
        if embedded:
            workers = 1  # the in-process broker lives in one process
            key = demo_tenant_ensure(self.stdout) if settings.EMBEDDED else None
            if key:
                base = f"http://{host}:{port}"
                self.stdout.write(
                    f"\nDemo API key: {key}\nTry:\n  curl {base}/v1/images/generations "
                    f"-H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' "
                    f'-d \'{{"model": "dall-e-2", "prompt": "a red circle on a white background", "size": "256x256", '
                    f'"response_format": "url"}}\'\n'
                )
        if workers > 1 and settings.METRICS_TOKEN and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # Each process would count alone and scrapes would go backwards (settings.py);
            # the metrics of this process are made already, too late to switch modes here.
            raise CommandError(
                f"--workers {workers} with metrics on (METRICS_TOKEN) needs prometheus_client's "
                "multiprocess mode: set WEB_CONCURRENCY instead of --workers (a folder under VAR_DIR "
                "is then used), or PROMETHEUS_MULTIPROC_DIR"
            )
        queue = "embedded worker" if embedded else "broker " + settings.BROKER_URL.split("@")[-1]
        shape = "ASGI" if asgi else "gthread"
        self.stdout.write(
            f"Serving on http://{host}:{port} ({queue}; {shape}, {threads} threads per process, "
            f"at most {max_waiting} waiting for a job)"
        )
        self.stdout.flush()

        worker_threads = settings.EMBEDDED_WORKER_THREADS

        def post_worker_init(worker) -> None:
            if embedded:
                broker_setup.start_embedded_worker(threads=worker_threads)

        def worker_exit(server, worker) -> None:
            broker_setup.stop_embedded_worker()

        # Several gunicorn processes: prometheus_client's multiprocess mode (core/metrics.py).
        # The folder starts empty; an exited process's live gauges are dropped.
        multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if multiproc_dir:
            Path(multiproc_dir).mkdir(parents=True, exist_ok=True)
            for stale in Path(multiproc_dir).glob("*.db"):
                stale.unlink()

        def child_exit(server, worker) -> None:
            if multiproc_dir:
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(worker.pid)

        class App(BaseApplication):
            def load_config(self) -> None:
                for key, value in {
                    "bind": f"{host}:{port}",
                    "workers": workers,
                    "threads": threads,
                    "worker_class": worker_class,
                    "timeout": 120,
                    "graceful_timeout": 30,
                    "accesslog": os.environ.get("ACCESS_LOG") or None,
                    "post_worker_init": post_worker_init,
                    "worker_exit": worker_exit,
                    "child_exit": child_exit,
                }.items():
                    self.cfg.set(key, value)

            def load(self):
                return application

        App().run()
