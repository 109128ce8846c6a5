"""Lanes: the threads a process runs its pipeline calls on.

A process runs pipeline calls on `lane_count()` lanes. A lane is one thread with its
own pipeline objects (diffusers pipelines and schedulers keep per-call state) sharing
one set of weights; a lock per lane (`run_lock`) serialises the calls of that lane. On
CUDA/MPS there is one lane (one call at a time; batching fills the device); on CPU one
lane per core, each with one torch thread (measured: two single-threaded calls side by
side make ~1.6x the images of one call on two threads, see docs/benchmarks.md).

Why fixed threads: torch's CPU kernels use an OpenMP thread team per calling thread,
and an idle team keeps spinning for a while. With worker threads taking turns, the
teams fought over the cores and one 256x256 image took 200+ ms instead of 90 ms
(docs/benchmarks.md). Fixed lanes also keep the CUDA stream and allocator in one place.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

import torch

from images.backends.local import config
from images.backends.local.device import select_device

logger = logging.getLogger(__name__)

T = TypeVar("T")

_LANE = threading.local()
_RUN_LOCKS: dict[int, threading.Lock] = {}
_RUN_LOCKS_GUARD = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_guard = threading.Lock()
# A thread waiting for a lane wakes this often (s), so that an asynchronous exception
# aimed at it (Dramatiq's TimeLimitExceeded) is raised within this time instead of when
# the lane's call ends.
WAIT_SLICE = 0.25


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def lane_count(processes: int | None = None) -> int:
    """How many pipeline calls a process runs side by side: the configured `lanes`
    (PIPELINE_LANES), else 1 on CUDA/MPS or when compiling and, on CPU, the process's
    share of the usable cores (at most 4) when `processes` worker processes (None: the
    configured worker_processes) share the machine."""
    settings = config.current()
    if settings.lanes:
        return settings.lanes
    device, _ = select_device()
    if device != "cpu" or settings.compile:  # (compiled graphs: one caller at a time)
        return 1
    return max(1, min(4, usable_cores() // (processes or settings.worker_processes)))


def lane_threads(lanes: int) -> int | None:
    """On CPU, each lane of each worker process gets an equal share of the cores as
    torch intra-op threads; None when the operator set OMP_NUM_THREADS (torch honours
    it itself) or on an accelerator."""
    settings = config.current()
    device, _ = select_device()
    if device == "cpu" and not settings.omp_num_threads:
        return max(1, usable_cores() // (settings.worker_processes * max(1, lanes)))
    return None


def configure_threads(lanes: int) -> int:
    """Set the calling thread's torch intra-op threads to its lane share (OpenMP keeps
    the count per thread, so each lane thread calls this for itself, and callers that
    are not lanes keep theirs). Returns the calling thread's thread count."""
    threads = lane_threads(lanes)
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def set_lane(index: int) -> None:
    """Make the calling thread lane `index` (done once by each lane thread)."""
    _LANE.index = index


def current_lane() -> int:
    """The calling thread's lane; threads that are not lanes use lane 0."""
    return getattr(_LANE, "index", 0)


def run_lock(lane: int) -> threading.Lock:
    """The lock a pipeline call on `lane` holds for its whole length."""
    with _RUN_LOCKS_GUARD:
        return _RUN_LOCKS.setdefault(lane, threading.Lock())


def pool() -> ThreadPoolExecutor:
    """The process's lane threads, started (and torch's CPU threads divided) on first use."""
    global _pool
    with _pool_guard:
        if _pool is None:
            count = lane_count()
            numbers = itertools.count()

            def start_lane() -> None:
                set_lane(next(numbers))
                configure_threads(count)

            _pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="lane", initializer=start_lane)
            logger.info("%d pipeline lane(s), %s torch thread(s) each", count, lane_threads(count) or "default")
        return _pool


def wait(future: Future[T]) -> T:
    """future.result(), in slices of WAIT_SLICE seconds (see WAIT_SLICE)."""
    while True:
        try:
            return future.result(timeout=WAIT_SLICE)
        except FutureTimeout:
            if future.done():  # the function itself raised TimeoutError
                raise


def gpu_call(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run `function` on a free lane of the process and wait for it."""
    return wait(pool().submit(function, *args, **kwargs))
