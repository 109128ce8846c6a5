"""The benchmark's phases in order, on one deployment; see tools/bench/__init__.py."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from tools import ToolError
from tools.bench import report
from tools.bench.direct import run_direct, run_direct_processes
from tools.bench.load import Client, run_api, run_generations, summarise_generations
from tools.bench.measure import CpuWatch, rounded, wait_quiet
from tools.bench.safety import run_output_safety
from tools.deployment import Deployment

QUALITY = "standard"
REPORTED_ENV = ("dramatiq_worker_timeout", "OMP_NUM_THREADS", "PIPELINE_LANES", "PIPELINE_MAX_BATCH", "WORKER_POLL_MS")


@dataclass(frozen=True)
class BenchOptions:
    """`manage.py bench`'s arguments, checked and resolved (see its --help)."""

    n: int
    concurrency: int
    repeats: int
    width: int
    height: int
    model: str
    steps: int | None  # None: the model row's
    source: str | None  # None: the model row's
    flops_arch: str | None
    peak_tflops: float | None
    worker_processes: int  # 0: the embedded worker, inside the web process
    worker_threads: int
    web_threads: int
    api_requests: int
    skip_serial: bool
    hold: bool
    quiet_wait: float

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


def probe(deployment: Deployment, *args: str) -> Any:
    """Run tools.bench.probe in the deployment's environment; its JSON answer."""
    done = deployment.run([sys.executable, "-m", "tools.bench.probe", *args])
    return json.loads(done.stdout.strip().splitlines()[-1])


def _sessions(deployment: Deployment) -> dict[int, str]:
    """Session id (each process is started in its own session) -> what it is."""
    names = {}
    if deployment.web is not None:
        names[deployment.web.pid] = "web (gunicorn)" if deployment.distributed else "web + embedded worker"
    if deployment.worker is not None:
        names[deployment.worker.pid] = "worker (dramatiq)"
    return names


def bench_run(o: BenchOptions, *, say: Callable[[str], None]) -> dict[str, Any]:
    """All three phases; the result as `--out` stores it. Raises ToolError when a phase
    cannot be measured. The deployment is stopped and its database dropped whatever happens."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    # Rate limits stay on (their cost is part of every request) but high enough that a
    # long run is not refused.
    deployment = Deployment(tmp, name="bench", log_level="WARNING", extra_env={"DEFAULT_TENANT_RPM": "1000000"})
    processes = o.worker_processes if deployment.distributed else 0
    try:
        say(
            f"Preparing the deployment ({'PostgreSQL' if deployment.pg_database else 'SQLite'}, "
            f"{'broker ' + settings.BROKER_URL.split('@')[-1] if deployment.distributed else 'embedded worker'})"
        )
        deployment.prepare()
        args = ["model", o.model, "--quality", QUALITY]
        if o.steps:  # make the platform run the same number of steps
            args += ["--steps", str(o.steps)]
        if o.source:  # serve (and loop over) another model folder under the same public id
            args += ["--source", str(Path(o.source).resolve())]
        row = probe(deployment, *args)
        steps = o.steps or int(row["steps_by_quality"].get(QUALITY) or row["steps_by_quality"].get("default") or 4)
        guidance = float(row["guidance"])
        if not os.path.isdir(row["source"]):
            raise ToolError(f"{o.model}'s source is not a local folder: {row['source']}")
        gen_key, broke_key, balance_key = (deployment.tenant(credits) for credits in (10_000_000, 0, 1_000))

        say(f"1/3 direct: {o.repeats} x {o.n} images, {o.size}, {steps} steps, guidance {guidance}")
        shape = {
            "model_path": row["source"],
            "n": o.n,
            "repeats": o.repeats,
            "width": o.width,
            "height": o.height,
            "steps": steps,
            "guidance": guidance,
        }
        waits = {"direct": wait_quiet(o.quiet_wait)}
        direct = run_direct(**shape)
        say(f"1/3 direct: output safety and provenance per image ({o.size}, batch of {o.n})")
        waits["output_safety"] = wait_quiet(o.quiet_wait)
        output_safety = run_output_safety(width=o.width, height=o.height, n=o.n)
        direct_processes = None
        if direct["device"] == "cpu" and processes > 1:
            waits["direct_processes"] = wait_quiet(o.quiet_wait)
            direct_processes = run_direct_processes(**shape, processes=processes)

        say("2/3 platform: starting the web server and worker")
        deployment.start_web(
            workers=1,
            threads=o.web_threads,
            env=None if deployment.distributed else {"EMBEDDED_WORKER_THREADS": str(o.worker_threads)},
        )
        if deployment.distributed:
            deployment.start_worker(processes=processes, threads=o.worker_threads)
        deployment.wait_healthy(timeout=120)
        client = Client(deployment.url)
        load = {"model": o.model, "size": o.size}
        # Warm up: the worker loads the pipeline; connections open.
        run_generations(client, gen_key, **load, n=2 * o.concurrency, concurrency=o.concurrency, label="warmup")
        if o.hold:
            say(f"pids: {sorted(_sessions(deployment))} (children: pgrep -g <pid>); press Enter to go on")
            sys.stdin.readline()
        waits["platform"] = wait_quiet(o.quiet_wait)
        say(f"2/3 platform: {o.repeats} x {o.n} requests at concurrency {o.concurrency}")
        with CpuWatch(_sessions(deployment)) as loaded_cpu:
            loaded = [
                run_generations(client, gen_key, **load, n=o.n, concurrency=o.concurrency, label=f"loaded{r}")
                for r in range(o.repeats)
            ]
        serial = None
        if not o.skip_serial:
            say(f"2/3 platform: {o.n} requests at concurrency 1")
            with CpuWatch(_sessions(deployment)) as serial_cpu:
                serial = run_generations(client, gen_key, **load, n=o.n, concurrency=1, label="serial")
        jobs = probe(deployment, "jobs", "bench ")
        from images.backends.local.lanes import lane_count  # the worker runs here, with this environment

        lanes = lane_count(max(1, processes)) * max(1, processes)  # in all its processes
        platform_loaded = summarise_generations(loaded, jobs, o.n, lanes)
        platform_loaded["cpu"] = loaded_cpu.as_dict(own_is_everything=False)
        platform_serial = None
        if serial:
            platform_serial = summarise_generations([serial], jobs, o.n, lanes)
            platform_serial["cpu"] = serial_cpu.as_dict(own_is_everything=False)

        waits["api"] = wait_quiet(o.quiet_wait)
        say(f"3/3 api: {o.api_requests} requests each at concurrency {o.concurrency}")
        api = run_api(
            client,
            broke_key=broke_key,
            balance_key=balance_key,
            **load,
            requests=o.api_requests,
            concurrency=o.concurrency,
        )
    finally:
        deployment.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    return {
        **report.run_header(),
        "parameters": {
            "n": o.n,
            "repeats": o.repeats,
            "concurrency": o.concurrency,
            "size": o.size,
            "steps": steps,
            "guidance": guidance,
            "model": o.model,
            "quality": QUALITY,
            "response_format": "b64_json",
            "worker_processes": processes,
            "worker_threads": o.worker_threads,
            "pipeline_lanes": lanes,
            "web_processes": 1,
            "web_threads": o.web_threads,
            "database": "postgresql" if deployment.pg_database else "sqlite",
            "broker": "redis" if deployment.distributed else "embedded (in-process)",
            "pipeline_max_batch": os.environ.get("PIPELINE_MAX_BATCH") or "default",
            "api_requests": o.api_requests,
            "env": {k: os.environ[k] for k in REPORTED_ENV if k in os.environ},
        },
        "quiet_waits_s": waits,
        "direct": direct,
        "direct_processes": direct_processes,
        "output_safety": output_safety,
        "platform": platform_loaded,
        "platform_serial": platform_serial,
        "api": api,
        "flops": report.flops(
            architecture=o.flops_arch,
            peak_tflops=o.peak_tflops,
            width=o.width,
            height=o.height,
            steps=steps,
            direct=direct,
            platform=platform_loaded,
        ),
        "ratios": {
            "platform_over_direct_images_per_s": rounded(platform_loaded["images_per_s"] / direct["images_per_s"], 3),
            "platform_serial_over_direct_images_per_s": rounded(
                platform_serial["images_per_s"] / direct["images_per_s"], 3
            )
            if platform_serial
            else None,
            "platform_over_direct_processes_images_per_s": rounded(
                platform_loaded["images_per_s"] / direct_processes["images_per_s"], 3
            )
            if direct_processes
            else None,
        },
    }
