"""`make run`: serve the API with gunicorn (threads), and in the embedded mode also
run the Dramatiq worker inside the same process."""

from __future__ import annotations

import os
from pathlib import Path

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


class Command(BaseCommand):
    help = "Serve the platform on 127.0.0.1:$PORT (in-process worker when BROKER_URL is unset)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=settings.PORT)
        parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "1")))
        parser.add_argument("--threads", type=int, default=settings.WEB_THREADS)

    def handle(self, *args, host: str, port: int, workers: int, threads: int, **options):
        from gunicorn.app.base import BaseApplication

        from core.waiting import waiting_configure
        from wsgi import application

        try:  # (before gunicorn forks: every process inherits it)
            max_waiting = waiting_configure(threads=threads)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        embedded = not settings.BROKER_URL
        if embedded:
            workers = 1  # the in-process broker lives in one process
            key = demo_tenant_ensure(self.stdout) if settings.EMBEDDED else None
            if key:
                base = f"http://{host}:{port}"
                self.stdout.write(
                    f"\nDemo API key: {key}\nTry:\n  curl {base}/v1/images/generations "
                    f"-H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' "
                    f'-d \'{{"model": "dall-e-2", "prompt": "a lighthouse", "size": "256x256", '
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
        self.stdout.write(
            f"Serving on http://{host}:{port} ({queue}; {threads} threads per process, "
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
                    "worker_class": "gthread",
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
