"""`make bench`: diffusers alone vs. the platform over HTTP (docs/benchmarks.md); with
`--phase web`, the web tier under requests that wait (tools/bench/web.py); with
`--phase loras`, images/s with 0/50/100 % of requests carrying a LoRA adapter
(tools/bench/loras.py).

Arguments only: the benchmark is tools.bench (phases, deployment, report)."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from images.management.commands.runworker import auto_processes, auto_threads, processes_arg
from tools import ROOT, ToolError


class Command(BaseCommand):
    help = "Benchmark: diffusers alone vs. the platform over HTTP (see docs/benchmarks.md)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--phase",
            choices=["platform", "web", "loras"],
            default="platform",
            help="platform (default): the direct, platform and api phases; web: one web process and no "
            "worker under waiting requests, streams, pollers and clients that leave (PostgreSQL + Redis; "
            "the options below marked [web]); loras: images/s with 0, 50 and 100%% of requests carrying "
            "a LoRA adapter, in this process on the worker's path (--n, --concurrency, --repeats, --size, "
            "--steps, --source)",
        )
        parser.add_argument("--waiting", type=int, default=1000, help="[web] synchronous generations held open")
        parser.add_argument("--streams", type=int, default=300, help="[web] stream: true generations held open")
        parser.add_argument("--hold-seconds", type=float, default=10, help="[web] how long they are held (default 10)")
        parser.add_argument(
            "--probe-timeout", type=float, default=8, help="[web] a GET /v1/balance slower than this fails (8 s)"
        )
        parser.add_argument("--pollers", type=int, default=1000, help="[web] clients polling one queued task")
        parser.add_argument("--poll-seconds", type=float, default=10, help="[web] how long they poll (default 10)")
        parser.add_argument("--abandon", type=int, default=40, help="[web] generations whose clients leave")
        parser.add_argument(
            "--abandon-after", type=float, default=3, help="[web] seconds before those clients leave (default 3)"
        )
        parser.add_argument(
            "--worker-timeout",
            type=float,
            default=300,
            help="[web] seconds to wait for the worker started at the end to run the queue (default 300)",
        )
        parser.add_argument("--n", type=int, default=32, help="images per phase (default 32)")
        parser.add_argument("--concurrency", type=int, default=4, help="client threads (default 4)")
        parser.add_argument(
            "--repeats",
            type=int,
            default=3,
            help="runs of N images for the direct and the platform phase; images/s is the median run (default 3)",
        )
        parser.add_argument("--size", default="256x256")
        parser.add_argument(
            "--steps",
            type=int,
            default=None,
            help="denoising steps (default: the model row's, 4 for the demo model); "
            "the platform's model row is set to match",
        )
        parser.add_argument("--model", default="dall-e-2", help="public model id (quality 'standard')")
        parser.add_argument(
            "--source",
            default=None,
            help="model folder to serve under that id and to loop over directly (e.g. one built "
            "by `manage.py arch_model sd15 --build DIR`); default: the model row's",
        )
        parser.add_argument(
            "--flops-arch",
            choices=["sd15", "sdxl"],
            default=None,
            help="the source's architecture: also report achieved UNet TFLOP/s (FLOPs of one "
            "step counted by tools/arch_models.step_flops)",
        )
        parser.add_argument(
            "--peak-tflops",
            type=float,
            default=None,
            help="the device's peak TFLOP/s at the dtype used (e.g. its dense bf16 figure): "
            "report the fraction of it reached",
        )
        parser.add_argument(
            "--worker-processes",
            default="auto",
            type=processes_arg,
            help="processes of the worker, as `manage.py runworker --processes` (default auto: "
            "one per core, at most 4, on CPU; one on a GPU)",
        )
        parser.add_argument(
            "--worker-threads",
            default="auto",
            type=processes_arg,
            help="threads per worker process, as `manage.py runworker --threads` (default auto: "
            "2 per image slot of its lanes)",
        )
        parser.add_argument("--web-threads", type=int, default=8, help="gunicorn threads (one process)")
        parser.add_argument("--api-requests", type=int, default=200)
        parser.add_argument(
            "--skip-serial", action="store_true", help="skip the concurrency-1 platform run (own-overhead figures)"
        )
        parser.add_argument(
            "--hold",
            action="store_true",
            help="print the server and worker pids and wait for Enter before the platform phase (to attach a profiler)",
        )
        parser.add_argument(
            "--quiet-wait",
            type=float,
            default=60,
            help="before each phase, wait up to this many seconds for the machine to be "
            "idle (< 15%% busy for one second); 0: don't (default 60)",
        )
        parser.add_argument(
            "--out",
            default=None,
            help="JSON results (default bench-results/bench.json, or bench-web.json for --phase web)",
        )

    def handle(self, *args, **o):
        if o["phase"] == "web":
            return self.handle_web(o)
        if o["phase"] == "loras":
            return self.handle_loras(o)
        from tools.bench import report
        from tools.bench.run import BenchOptions, bench_run

        try:
            width, height = (int(v) for v in o["size"].lower().split("x"))
        except ValueError:
            raise CommandError("--size must look like 256x256") from None
        if o["n"] < 1 or o["concurrency"] < 1 or o["repeats"] < 1:
            raise CommandError("--n, --concurrency and --repeats must be at least 1")
        from core.waiting import default_max_waiting

        waiting_cap = settings.WEB_MAX_WAITING or default_max_waiting(o["web_threads"])
        if o["concurrency"] > waiting_cap:  # the rest would be refused 503 server_busy (core/waiting.py)
            raise CommandError(
                f"--concurrency {o['concurrency']} is above the {waiting_cap} requests that may wait with "
                f"--web-threads {o['web_threads']} (WEB_MAX_WAITING, docs/configuration.md): raise --web-threads"
            )
        # 0 processes: the embedded worker, inside the web process.
        processes = (
            0
            if not settings.BROKER_URL
            else (auto_processes() if o["worker_processes"] == "auto" else o["worker_processes"])
        )
        threads = auto_threads(max(1, processes)) if o["worker_threads"] == "auto" else o["worker_threads"]
        options = BenchOptions(
            n=o["n"],
            concurrency=o["concurrency"],
            repeats=o["repeats"],
            width=width,
            height=height,
            model=o["model"],
            steps=o["steps"],
            source=o["source"],
            flops_arch=o["flops_arch"],
            peak_tflops=o["peak_tflops"],
            worker_processes=processes,
            worker_threads=threads,
            web_threads=o["web_threads"],
            api_requests=o["api_requests"],
            skip_serial=o["skip_serial"],
            hold=o["hold"],
            quiet_wait=o["quiet_wait"],
        )
        call_command("build_demo_model")
        # Stop cleanly (servers, database, broker keys) on SIGTERM too, and on Ctrl-C even
        # when started in the background by a shell that ignores SIGINT.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            result = bench_run(options, say=self.say)
        except ToolError as exc:
            raise CommandError(str(exc)) from exc
        out = Path(o["out"] or ROOT / "bench-results" / "bench.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        self.stdout.write(report.table(result))
        self.stdout.write(f"\nWrote {out}")

    def handle_web(self, o):
        """--phase web: tools/bench/web.py; figures printed and stored, never asserted."""
        from tools.bench.web import WebOptions, table, web_run

        counts = ("waiting", "streams", "pollers", "abandon")
        if any(o[name] < 0 for name in counts) or o["hold_seconds"] <= 0 or o["poll_seconds"] <= 0:
            raise CommandError("--waiting, --streams, --pollers and --abandon must be 0 or more, the seconds above 0")
        options = WebOptions(
            waiting=o["waiting"],
            streams=o["streams"],
            hold_seconds=o["hold_seconds"],
            probe_timeout=o["probe_timeout"],
            pollers=o["pollers"],
            poll_seconds=o["poll_seconds"],
            abandon=o["abandon"],
            abandon_after=o["abandon_after"],
            worker_timeout=o["worker_timeout"],
        )
        call_command("build_demo_model")  # the worker started at the end runs the poll task
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            result = web_run(options, say=self.say)
        except ToolError as exc:
            raise CommandError(str(exc)) from exc
        out = Path(o["out"] or ROOT / "bench-results" / "bench-web.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        self.stdout.write(table(result))
        self.stdout.write(f"Wrote {out}")

    def handle_loras(self, o):
        """--phase loras: tools/bench/loras.py; medians printed and stored, never asserted."""
        from tools.bench.loras import LoraBenchOptions, lora_bench_run, table

        try:
            width, height = (int(v) for v in o["size"].lower().split("x"))
        except ValueError:
            raise CommandError("--size must look like 256x256") from None
        if o["n"] < 2 or o["concurrency"] < 1 or o["repeats"] < 1:
            raise CommandError("--n must be at least 2, --concurrency and --repeats at least 1")
        call_command("build_demo_model")
        options = LoraBenchOptions(
            n=o["n"],
            concurrency=o["concurrency"],
            repeats=o["repeats"],
            width=width,
            height=height,
            steps=o["steps"] or 4,
            source=str(Path(o["source"]).resolve()) if o["source"] else str(Path(settings.MODEL_DIR) / "demo-sd-tiny"),
        )
        result = lora_bench_run(options, say=self.say)
        out = Path(o["out"] or ROOT / "bench-results" / "bench-loras.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        self.stdout.write(table(result))
        self.stdout.write(f"Wrote {out}")

    def say(self, text: str) -> None:
        self.stderr.write(text)
        self.stderr.flush()
