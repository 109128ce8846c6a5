"""Phases 2 and 3: the platform over HTTP, as a client sees it (keep-alive connections,
C requests at a time), summarised with the job timings from tools.bench.probe."""

from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from tools import ToolError
from tools.bench import PROMPT
from tools.bench.measure import percentile, rounded

Call = tuple[str, str, str, "dict | None"]  # method, path, API key, JSON body


class Client:
    """One keep-alive HTTP connection per thread."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname, parts.port
        self.local = threading.local()

    def request(self, method: str, path: str, key: str, body: dict | None = None) -> tuple[int, bytes, float]:
        """(status, body, seconds) for one request, reconnecting once on a dropped connection."""
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {key}"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = http.client.HTTPConnection(self.host, self.port, timeout=600)
            started = time.perf_counter()
            try:
                conn.request(method, path, body=payload, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except (http.client.HTTPException, OSError):
                conn.close()
                self.local.conn = None
                if attempt == 2:
                    raise
                continue
            elapsed = time.perf_counter() - started
            if response.getheader("Connection", "").lower() == "close":
                conn.close()
                self.local.conn = None
            return response.status, data, elapsed
        raise AssertionError("unreachable")


def drive(client: Client, calls: list[Call], concurrency: int) -> tuple[float, list[tuple[int, bytes, float]]]:
    """Run calls `concurrency` at a time; (wall seconds, results in order)."""
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        started = time.perf_counter()
        results = list(pool.map(lambda call: client.request(*call), calls))
        wall = time.perf_counter() - started
    return wall, results


def generation_body(model: str, size: str, prompt: str) -> dict[str, Any]:
    return {"model": model, "prompt": prompt, "size": size, "n": 1, "response_format": "b64_json"}


def run_generations(
    client: Client, key: str, *, model: str, size: str, n: int, concurrency: int, label: str
) -> dict[str, Any]:
    """N generation requests, `concurrency` at a time; every one must return an image.
    Prompts start with "bench " so that job_timings finds them."""
    prompts = [f"bench {label} {i:04d} {PROMPT}" for i in range(n)]
    calls = [("POST", "/v1/images/generations", key, generation_body(model, size, p)) for p in prompts]
    wall, results = drive(client, calls, concurrency)
    failures = []
    latencies: dict[str, float] = {}
    for prompt, (status, body, seconds) in zip(prompts, results, strict=True):
        ok = status == 200 and json.loads(body).get("data", [{}])[0].get("b64_json")
        if ok:
            latencies[prompt] = seconds * 1000
        else:
            failures.append(f"{status}: {body[:200]!r}")
    if failures:
        raise ToolError(f"{len(failures)} of {n} generation requests failed, e.g. {failures[0]}")
    return {"wall_s": wall, "latency_ms": latencies}


def summarise_generations(
    runs: list[dict[str, Any]], jobs: dict[str, dict[str, Any]], n: int, lanes: int
) -> dict[str, Any]:
    """Throughput: the median over the runs; latency and overhead percentiles: over every
    request. `jobs` is tools.bench.probe.job_timings' answer."""
    latencies = {prompt: ms for run in runs for prompt, ms in run["latency_ms"].items()}
    rates = [n / run["wall_s"] for run in runs]
    wall_per_image_ms = statistics.median(run["wall_s"] for run in runs) * 1000 / n
    overhead, gpu, server, wait, settle = [], [], [], [], []
    for prompt, latency in latencies.items():
        job = jobs.get(prompt)
        if not job or job["gpu_ms"] is None:
            raise ToolError(f"no finished job found for {prompt!r}")
        gpu.append(job["gpu_ms"])
        overhead.append(latency - job["gpu_ms"])
        if job["latency_ms"] is not None:
            server.append(job["latency_ms"])  # created -> finished, as the worker saw it
        if job["queue_wait_ms"] is not None:
            wait.append(job["queue_wait_ms"])
        if job["finished"] and job["started"]:
            settle.append((job["finished"] - job["started"]) * 1000 - job["gpu_ms"])
    return {
        "images": n * len(runs),
        "images_per_s": rounded(statistics.median(rates), 3),
        "images_per_s_runs": [rounded(v, 3) for v in rates],
        "latency_ms_p50": rounded(percentile(list(latencies.values()), 50)),
        "latency_ms_p95": rounded(percentile(list(latencies.values()), 95)),
        "pipeline_ms_p50": rounded(percentile(gpu, 50)),
        "pipeline_ms_p95": rounded(percentile(gpu, 95)),
        "pipeline_ms_mean": rounded(statistics.fmean(gpu)),
        "overhead_ms_p50": rounded(percentile(overhead, 50)),
        "overhead_ms_p95": rounded(percentile(overhead, 95)),
        # Per image and lane, the wall time the lane's pipeline was not running (what
        # throughput loses): wall per image x lanes - mean pipeline time.
        "idle_ms_per_image": rounded(wall_per_image_ms * lanes - statistics.fmean(gpu)),
        "job_created_to_finished_ms_p50": rounded(percentile(server, 50)),
        "job_queue_wait_ms_p50": rounded(percentile(wait, 50)),
        # started -> finished minus the pipeline call: waiting for a free lane (at C>1),
        # token count, PNG encode + store, settle.
        "job_started_to_finished_minus_pipeline_ms_p50": rounded(percentile(settle, 50)),
    }


def run_api(
    client: Client, *, broke_key: str, balance_key: str, model: str, size: str, requests: int, concurrency: int
) -> dict[str, Any]:
    """Requests/second and latency of a 402 refusal and of GET /v1/balance."""
    out: dict[str, Any] = {}
    cases = {
        "refused_402": (
            "POST",
            "/v1/images/generations",
            broke_key,
            generation_body(model, size, f"broke {PROMPT}"),
            402,
        ),
        "balance": ("GET", "/v1/balance", balance_key, None, 200),
    }
    for name, (method, path, key, body, expected) in cases.items():
        drive(client, [(method, path, key, body)] * concurrency * 2, concurrency)  # warm connections
        wall, results = drive(client, [(method, path, key, body)] * requests, concurrency)
        wrong = [status for status, _, _ in results if status != expected]
        if wrong:
            raise ToolError(f"{name}: expected {expected}, got {wrong[0]} ({len(wrong)} of {requests})")
        ms = [seconds * 1000 for _, _, seconds in results]
        out[name] = {
            "requests": requests,
            "concurrency": concurrency,
            "requests_per_s": rounded(requests / wall, 1),
            "latency_ms_p50": rounded(percentile(ms, 50), 2),
            "latency_ms_p95": rounded(percentile(ms, 95), 2),
        }
    return out
