"""Dramatiq middleware run by every worker (separate or embedded): at boot it starts
the deadline sweeper and warms the enabled models' pipelines in the background."""
from __future__ import annotations

import logging
import threading

import dramatiq

logger = logging.getLogger(__name__)


class WorkerLifecycle(dramatiq.Middleware):
    def __init__(self) -> None:
        self._stop = threading.Event()

    def after_worker_boot(self, broker, worker) -> None:
        self._stop.clear()
        threading.Thread(target=self._sweep_loop, name="deadline-sweeper", daemon=True).start()
        threading.Thread(target=self._warm_up, name="warm-up", daemon=True).start()

    def before_worker_shutdown(self, broker, worker) -> None:
        self._stop.set()

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
            from images.worker import pipeline_source

            backend = get_backend()
            models = ImageModel.objects.filter(enabled=True, queue__in=settings.GPU_QUEUES)
            sources = {pipeline_source(m) for m in models}
            for source in list(sources)[: settings.PIPELINE_CACHE_SIZE]:
                backend.warm_up(source)
                logger.info("warmed up %s", source.source)
        except Exception:
            logger.exception("warm-up failed; models will load on first use")
        finally:
            connection.close()
