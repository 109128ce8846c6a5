"""`make bench`: how fast the platform turns requests into images, against diffusers alone.

One invocation, three sequential phases (never two at once, so they do not share the CPU):

1. direct   - the model in a plain diffusers loop (AutoPipelineForText2Image.from_pretrained,
              one call per image, PNG-encoded as images/files.py does): the ceiling.
2. platform - a real deployment (gunicorn `manage.py serve` plus, with BROKER_URL, one
              separate `manage.py runworker` process) on a fresh database, driven over HTTP
              by N JSON requests at concurrency C (response_format b64_json); then the same
              N at concurrency 1, where latency minus the job's own pipeline time is the
              platform's own cost per request (at C>1 it also includes waiting for the
              other jobs, since one worker runs one pipeline call at a time).
3. api      - requests/second and latency of a 402 (a tenant with no credits) and of
              GET /v1/balance.

The deployment uses PostgreSQL + Redis when DATABASE_URL / BROKER_URL / CACHE_URL say so
(a fresh database named after DATABASE_URL's, dropped afterwards; its own broker
namespace), else SQLite and the in-process worker. Results: a table on stdout and JSON
in --out. See docs/benchmarks.md.
"""
from __future__ import annotations

import gc
import http.client
import json
import os
import platform as platform_mod
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from images.management.commands.runworker import processes_arg

ROOT = Path(__file__).resolve().parents[3]
PROMPT = "a lighthouse at dusk, oil painting"


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------

def _pct(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat (0, 0 elsewhere)."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields) - idle) / tick, sum(fields) / tick


def _cpu_by_group(sessions: dict[int, str]) -> dict[str, float]:
    """CPU seconds used so far by every live process, summed per group: the session ids
    in `sessions` (the deployment's process trees), "bench client" (this process),
    "postgresql", "redis", and "other". Linux only ({} elsewhere)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    own = os.getpid()
    totals: dict[str, float] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return totals
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                raw = handle.read()
        except OSError:
            continue  # gone meanwhile
        comm = raw[raw.index("(") + 1: raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2:].split()  # fields[0] is field 3 (state)
        session, cpu = int(fields[3]), (int(fields[11]) + int(fields[12])) / tick
        if int(entry) == own:
            group = "bench client"
        elif session in sessions:
            group = sessions[session]
        elif comm.startswith("postgres"):
            group = "postgresql"
        elif comm.startswith("redis"):
            group = "redis"
        else:
            group = "other"
        totals[group] = totals.get(group, 0.0) + cpu
    return totals


class _CpuWatch:
    """How busy the machine was during a phase, how much of it was this process, and
    (with `sessions`) how the CPU time split between the deployment's processes."""

    def __init__(self, sessions: dict[int, str] | None = None) -> None:
        self.sessions = sessions or {}

    def __enter__(self) -> "_CpuWatch":
        self.groups0 = _cpu_by_group(self.sessions)
        self.busy0, self.total0 = _machine_busy()
        self.own0 = time.process_time()
        self.load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        return self

    def __exit__(self, *exc) -> None:
        busy1, total1 = _machine_busy()
        span = total1 - self.total0
        self.machine_busy_pct = _r(100 * (busy1 - self.busy0) / span, 1) if span > 0 else None
        # In CPU-seconds per wall-second of one core, i.e. 200 = two cores busy.
        self.own_s = time.process_time() - self.own0
        self.busy_s = busy1 - self.busy0
        groups1 = _cpu_by_group(self.sessions)
        self.groups = {name: round(groups1[name] - self.groups0.get(name, 0.0), 2) for name in groups1}

    def as_dict(self, *, own_is_everything: bool) -> dict[str, Any]:
        out = {"machine_busy_pct": self.machine_busy_pct, "loadavg_1m_before": _r(self.load0, 2)}
        if self.sessions:  # CPU-seconds per group over the phase (processes alive at its end)
            out["cpu_s_by_process"] = dict(sorted(self.groups.items(), key=lambda item: -item[1]))
        if own_is_everything:  # direct phase: any other busy time is someone else's
            out["other_processes_cpu_s"] = _r(max(0.0, self.busy_s - self.own_s), 2)
            out["own_cpu_s"] = _r(self.own_s, 2)
        return out


def _wait_quiet(limit_s: float, busy_pct: float = 15.0) -> float:
    """Wait (up to limit_s) for a second in which the machine is less than busy_pct busy,
    so that a phase does not start while something else hogs the CPU. Returns the wait."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        busy0, total0 = _machine_busy()
        time.sleep(1.0)
        busy1, total1 = _machine_busy()
        if total1 <= total0 or 100 * (busy1 - busy0) / (total1 - total0) < busy_pct:
            break
    return round(time.monotonic() - started, 1)


class _Client:
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


def _drive(client: _Client, calls: list[tuple[str, str, str, dict | None]], concurrency: int
           ) -> tuple[float, list[tuple[int, bytes, float]]]:
    """Run calls (method, path, key, body) `concurrency` at a time; (wall seconds, results in order)."""
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        started = time.perf_counter()
        results = list(pool.map(lambda call: client.request(*call), calls))
        wall = time.perf_counter() - started
    return wall, results


# ---------------------------------------------------------------------------
# The deployment under test (the same mechanism as tests/live.py, kept here so that
# the benchmark does not depend on the test package)
# ---------------------------------------------------------------------------

def stop_process_groups(processes: list[subprocess.Popen], *, timeout: float) -> None:
    """SIGTERM each process's group (each was started in a session of its own), wait up
    to `timeout` seconds each, then SIGKILL what is left. tests/live.py uses it too."""
    for proc in processes:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in processes:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Deployment:
    def __init__(self, tmp: Path, *, worker_processes: int, worker_threads: int, web_threads: int) -> None:
        self.tmp = tmp
        self.worker_processes = worker_processes
        self.worker_threads = worker_threads
        self.web_threads = web_threads
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.processes: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.pg_database: str | None = None
        self.namespace: str | None = None
        self.distributed = bool(settings.BROKER_URL)
        env = dict(os.environ)
        env.update({
            "SECRET_KEY": "bench-" + uuid.uuid4().hex, "PORT": str(self.port), "MEDIA_ROOT": str(tmp / "media"),
            "MODEL_DIR": str(settings.MODEL_DIR), "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1",
            "DJANGO_SETTINGS_MODULE": "settings", "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "SESSION_COOKIE_SECURE": "false", "CSRF_COOKIE_SECURE": "false",
            # Rate limits stay on (their cost is part of every request) but high enough
            # that a long run is not refused.
            "DEFAULT_TENANT_RPM": "1000000",
        })
        db = settings.DATABASES["default"]
        if db["ENGINE"] == "django.db.backends.postgresql":
            self.pg_database = f"{db['NAME']}_run_{os.getpid()}_{uuid.uuid4().hex[:6]}"
            user = f"{db['USER']}" + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
            env["DATABASE_URL"] = (f"postgres://{user}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/"
                                   f"{self.pg_database}")
        else:
            env["DATABASE_URL"] = f"sqlite:///{tmp / 'bench.sqlite3'}"
        if self.distributed:
            self.namespace = env["BROKER_NAMESPACE"] = f"bench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.env = env

    # -- database ------------------------------------------------------------
    def _pg_admin(self, sql: str) -> None:
        import psycopg

        db = settings.DATABASES["default"]
        with psycopg.connect(host=db["HOST"] or None, port=db["PORT"] or None, user=db["USER"],
                             password=db["PASSWORD"] or None, dbname="postgres", autocommit=True) as conn:
            conn.execute(sql)

    def manage(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True,
                              text=True, timeout=600)
        if done.returncode:
            raise CommandError(f"manage.py {args[0]} failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
        return done.stdout

    def shell_json(self, code: str) -> Any:
        """Run Python in the deployment's environment; it prints one JSON line last."""
        return json.loads(self.manage("shell", "-c", code).strip().splitlines()[-1])

    def prepare(self) -> None:
        if self.pg_database:
            self._pg_admin(f'CREATE DATABASE "{self.pg_database}"')
        self.manage("migrate", "-v0")
        self.manage("platform_setup")

    def tenants(self, credits: list[int]) -> list[str]:
        """One tenant per entry, with that many credits; their API keys."""
        code = (
            "import json\n"
            "from accounts.services import tenant_create_with_key\n"
            "from billing.services import credits_grant\n"
            "keys = []\n"
            f"for i, amount in enumerate({credits!r}):\n"
            f"    tenant, _, raw = tenant_create_with_key(name=f'bench-{uuid.uuid4().hex[:6]}-{{i}}', created_by='bench')\n"
            "    if amount:\n"
            "        credits_grant(tenant=tenant, amount=amount, actor='bench', note='bench',"
            " idempotency_key=f'initial:{tenant.pk}')\n"
            "    keys.append(raw)\n"
            "print(json.dumps(keys))\n"
        )
        return self.shell_json(code)

    # -- processes -----------------------------------------------------------
    def start(self) -> None:
        commands = [[sys.executable, "manage.py", "serve", "--port", str(self.port), "--workers", "1",
                     "--threads", str(self.web_threads)]]
        if self.distributed:
            commands.append([sys.executable, "manage.py", "runworker", "--processes", str(self.worker_processes),
                             "--threads", str(self.worker_threads)])
        env = dict(self.env)
        if not self.distributed:
            env["EMBEDDED_WORKER_THREADS"] = str(self.worker_threads)
        for i, command in enumerate(commands):
            log = self.tmp / f"process-{i}.log"
            self.logs.append(log)
            self.processes.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("wb"),
                                                   stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + 120
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
            except OSError:
                pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.processes):
                raise CommandError("the deployment did not start:\n" + self.log_text()[-4000:])
            time.sleep(0.2)

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def sessions(self) -> dict[int, str]:
        """Session id (each process is started in its own session) -> what it is."""
        names = ["web (gunicorn)", "worker (dramatiq)"] if self.distributed else ["web + embedded worker"]
        return dict(zip(self.pids(), names))

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def stop(self) -> None:
        stop_process_groups(self.processes, timeout=30)
        self.processes.clear()
        if self.pg_database:
            try:
                self._pg_admin(f'DROP DATABASE IF EXISTS "{self.pg_database}" WITH (FORCE)')
            except Exception as exc:  # report, do not hide the benchmark's own error
                print(f"could not drop {self.pg_database}: {exc}", file=sys.stderr)
        if self.namespace and settings.BROKER_URL.startswith(("redis://", "rediss://", "unix://")):
            try:
                import redis

                client = redis.Redis.from_url(settings.BROKER_URL)
                keys = list(client.scan_iter(match=f"{self.namespace}:*", count=1000))
                if keys:
                    client.delete(*keys)
            except Exception as exc:
                print(f"could not clean the broker namespace {self.namespace}: {exc}", file=sys.stderr)


# ---------------------------------------------------------------------------
# Phases
# ---------------------------------------------------------------------------

def _plain_pipeline(model_path: str, dtype: Any) -> Any:
    """The folder's text-to-image pipeline straight from diffusers (no platform code),
    without the SD 1.x safety checker, as the worker loads it."""
    from diffusers import AutoPipelineForText2Image, DiffusionPipeline

    kwargs: dict[str, Any] = {"local_files_only": True, "dtype": dtype}
    if "safety_checker" in DiffusionPipeline.load_config(model_path, local_files_only=True):
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return AutoPipelineForText2Image.from_pretrained(model_path, **kwargs)


def run_direct(*, model_path: str, n: int, repeats: int, width: int, height: int, steps: int, guidance: float
               ) -> dict[str, Any]:
    """`repeats` runs of N images, one diffusers call each, plus PNG encoding (what the
    worker does per image); images/s is the median over the runs."""
    import diffusers.utils.logging
    import torch
    import transformers.utils.logging

    from images.files import image_encode

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()

    from images.pipelines import select_device

    device, dtype = select_device()  # the worker's choice: CUDA/fp16 > MPS/fp16 > CPU/fp32
    started = time.perf_counter()
    pipe = _plain_pipeline(model_path, dtype)
    pipe.to(device)
    gen_device = device if device.startswith("cuda") else "cpu"
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - started

    def one(seed: int, prompt: str) -> tuple[float, float]:
        t0 = time.perf_counter()
        image = pipe(prompt=prompt, num_inference_steps=steps, guidance_scale=guidance, width=width, height=height,
                     generator=torch.Generator(gen_device).manual_seed(seed)).images[0]
        t1 = time.perf_counter()
        image_encode(image, output_format="png")
        return t1 - t0, time.perf_counter() - t1

    for seed in range(2):  # warm-up, not counted
        one(10_000 + seed, f"warm up {PROMPT}")
    pipe_s: list[float] = []
    encode_s: list[float] = []
    rates: list[float] = []
    with _CpuWatch() as watch:
        for r in range(repeats):
            started = time.perf_counter()
            for i in range(n):
                p, e = one(r * n + i, f"bench {r}-{i:04d} {PROMPT}")
                pipe_s.append(p)
                encode_s.append(e)
            rates.append(n / (time.perf_counter() - started))
    del pipe
    gc.collect()
    return {
        "images": n * repeats, "images_per_s": _r(statistics.median(rates), 3),
        "images_per_s_runs": [_r(v, 3) for v in rates], "load_s": _r(load_s, 2),
        "pipeline_ms_p50": _r(_pct([s * 1000 for s in pipe_s], 50)),
        "pipeline_ms_p95": _r(_pct([s * 1000 for s in pipe_s], 95)),
        "png_ms_p50": _r(_pct([s * 1000 for s in encode_s], 50), 2),
        "torch_threads": torch.get_num_threads(), "device": device, "dtype": str(dtype).removeprefix("torch."),
        "cpu": watch.as_dict(own_is_everything=True),
    }


def _direct_process(model_path: str, n: int, repeats: int, width: int, height: int, steps: int, guidance: float,
                    threads: int, barrier: Any, out: Any) -> None:
    """One process of run_direct_processes: its share of each run, started together with
    the others; puts a (start, end) wall-clock pair per run on `out`."""
    import torch

    torch.set_num_threads(threads)
    import diffusers.utils.logging

    from images.files import image_encode

    diffusers.utils.logging.disable_progress_bar()
    pipe = _plain_pipeline(model_path, torch.float32)
    pipe.set_progress_bar_config(disable=True)

    def one(seed: int) -> None:
        image = pipe(prompt=f"bench {seed} {PROMPT}", num_inference_steps=steps, guidance_scale=guidance,
                     width=width, height=height, generator=torch.Generator("cpu").manual_seed(seed)).images[0]
        image_encode(image, output_format="png")

    one(10_000)  # warm-up
    spans = []
    for r in range(repeats):
        barrier.wait()
        started = time.time()
        for i in range(n):
            one(r * n + i)
        spans.append((started, time.time()))
    out.put(spans)


def run_direct_processes(*, model_path: str, n: int, repeats: int, width: int, height: int, steps: int,
                         guidance: float, processes: int) -> dict[str, Any]:
    """A reference, not the ceiling the issue compares with: the same diffusers loop
    as `processes` processes with cores / processes torch threads each, N images split
    between them (what a hand-tuned loop on this CPU could do). CPU only."""
    import multiprocessing

    from images.pipelines import usable_cores

    context = multiprocessing.get_context("spawn")
    barrier, out = context.Barrier(processes), context.Queue()
    shares = [n // processes + (1 if i < n % processes else 0) for i in range(processes)]
    threads = max(1, usable_cores() // processes)
    workers = [context.Process(target=_direct_process, args=(model_path, share, repeats, width, height, steps,
                                                             guidance, threads, barrier, out))
               for share in shares]
    for worker in workers:
        worker.start()
    spans = [out.get(timeout=1800) for _ in workers]
    for worker in workers:
        worker.join()
    rates = [n / (max(s[r][1] for s in spans) - min(s[r][0] for s in spans)) for r in range(repeats)]
    return {"images": n * repeats, "processes": processes, "torch_threads_each": threads,
            "images_per_s": _r(statistics.median(rates), 3), "images_per_s_runs": [_r(v, 3) for v in rates]}


def _generation_body(model: str, size: str, prompt: str) -> dict[str, Any]:
    return {"model": model, "prompt": prompt, "size": size, "n": 1, "response_format": "b64_json"}


def run_generations(client: _Client, key: str, *, model: str, size: str, n: int, concurrency: int, label: str
                    ) -> dict[str, Any]:
    prompts = [f"bench {label} {i:04d} {PROMPT}" for i in range(n)]
    calls = [("POST", "/v1/images/generations", key, _generation_body(model, size, p)) for p in prompts]
    wall, results = _drive(client, calls, concurrency)
    failures = []
    latencies: dict[str, float] = {}
    for prompt, (status, body, seconds) in zip(prompts, results):
        ok = status == 200 and json.loads(body).get("data", [{}])[0].get("b64_json")
        if ok:
            latencies[prompt] = seconds * 1000
        else:
            failures.append(f"{status}: {body[:200]!r}")
    if failures:
        raise CommandError(f"{len(failures)} of {n} generation requests failed, e.g. {failures[0]}")
    return {"wall_s": wall, "latency_ms": latencies}


def _job_rows(deployment: Deployment, prompt_prefix: str) -> dict[str, dict[str, Any]]:
    """prompt -> the job's and usage record's timings, read from the deployment's database."""
    code = (
        "import json\n"
        "from images.models import Job\n"
        "rows = {}\n"
        f"for job in Job.objects.filter(prompt__startswith={prompt_prefix!r}).select_related('usage'):\n"
        "    u = getattr(job, 'usage', None)\n"
        "    rows[job.prompt] = {'gpu_ms': job.gpu_ms, 'created': job.created_at.timestamp(),\n"
        "        'started': job.started_at.timestamp() if job.started_at else None,\n"
        "        'finished': job.finished_at.timestamp() if job.finished_at else None,\n"
        "        'queue_wait_ms': u.queue_wait_ms if u else None, 'latency_ms': u.latency_ms if u else None}\n"
        "print(json.dumps(rows))\n"
    )
    return deployment.shell_json(code)


def summarise_generations(runs: list[dict[str, Any]], jobs: dict[str, dict[str, Any]], n: int, lanes: int
                          ) -> dict[str, Any]:
    """Throughput: the median over the runs; latency and overhead percentiles: over every request."""
    latencies = {prompt: ms for run in runs for prompt, ms in run["latency_ms"].items()}
    rates = [n / run["wall_s"] for run in runs]
    wall_per_image_ms = statistics.median(run["wall_s"] for run in runs) * 1000 / n
    overhead, gpu, server, wait, settle = [], [], [], [], []
    for prompt, latency in latencies.items():
        job = jobs.get(prompt)
        if not job or job["gpu_ms"] is None:
            raise CommandError(f"no finished job found for {prompt!r}")
        gpu.append(job["gpu_ms"])
        overhead.append(latency - job["gpu_ms"])
        if job["latency_ms"] is not None:
            server.append(job["latency_ms"])  # created -> finished, as the worker saw it
        if job["queue_wait_ms"] is not None:
            wait.append(job["queue_wait_ms"])
        if job["finished"] and job["started"]:
            settle.append((job["finished"] - job["started"]) * 1000 - job["gpu_ms"])
    return {
        "images": n * len(runs), "images_per_s": _r(statistics.median(rates), 3),
        "images_per_s_runs": [_r(v, 3) for v in rates],
        "latency_ms_p50": _r(_pct(list(latencies.values()), 50)),
        "latency_ms_p95": _r(_pct(list(latencies.values()), 95)),
        "pipeline_ms_p50": _r(_pct(gpu, 50)), "pipeline_ms_p95": _r(_pct(gpu, 95)),
        "pipeline_ms_mean": _r(statistics.fmean(gpu)),
        "overhead_ms_p50": _r(_pct(overhead, 50)), "overhead_ms_p95": _r(_pct(overhead, 95)),
        # Per image and lane, the wall time the lane's pipeline was not running (what
        # throughput loses): wall per image x lanes - mean pipeline time.
        "idle_ms_per_image": _r(wall_per_image_ms * lanes - statistics.fmean(gpu)),
        "job_created_to_finished_ms_p50": _r(_pct(server, 50)),
        "job_queue_wait_ms_p50": _r(_pct(wait, 50)),
        # started -> finished minus the pipeline call: waiting for a free lane (at C>1),
        # token count, PNG encode + store, settle.
        "job_started_to_finished_minus_pipeline_ms_p50": _r(_pct(settle, 50)),
    }


def run_api(client: _Client, *, broke_key: str, balance_key: str, model: str, size: str, requests: int,
            concurrency: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cases = {
        "refused_402": ("POST", "/v1/images/generations", broke_key, _generation_body(model, size, f"broke {PROMPT}"),
                        402),
        "balance": ("GET", "/v1/balance", balance_key, None, 200),
    }
    for name, (method, path, key, body, expected) in cases.items():
        _drive(client, [(method, path, key, body)] * concurrency * 2, concurrency)  # warm connections
        wall, results = _drive(client, [(method, path, key, body)] * requests, concurrency)
        wrong = [status for status, _, _ in results if status != expected]
        if wrong:
            raise CommandError(f"{name}: expected {expected}, got {wrong[0]} ({len(wrong)} of {requests})")
        ms = [seconds * 1000 for _, _, seconds in results]
        out[name] = {"requests": requests, "concurrency": concurrency, "requests_per_s": _r(requests / wall, 1),
                     "latency_ms_p50": _r(_pct(ms, 50), 2), "latency_ms_p95": _r(_pct(ms, 95), 2)}
    return out


# ---------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------

class Command(BaseCommand):
    help = "Benchmark: diffusers alone vs. the platform over HTTP (see docs/benchmarks.md)."

    def add_arguments(self, parser):
        parser.add_argument("--n", type=int, default=32, help="images per phase (default 32)")
        parser.add_argument("--concurrency", type=int, default=4, help="client threads (default 4)")
        parser.add_argument("--repeats", type=int, default=3,
                            help="runs of N images for the direct and the platform phase; images/s is the "
                                 "median run (default 3)")
        parser.add_argument("--size", default="256x256")
        parser.add_argument("--steps", type=int, default=None,
                            help="denoising steps (default: the model row's, 4 for the demo model); "
                                 "the platform's model row is set to match")
        parser.add_argument("--model", default="dall-e-2", help="public model id (quality 'standard')")
        parser.add_argument("--source", default=None,
                            help="model folder to serve under that id and to loop over directly (e.g. one built "
                                 "by `manage.py arch_model sd15 --build DIR`); default: the model row's")
        parser.add_argument("--flops-arch", choices=["sd15", "sdxl"], default=None,
                            help="the source's architecture: also report achieved UNet TFLOP/s (FLOPs of one "
                                 "step counted by images/arch_models.step_flops)")
        parser.add_argument("--peak-tflops", type=float, default=None,
                            help="the device's peak TFLOP/s at the dtype used (e.g. its dense bf16 figure): "
                                 "report the fraction of it reached")
        parser.add_argument("--worker-processes", default="auto", type=processes_arg,
                            help="processes of the worker, as `manage.py runworker --processes` (default auto: "
                                 "one per core, at most 4, on CPU; one on a GPU)")
        parser.add_argument("--worker-threads", default="auto", type=processes_arg,
                            help="threads per worker process, as `manage.py runworker --threads` (default auto: "
                                 "2 per image slot of its lanes)")
        parser.add_argument("--web-threads", type=int, default=8, help="gunicorn threads (one process)")
        parser.add_argument("--api-requests", type=int, default=200)
        parser.add_argument("--skip-serial", action="store_true",
                            help="skip the concurrency-1 platform run (own-overhead figures)")
        parser.add_argument("--hold", action="store_true",
                            help="print the server and worker pids and wait for Enter before the platform "
                                 "phase (to attach a profiler)")
        parser.add_argument("--quiet-wait", type=float, default=60,
                            help="before each phase, wait up to this many seconds for the machine to be "
                                 "idle (< 15%% busy for one second); 0: don't (default 60)")
        parser.add_argument("--out", default=str(ROOT / "bench-results" / "bench.json"))

    def handle(self, *args, **o):
        n, concurrency, size, model, repeats = o["n"], o["concurrency"], o["size"], o["model"], o["repeats"]
        try:
            width, height = (int(v) for v in size.lower().split("x"))
        except ValueError:
            raise CommandError("--size must look like 256x256") from None
        if n < 1 or concurrency < 1 or repeats < 1:
            raise CommandError("--n, --concurrency and --repeats must be at least 1")
        self.call_command_quietly("build_demo_model")
        # Stop cleanly (servers, database, broker keys) on SIGTERM too, and on Ctrl-C even
        # when started in the background by a shell that ignores SIGINT.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        signal.signal(signal.SIGINT, signal.default_int_handler)

        tmp = Path(tempfile.mkdtemp(prefix="bench-"))
        from images.management.commands.runworker import auto_processes, auto_threads

        # 0 processes: the embedded worker, inside the web process.
        processes = 0 if not settings.BROKER_URL else (
            auto_processes() if o["worker_processes"] == "auto" else o["worker_processes"])
        threads = auto_threads(max(1, processes)) if o["worker_threads"] == "auto" else o["worker_threads"]
        deployment = Deployment(tmp, worker_processes=processes, worker_threads=threads,
                                web_threads=o["web_threads"])
        result: dict[str, Any] = {}
        try:
            self.say(f"Preparing the deployment ({'PostgreSQL' if deployment.pg_database else 'SQLite'}, "
                     f"{'broker ' + settings.BROKER_URL.split('@')[-1] if deployment.distributed else 'embedded worker'})")
            deployment.prepare()
            row = deployment.shell_json(
                "import json\nfrom images.models import ImageModel\nfrom images.worker import pipeline_source\n"
                f"m = ImageModel.objects.get(public_id={model!r})\n"
                "print(json.dumps({'source': pipeline_source(m).source, 'steps_by_quality': m.steps_by_quality, "
                "'guidance': m.guidance}))")
            quality = "standard"
            steps = o["steps"] or int(row["steps_by_quality"].get(quality) or row["steps_by_quality"].get("default") or 4)
            guidance = float(row["guidance"])
            if o["steps"]:  # make the platform run the same number of steps
                deployment.shell_json(
                    "import json\nfrom images.models import ImageModel\n"
                    f"m = ImageModel.objects.get(public_id={model!r})\n"
                    f"m.steps_by_quality = {{**m.steps_by_quality, {quality!r}: {steps}}}\nm.save()\nprint('{{}}')")
            if o["source"]:  # serve (and loop over) another model folder under the same public id
                row["source"] = str(Path(o["source"]).resolve())
                deployment.shell_json(
                    "from images.models import ImageModel\n"
                    f"ImageModel.objects.filter(public_id={model!r}).update(source={row['source']!r})\nprint('{{}}')")
            if not os.path.isdir(row["source"]):
                raise CommandError(f"{model}'s source is not a local folder: {row['source']}")
            gen_key, broke_key, balance_key = deployment.tenants([10_000_000, 0, 1_000])

            self.say(f"1/3 direct: {repeats} x {n} images, {size}, {steps} steps, guidance {guidance}")
            waits = {"direct": _wait_quiet(o["quiet_wait"])}
            direct = run_direct(model_path=row["source"], n=n, repeats=repeats, width=width, height=height,
                                steps=steps, guidance=guidance)
            direct_processes = None
            if direct["device"] == "cpu" and processes > 1:
                waits["direct_processes"] = _wait_quiet(o["quiet_wait"])
                direct_processes = run_direct_processes(
                    model_path=row["source"], n=n, repeats=repeats, width=width, height=height, steps=steps,
                    guidance=guidance, processes=processes)

            self.say("2/3 platform: starting the web server and worker")
            deployment.start()
            client = _Client(deployment.url)
            # Warm up: the worker loads the pipeline; connections open.
            run_generations(client, gen_key, model=model, size=size, n=2 * concurrency, concurrency=concurrency,
                            label="warmup")
            if o["hold"]:
                self.say(f"pids: {deployment.pids()} (children: pgrep -g <pid>); press Enter to go on")
                sys.stdin.readline()
            waits["platform"] = _wait_quiet(o["quiet_wait"])
            self.say(f"2/3 platform: {repeats} x {n} requests at concurrency {concurrency}")
            with _CpuWatch(deployment.sessions()) as loaded_cpu:
                loaded = [run_generations(client, gen_key, model=model, size=size, n=n, concurrency=concurrency,
                                          label=f"loaded{r}") for r in range(repeats)]
            serial = None
            if not o["skip_serial"]:
                self.say(f"2/3 platform: {n} requests at concurrency 1")
                with _CpuWatch(deployment.sessions()) as serial_cpu:
                    serial = run_generations(client, gen_key, model=model, size=size, n=n, concurrency=1,
                                             label="serial")
            jobs = _job_rows(deployment, "bench ")
            from images import pipelines  # the worker runs on this machine, with this env

            lanes = pipelines.lane_count(max(1, processes)) * max(1, processes)  # in all its processes
            platform_loaded = summarise_generations(loaded, jobs, n, lanes)
            platform_loaded["cpu"] = loaded_cpu.as_dict(own_is_everything=False)
            platform_serial = None
            if serial:
                platform_serial = summarise_generations([serial], jobs, n, lanes)
                platform_serial["cpu"] = serial_cpu.as_dict(own_is_everything=False)

            waits["api"] = _wait_quiet(o["quiet_wait"])
            self.say(f"3/3 api: {o['api_requests']} requests each at concurrency {concurrency}")
            api = run_api(client, broke_key=broke_key, balance_key=balance_key, model=model, size=size,
                          requests=o["api_requests"], concurrency=concurrency)
        finally:
            deployment.stop()
            shutil.rmtree(tmp, ignore_errors=True)

        import diffusers
        import torch

        result = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpu_count": os.cpu_count(), "platform": platform_mod.platform(),
                        "processor": platform_mod.processor() or platform_mod.machine(),
                        "python": platform_mod.python_version(), "device": "cpu" if not torch.cuda.is_available()
                        else torch.cuda.get_device_name(0)},
            "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
            "git_commit": self.git_commit(),
            "parameters": {"n": n, "repeats": repeats, "concurrency": concurrency, "size": size, "steps": steps, "guidance": guidance,
                           "model": model, "quality": quality, "response_format": "b64_json",
                           "worker_processes": processes,
                           "worker_threads": threads, "pipeline_lanes": lanes,
                           "web_processes": 1, "web_threads": o["web_threads"],
                           "database": "postgresql" if deployment.pg_database else "sqlite",
                           "broker": "redis" if deployment.distributed else "embedded (in-process)",
                           "pipeline_max_batch": os.environ.get("PIPELINE_MAX_BATCH") or "default",
                           "api_requests": o["api_requests"],
                           "env": {k: os.environ[k] for k in ("dramatiq_worker_timeout", "OMP_NUM_THREADS", "PIPELINE_LANES",
                                                                 "PIPELINE_MAX_BATCH", "WORKER_POLL_MS") if k in os.environ}},
            "quiet_waits_s": waits,
            "direct": direct,
            "direct_processes": direct_processes,
            "platform": platform_loaded,
            "platform_serial": platform_serial,
            "api": api,
            "flops": self.flops(o, width=width, height=height, steps=steps, direct=direct,
                                platform=platform_loaded),
            "ratios": {
                "platform_over_direct_images_per_s": _r(platform_loaded["images_per_s"] / direct["images_per_s"], 3),
                "platform_serial_over_direct_images_per_s": _r(platform_serial["images_per_s"] / direct["images_per_s"], 3)
                if platform_serial else None,
                "platform_over_direct_processes_images_per_s": _r(
                    platform_loaded["images_per_s"] / direct_processes["images_per_s"], 3) if direct_processes else None,
            },
        }
        out = Path(o["out"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        self.stdout.write(self.table(result))
        self.stdout.write(f"\nWrote {out}")

    @staticmethod
    def flops(o: dict[str, Any], *, width: int, height: int, steps: int, direct: dict[str, Any],
              platform: dict[str, Any]) -> dict[str, Any] | None:
        """Achieved UNet FLOP/s of each phase: FLOPs per step x steps x images/s."""
        if not o["flops_arch"]:
            return None
        from images.arch_models import step_flops

        per_step = step_flops(o["flops_arch"], width=width, height=height)["flops_per_step"]
        out: dict[str, Any] = {"architecture": o["flops_arch"], "flops_per_step": per_step,
                               "peak_tflops": o["peak_tflops"]}
        for name, phase in (("direct", direct), ("platform", platform)):
            achieved = per_step * steps * phase["images_per_s"] / 1e12
            out[f"{name}_tflops"] = _r(achieved, 2)
            if o["peak_tflops"]:
                out[f"{name}_fraction_of_peak"] = _r(achieved / o["peak_tflops"], 3)
        return out

    # -- output ----------------------------------------------------------------
    def say(self, text: str) -> None:
        self.stderr.write(text)
        self.stderr.flush()

    def call_command_quietly(self, name: str) -> None:
        from django.core.management import call_command

        call_command(name)

    @staticmethod
    def git_commit() -> str | None:
        try:
            return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                  timeout=10).stdout.strip() or None
        except OSError:
            return None

    @staticmethod
    def table(r: dict[str, Any]) -> str:
        p, d, s, a = r["parameters"], r["direct"], r["platform"], r["api"]
        ser = r["platform_serial"]
        lines = [
            f"bench {r['date']}  {r['machine']['cpu_count']} CPUs, {r['machine']['device']}  "
            f"torch {r['versions']['torch']}, diffusers {r['versions']['diffusers']}",
            f"{p['model']} {p['size']} {p['steps']} steps guidance {p['guidance']}, N={p['n']} x {p['repeats']}, "
            f"C={p['concurrency']}, "
            f"{p['database']} + {p['broker']}, worker {p['worker_processes']} process(es) x {p['worker_threads']} threads, "
            f"{p['pipeline_lanes']} pipeline lane(s) in all",
            "",
            f"{'phase':<28}{'images/s':>10}{'p50 ms':>10}{'p95 ms':>10}{'pipe p50':>10}{'ovh p50':>10}{'ovh p95':>10}",
            f"{'direct (diffusers + PNG)':<28}{d['images_per_s']:>10}{'':>10}{'':>10}{d['pipeline_ms_p50']:>10}"
            f"{'':>10}{'':>10}",
        ]
        dp = r.get("direct_processes")
        if dp:
            lines.append(f"{'direct, %d proc x %d thread' % (dp['processes'], dp['torch_threads_each']):<28}"
                         f"{dp['images_per_s']:>10}")
        lines += [
            f"{'platform C=' + str(p['concurrency']):<28}{s['images_per_s']:>10}{s['latency_ms_p50']:>10}"
            f"{s['latency_ms_p95']:>10}{s['pipeline_ms_p50']:>10}{s['overhead_ms_p50']:>10}{s['overhead_ms_p95']:>10}",
        ]
        if ser:
            lines.append(
                f"{'platform C=1':<28}{ser['images_per_s']:>10}{ser['latency_ms_p50']:>10}{ser['latency_ms_p95']:>10}"
                f"{ser['pipeline_ms_p50']:>10}{ser['overhead_ms_p50']:>10}{ser['overhead_ms_p95']:>10}")
        lines += [
            "",
            f"platform/direct images/s: {r['ratios']['platform_over_direct_images_per_s']} (C={p['concurrency']})"
            + (f", {r['ratios']['platform_serial_over_direct_images_per_s']} (C=1)" if ser else "")
            + (f"; platform/direct-{dp['processes']}-processes: "
               f"{r['ratios']['platform_over_direct_processes_images_per_s']} (C={p['concurrency']})" if dp else ""),
            *([f"UNet TFLOP/s ({r['flops']['architecture']}, {r['flops']['flops_per_step'] / 1e12:.2f} TFLOPs a step): "
               f"direct {r['flops']['direct_tflops']}, platform {r['flops']['platform_tflops']}"
               + (f" (of a {r['flops']['peak_tflops']} peak: {r['flops']['direct_fraction_of_peak']}, "
                  f"{r['flops']['platform_fraction_of_peak']})" if r['flops']['peak_tflops'] else "")]
              if r.get("flops") else []),
            f"lane idle per image at C={p['concurrency']}: {s['idle_ms_per_image']} ms"
            + (f"; at C=1: {ser['idle_ms_per_image']} ms" if ser else ""),
            "overhead = client latency - the job's own pipeline time (at C>1 it includes waiting for other jobs)",
            f"machine busy: direct {d['cpu']['machine_busy_pct']}% (other processes {d['cpu']['other_processes_cpu_s']}"
            f" CPU-s), platform C={p['concurrency']} {s['cpu']['machine_busy_pct']}%; "
            f"load average before: {d['cpu']['loadavg_1m_before']}",
            f"CPU ms per image at C={p['concurrency']}: " + ", ".join(
                f"{name} {1000 * cpu / s['images']:.1f}" for name, cpu in s['cpu'].get('cpu_s_by_process', {}).items()),
            "",
            f"{'api':<28}{'req/s':>10}{'p50 ms':>10}{'p95 ms':>10}",
        ]
        for name, v in a.items():
            lines.append(f"{name:<28}{v['requests_per_s']:>10}{v['latency_ms_p50']:>10}{v['latency_ms_p95']:>10}")
        return "\n".join(lines)
