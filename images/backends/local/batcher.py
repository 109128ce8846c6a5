"""Batching across requests: a per-process batcher that groups compatible jobs from
different customers into one pipeline call.

Worker threads hand their task to `batcher.run(task)`. When batching is on (the
model's or device's maximum batch is above 1) the thread waits for company until the
batch is full (the pending compatible tasks reach the maximum number of images) or
`window_ms` has passed, whichever comes first: the window is an upper bound, as in Ray
Serve's `@serve.batch`, never a fixed wait. It then takes every pending task with the
same batch key (model source, size, steps, guidance, the family's isolation key, the
LoRA adapter set; text-to-image only) up to the maximum number of images, and runs them
as one `runner.run_batch` call; each task gets its own result (its own seeds, progress,
previews and stopping). A thread whose task was taken by another simply waits for it.
With a maximum of 1 (the CPU default: batching measured slower there) a task runs
alone at once, with no wait. Calls run on the process's lanes, so with several lanes
(CPU) several calls run side by side.

A group is run, and its members' results handed out, entirely on the lane: the thread
that formed the group only waits like the others, so if it is interrupted (Dramatiq's
time limit) its companions still get their results.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field

from images.backends.base import GenerationResult, GenerationTask, PipelineError
from images.backends.local import adapters, families, lanes, runner

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _Entry:
    key: tuple
    task: GenerationTask
    images: int
    future: Future = field(default_factory=Future)


def batch_key(task: GenerationTask) -> tuple | None:
    """Tasks with equal keys may share a pipeline call; None: always alone."""
    if task.init_image is not None or task.control is not None or task.ip_adapter is not None:
        return None  # (an input image of its own; a ControlNet or IP-Adapter call: always alone)
    # The family adds what companions must share so that they cannot change each
    # other's images (a negative prompt's presence; for some families the prompt).
    return (
        task.source,
        task.width,
        task.height,
        task.steps,
        float(task.guidance),
        *families.family_for_source(task.source).batch_key(task),
        adapters.effective(task.loras),  # batch-mates share their adapter set (issue 23)
    )


class Batcher:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Notified when a task arrives or is taken: a waiting thread looks again whether
        # its batch is full or its task was taken.
        self._changed = threading.Condition(self._lock)
        self._pending: list[_Entry] = []

    def run(self, task: GenerationTask, *, max_batch: int | None = None, window_ms: float = 0.0) -> GenerationResult:
        """Run `task` (maybe with other threads' compatible tasks) and wait for its
        result. Raises PipelineError; a stopped task returns with `stopped` set."""
        limit = runner.resolve_max_batch(max_batch)
        key = batch_key(task)
        if key is None or limit <= 1 or len(task.seeds) >= limit:
            return lanes.gpu_call(runner.run_batch, [task], max_batch=limit)[0]
        entry = _Entry(key, task, len(task.seeds))
        with self._changed:
            self._pending.append(entry)
            self._changed.notify_all()
            if window_ms > 0:
                self._changed.wait_for(lambda: self._full_or_taken(entry, limit), timeout=window_ms / 1000)
        group = self._take(entry, limit)
        if group:
            lanes.pool().submit(self._run_group, group, limit)
        return lanes.wait(entry.future)

    def _full_or_taken(self, entry: _Entry, limit: int) -> bool:
        """(Lock held.) Whether `entry` was taken into another thread's batch, or the
        pending tasks with its key already make `limit` images (no more company fits)."""
        if entry not in self._pending:
            return True
        return sum(e.images for e in self._pending if e.key == entry.key) >= limit

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
            self._changed.notify_all()  # its companions stop waiting for the window
            return group

    @staticmethod
    def _run_group(group: list[_Entry], limit: int) -> None:
        """On a lane: run the group and resolve every member's future, whatever happens."""
        try:
            try:
                results = runner.run_batch([e.task for e in group], max_batch=limit)
            except Exception as exc:
                if len(group) == 1:
                    group[0].future.set_exception(exc)
                    return
                # One bad task must not fail its companions: run each alone.
                for member in group:
                    try:
                        member.future.set_result(runner.run_batch([member.task], max_batch=limit)[0])
                    except Exception as exc:
                        member.future.set_exception(exc)
                return
            for member, result in zip(group, results, strict=True):
                member.future.set_result(result)
        finally:
            for member in group:  # (only after a BaseException: never leave a waiter hanging)
                if not member.future.done():
                    member.future.set_exception(PipelineError("generation failed: the batch was aborted"))


batcher = Batcher()
