"""Batching across requests: jobs from different threads share one pipeline call, and
each image is the same (per seed) as when its job runs alone."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from images.backends.base import GenerationTask, PipelineError
from images.backends.local import cache, lanes, runner
from images.backends.local.batcher import Batcher


def task(source, seeds, prompt="a red fox", width=256):
    return GenerationTask(
        source=source, prompt=prompt, negative_prompt=None, width=width, height=256, steps=4, guidance=5.0, seeds=seeds
    )


def counting_run_batch(monkeypatch):
    calls: list[int] = []
    real = runner.run_batch

    def run_batch(tasks, *, max_batch=None):
        calls.append(len(tasks))
        return real(tasks, max_batch=max_batch)

    monkeypatch.setattr(runner, "run_batch", run_batch)
    return calls


def run_together(batch: Batcher, tasks, **options):
    results = [None] * len(tasks)

    def one(i):
        results[i] = batch.run(tasks[i], **options)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(tasks))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_jobs_from_two_threads_share_one_call_and_match_alone(source, monkeypatch):
    calls = counting_run_batch(monkeypatch)
    a, b = task(source, [11, 12], "a lighthouse"), task(source, [13], "a red fox")
    together = run_together(Batcher(), [a, b], max_batch=4, window_ms=300)
    assert calls == [2]  # one pipeline call for both customers' jobs
    alone = [runner.run_batch([t], max_batch=1)[0] for t in (a, b)]
    for batched, single in zip(together, alone, strict=True):
        assert len(batched.images) == len(single.images)
        for x, y in zip(batched.images, single.images, strict=True):
            assert np.abs(np.asarray(x, dtype=int) - np.asarray(y, dtype=int)).max() <= 2


def test_incompatible_jobs_are_not_batched(source, monkeypatch):
    calls = counting_run_batch(monkeypatch)
    run_together(Batcher(), [task(source, [1]), task(source, [2], width=128)], max_batch=4, window_ms=200)
    assert sorted(calls) == [1, 1]


def test_max_batch_bounds_the_group(source, monkeypatch):
    calls = counting_run_batch(monkeypatch)
    run_together(Batcher(), [task(source, [1, 2]), task(source, [3, 4]), task(source, [5])], max_batch=3, window_ms=300)
    assert sum(calls) == 3 and max(calls) <= 2  # never more than 3 images in one call


def test_batching_off_runs_at_once(source):
    started = time.monotonic()
    Batcher().run(task(source, [1]), max_batch=1, window_ms=5_000)
    assert time.monotonic() - started < 4  # did not wait for the window


def test_a_bad_job_does_not_fail_its_companions(source):
    good, bad = task(source, [1]), task(source, [2])
    bad.on_preview = "not callable"  # run_batch refuses this task
    results = {}

    def one(name, t):
        try:
            results[name] = Batcher.run(shared, t, max_batch=4, window_ms=300)
        except PipelineError as exc:
            results[name] = exc

    shared = Batcher()
    threads = [threading.Thread(target=one, args=item) for item in (("good", good), ("bad", bad))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results["good"].images) == 1
    assert isinstance(results["bad"], PipelineError)


# ---------------------------------------------------------------------------
# Lanes: several pipeline calls side by side in one process (the CPU default)
# ---------------------------------------------------------------------------


@pytest.fixture
def two_lanes(monkeypatch, pipeline_config):
    """A fresh two-lane pool for this test (the process's own pool is put back after)."""
    pipeline_config(lanes=2)
    monkeypatch.setattr(lanes, "_pool", None)
    threads = torch.get_num_threads()
    yield
    if lanes._pool is not None:
        lanes._pool.shutdown(wait=True)
    torch.set_num_threads(threads)


def test_lane_pipelines_share_weights_but_not_call_state(source):
    zero, one = cache.get_pipeline(source, lane=0), cache.get_pipeline(source, lane=1)
    assert one is not zero and cache.get_pipeline(source, lane=1) is one
    assert one.unet is zero.unet and one.vae is zero.vae and one.text_encoder is zero.text_encoder
    assert one.scheduler is not zero.scheduler and one.tokenizer is not zero.tokenizer
    derived = cache.get_pipeline(source, "img2img", lane=1)
    assert derived.scheduler is one.scheduler and derived.unet is zero.unet


def test_two_lanes_run_two_jobs_at_once_with_the_same_images_as_alone(source, two_lanes):
    assert lanes.lane_count() == 2
    meeting = threading.Barrier(2, timeout=20)
    met, lanes_seen, threads_seen = [], set(), set()

    def on_step(done, total):
        lanes_seen.add(lanes.current_lane())
        threads_seen.add(torch.get_num_threads())
        if done == 1:  # both calls must be inside the pipeline at the same time to pass
            meeting.wait()
            met.append(True)

    a, b = task(source, [21], "a lighthouse"), task(source, [22], "a red fox")
    a.on_step = b.on_step = on_step
    together = run_together(Batcher(), [a, b], max_batch=1)
    assert met == [True, True] and lanes_seen == {0, 1}
    assert threads_seen == {max(1, lanes.usable_cores() // 2)}  # the cores shared out between lanes
    a.on_step = b.on_step = None
    for batched, t in zip(together, (a, b), strict=True):
        single = runner.run_batch([t], max_batch=1, lane=0)[0]
        for x, y in zip(batched.images, single.images, strict=True):
            assert np.abs(np.asarray(x, dtype=int) - np.asarray(y, dtype=int)).max() <= 2


def test_warm_up_prepares_every_lane(source, two_lanes):
    runner.warm_up(source, lanes=2)
    key = cache.cache_key(source)
    assert (key, "text2img", 1) in cache._VARIANTS


def test_a_full_batch_fires_before_the_window(source, monkeypatch):
    """The window is an upper bound (as in Ray Serve's @serve.batch): once the pending
    compatible tasks make max_batch images, the call starts at once. The window here is a
    minute; the shared call must start within a quarter of it (the old fixed wait slept
    the whole minute first)."""
    window_s = 60
    fired = threading.Event()
    calls: list[int] = []
    real = runner.run_batch

    def run_batch(tasks, *, max_batch=None):
        calls.append(len(tasks))
        fired.set()
        return real(tasks, max_batch=max_batch)

    monkeypatch.setattr(runner, "run_batch", run_batch)
    shared, results = Batcher(), {}

    def one(name, t):
        results[name] = shared.run(t, max_batch=3, window_ms=window_s * 1000)

    jobs = {"a": task(source, [31, 32], "a lighthouse"), "b": task(source, [33], "a red fox")}
    threads = [threading.Thread(target=one, args=item, daemon=True) for item in jobs.items()]
    for thread in threads:
        thread.start()
    assert fired.wait(timeout=window_s / 4), "the full batch waited for the window"
    for thread in threads:
        thread.join(timeout=window_s / 4)
    assert calls == [2]  # both jobs (3 images: the maximum) in one call
    assert [len(results[name].images) for name in ("a", "b")] == [2, 1]


def test_a_batch_that_is_not_full_waits_for_company_within_the_window(source, monkeypatch):
    """A task short of max_batch still waits (up to the window) for a companion that
    arrives later, and both share one call."""
    calls = counting_run_batch(monkeypatch)
    shared, results = Batcher(), {}

    def one(name, t):
        results[name] = shared.run(t, max_batch=4, window_ms=20_000)

    first = threading.Thread(target=one, args=("a", task(source, [41])), daemon=True)
    first.start()
    while not shared._pending:  # the first task is waiting for company
        time.sleep(0.01)
    assert calls == []
    second = threading.Thread(target=one, args=("b", task(source, [42, 43, 44])), daemon=True)
    second.start()  # 1 + 3 images: the batch is full, so it fires now
    first.join(timeout=10)
    second.join(timeout=10)
    assert calls == [2] and len(results["a"].images) == 1 and len(results["b"].images) == 3
