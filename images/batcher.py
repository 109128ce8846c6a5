"""Batching across requests: a per-process batcher that groups compatible jobs from
different customers into one pipeline call.

Worker threads hand their task to `batcher.run(task)`. When batching is on (the
model's or device's maximum batch is above 1) the thread waits up to
BATCH_WINDOW_MS for company, then takes every pending task with the same batch key
(model source, size, steps, guidance; text-to-image only) up to the maximum number of
images, and runs them as one `pipelines.run_batch` call; each task gets its own
result (its own seeds, progress and previews). A thread whose task was taken by
another simply waits for it. With a maximum of 1 (the CPU default: batching measured
slower there) a task runs alone at once, with no wait. Calls run on the process's lanes
(`gpu_call`), so with several lanes (CPU) several calls run side by side.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable
from dataclasses import dataclass, field

from images import pipelines

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _Entry:
    key: tuple
    task: pipelines.GenerationTask
    images: int
    future: Future = field(default_factory=Future)


# Every pipeline call of the process runs on one of its lanes (pipelines.lane_count():
# one on CUDA/MPS, one per core on CPU), threads that only ever call the pipeline.
# torch's CPU kernels use an OpenMP thread team per calling thread, and an idle team
# keeps spinning for a while: with worker threads taking turns, the teams fought over the
# cores and one 256x256 image took 200+ ms instead of 90 ms (docs/benchmarks.md). Fixed
# lanes also keep the CUDA stream and allocator in one place.
_lanes: ThreadPoolExecutor | None = None
_lanes_guard = threading.Lock()


def lanes() -> ThreadPoolExecutor:
    """The process's lane threads, started (and torch's CPU threads divided) on first use."""
    global _lanes
    with _lanes_guard:
        if _lanes is None:
            count = pipelines.lane_count()
            threads = pipelines.configure_threads(count)
            numbers = itertools.count()
            _lanes = ThreadPoolExecutor(max_workers=count, thread_name_prefix="lane",
                                        initializer=lambda: pipelines.set_lane(next(numbers)))
            logger.info("%d pipeline lane(s), %d torch thread(s)", count, threads)
        return _lanes


def gpu_call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run `function` on a free lane of the process and wait for it."""
    return lanes().submit(function, *args, **kwargs).result()


def batch_key(task: pipelines.GenerationTask) -> tuple | None:
    """Tasks with equal keys may share a pipeline call; None: always alone."""
    if task.init_image is not None:
        return None
    return (task.source, task.width, task.height, task.steps, float(task.guidance))


class Batcher:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[_Entry] = []

    def run(self, task: pipelines.GenerationTask, *, max_batch: int | None = None,
            window_ms: float = 0.0) -> pipelines.GenerationResult:
        limit = pipelines._resolve_max_batch(max_batch)
        key = batch_key(task)
        if key is None or limit <= 1 or len(task.seeds) >= limit:
            return gpu_call(pipelines.run_batch, [task], max_batch=limit)[0]
        entry = _Entry(key, task, len(task.seeds))
        with self._lock:
            self._pending.append(entry)
        if window_ms > 0:
            time.sleep(window_ms / 1000)
        group = self._take(entry, limit)
        if group:
            self._run_group(group, limit)
        return entry.future.result()

    def _take(self, entry: _Entry, limit: int) -> list[_Entry]:
        """Claim this entry (if nobody has) and compatible company up to `limit` images."""
        with self._lock:
            if entry not in self._pending:
                return []  # another thread took it into its batch
            group, images = [], 0
            for other in [entry] + [e for e in self._pending if e is not entry and e.key == entry.key]:
                if group and images + other.images > limit:
                    continue
                group.append(other)
                images += other.images
            for member in group:
                self._pending.remove(member)
            return group

    @staticmethod
    def _run_group(group: list[_Entry], limit: int) -> None:
        try:
            results = gpu_call(pipelines.run_batch, [e.task for e in group], max_batch=limit)
        except Exception as exc:
            if len(group) == 1:
                group[0].future.set_exception(exc)
                return
            # One bad task must not fail its companions: run each alone.
            for member in group:
                try:
                    member.future.set_result(gpu_call(pipelines.run_batch, [member.task], max_batch=limit)[0])
                except Exception as exc:
                    member.future.set_exception(exc)
            return
        for member, result in zip(group, results):
            member.future.set_result(result)


batcher = Batcher()
