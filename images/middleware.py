"""Dramatiq middleware run by every worker (separate or embedded): at boot it starts
the deadline sweeper, the heartbeat (core/heartbeats.py: host, queues, device, memory,
jobs) and the retention sweep (images/services/retention.py), and warms the enabled
models' pipelines in the background."""

from __future__ import annotations

import logging
import os
import random
import socket
import threading

import dramatiq

logger = logging.getLogger(__name__)


class WorkerLifecycle(dramatiq.Middleware):
    def __init__(self) -> None:
        self._stop = threading.Event()
        self._count_lock = threading.Lock()
        self._running = 0
        self._done = 0

    def after_worker_boot(self, broker, worker) -> None:
        self._stop.clear()
        threading.Thread(target=self._sweep_loop, name="deadline-sweeper", daemon=True).start()
        threading.Thread(target=self._warm_up, name="warm-up", daemon=True).start()
        self._queues = sorted(getattr(worker, "queues", None) or broker.get_declared_queues())
        threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True).start()
        threading.Thread(target=self._retention_loop, name="retention-sweep", daemon=True).start()

    def before_worker_shutdown(self, broker, worker) -> None:
        self._stop.set()

    def before_process_message(self, broker, message) -> None:
        with self._count_lock:
            self._running += 1

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        with self._count_lock:
            self._running -= 1
            self._done += 1

    def _heartbeat_loop(self) -> None:
        """Every WORKER_HEARTBEAT_SECONDS: this process's row in core.WorkerHeartbeat;
        removed on a clean shutdown (a row left silent is a worker gone quiet)."""
        from django.conf import settings
        from django.db import close_old_connections
        from django.utils import timezone

        from core.heartbeats import heartbeat_forget, heartbeat_record

        if settings.WORKER_HEARTBEAT_SECONDS <= 0:
            return
        host, pid, started_at = socket.gethostname(), os.getpid(), timezone.now()
        worker_id = f"{host}:{pid}"
        device = _device_label()
        while True:
            try:
                with self._count_lock:
                    running, done = self._running, self._done
                heartbeat_record(
                    worker_id=worker_id,
                    host=host,
                    pid=pid,
                    queues=self._queues,
                    device=device,
                    started_at=started_at,
                    jobs_running=running,
                    jobs_done=done,
                    device_memory_bytes=_device_memory_bytes(),
                )
            except Exception:
                logger.warning("could not record the worker heartbeat", exc_info=True)
            finally:
                close_old_connections()
            if self._stop.wait(settings.WORKER_HEARTBEAT_SECONDS):
                break
        try:
            heartbeat_forget(worker_id=worker_id)
        except Exception:
            pass
        finally:
            close_old_connections()

    def _retention_loop(self) -> None:
        """Every RETENTION_SWEEP_SECONDS (first after a random part of it, so that many
        workers do not start together): delete what is past RETENTION_DAYS. Safe from
        many processes at once: every deletion is idempotent."""
        from django.conf import settings
        from django.db import close_old_connections

        from images.services.retention import retention_sweep

        period = settings.RETENTION_SWEEP_SECONDS
        if period <= 0 or settings.RETENTION_DAYS <= 0:
            return
        wait = random.uniform(0.1, 1.0) * period
        while not self._stop.wait(wait):
            wait = period
            try:
                result = retention_sweep()
                if result.total:
                    logger.info("retention sweep: %s", result.summary())
            except Exception:
                logger.exception("retention sweep failed")
            finally:
                close_old_connections()

    def before_worker_thread_shutdown(self, broker, thread) -> None:
        from django.db import connections

        connections.close_all()  # this thread's connections; nothing else will close them

    def _sweep_loop(self) -> None:
        from django.conf import settings
        from django.db import close_old_connections

        from images.services.jobs import jobs_sweep

        if settings.JOB_SWEEP_SECONDS <= 0:
            return
        while not self._stop.wait(settings.JOB_SWEEP_SECONDS):
            try:
                released = jobs_sweep()
                if released:
                    logger.warning("deadline sweep failed %d job(s) and released their holds", released)
            except Exception:
                logger.exception("deadline sweep failed")
            finally:
                close_old_connections()

    def _warm_up(self) -> None:
        from django.conf import settings
        from django.db import connection

        if not settings.WARM_UP_MODELS:
            return
        try:
            from images.backends import get_backend
            from images.models import ImageModel
            from images.services.models import pipeline_source

            backend = get_backend()
            # Generators only: a tool model (issue 26) loads through its own loader on its
            # first job (images/backends/local/tools.py), not as a diffusers pipeline.
            models = ImageModel.objects.filter(
                enabled=True, queue__in=settings.GPU_QUEUES, kind=ImageModel.Kind.GENERATOR
            )
            sources = {pipeline_source(m) for m in models}
            for source in list(sources)[: settings.PIPELINE_CACHE_SIZE]:
                try:  # one model that fails to warm up must not keep the others cold
                    backend.warm_up(source)
                    logger.info("warmed up %s", source.source)
                except Exception:
                    logger.exception("warm-up of %s failed; it will load on first use", source.source)
        except Exception:
            logger.exception("warm-up failed; models will load on first use")
        finally:
            connection.close()


def _device_label() -> str:
    """What this worker runs on, for its heartbeat ("cuda: <name>", "cpu"); never raises."""
    try:
        from images.backends import get_backend  # the one way in (images/backends/__init__.py)

        info = get_backend().device_info()
        return f"{info['device']}: {info['cuda_name']}" if info.get("cuda_name") else info["device"]
    except Exception:
        return "unknown"


def _device_memory_bytes() -> int:
    """Accelerator memory this process holds (CUDA), 0 elsewhere; torch only if already loaded."""
    import sys

    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            return int(torch.cuda.memory_reserved())
    except Exception:
        pass
    return 0
