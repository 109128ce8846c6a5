"""`manage.py bench --phase web`: the web tier under requests that wait (issue 20).

One production-mode web process (`manage.py serve` with WEB_CONCURRENCY=1, whatever
server that runs: this module talks HTTP only) on PostgreSQL + Redis, and no worker, so
every admitted generation stays queued and its request keeps waiting. In order:

1. hold     - N synchronous `POST /v1/images/generations` and S `stream: true` requests
              opened at once and held open, while `GET /v1/balance` is probed one request
              after another (a new connection each: a request that queues behind the
              waiting ones shows as a slow probe). Figures: how many waited (admitted:
              a job row and hold exist, or a stream's 200 head came) and how many were
              refused with 503 `server_busy`; probe latency p50/p95/max and failures;
              the web process tree's RSS before and while holding, i.e. KB per waiting
              request. The held requests are then closed (those clients left).
2. poll     - M pollers, each with a keep-alive connection, poll one queued task
              (`GET /v1/images/tasks/{id}`, submitted with `Prefer: respond-async`) as
              fast as they can for T seconds: polls/s, latency, and polls per CPU-second of
              the web process tree (utime + stime from /proc/<pid>/stat).
3. abandon  - K synchronous requests whose clients close after 3 s; then a worker is
              started (`manage.py runworker`) and, once it has run the queue, their
              tenant's credits and holds are read from the database:
              "abandoned: K, charged: C" (C should be 0), and the same for the requests of
              phase 1, which the benchmark also abandoned.

Figures are printed, never asserted. Raw HTTP/1.1 over asyncio streams (no client
library, no connection pool limits). Linux only (/proc).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

from tools import ToolError
from tools.bench import PROMPT, report
from tools.bench.measure import percentile, rounded
from tools.deployment import Deployment

TENANT_PREFIX = "webbench-"
CREDITS = 10_000_000  # per tenant: never the reason for a refusal
SYNC_BODY = {"model": "dall-e-2", "size": "256x256", "n": 1, "response_format": "b64_json"}
STREAM_BODY = {"model": "gpt-image-1-mini", "size": "1024x1024", "quality": "low", "n": 1, "stream": True}
CONNECT_AT_ONCE = 64  # connections being opened at the same time (the rest wait their turn)


@dataclass(frozen=True)
class WebOptions:
    """`manage.py bench --phase web`'s arguments (see its --help)."""

    waiting: int  # N synchronous generations held open
    streams: int  # S `stream: true` generations held open
    hold_seconds: float  # how long they are held (balance probes meanwhile)
    probe_timeout: float  # seconds; a slower balance probe counts as failed
    pollers: int  # M
    poll_seconds: float  # T
    abandon: int  # K
    abandon_after: float  # seconds before an abandoning client closes
    worker_timeout: float  # seconds to wait for the worker to run the queue


# ---- A minimal HTTP/1.1 client ------------------------------------------------------------


@dataclass
class Answer:
    """One response: status (None: none came), headers (lower-case names), body, seconds
    from sending to the end of the body, and the error that ended it early."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    seconds: float = 0.0
    error: str | None = None

    @property
    def code(self) -> str | None:
        """The envelope's `error.code`, when the body is one."""
        try:
            return json.loads(self.body)["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return None


def request_bytes(method: str, path: str, host: str, key: str, body: dict | None, extra: dict | None = None) -> bytes:
    """An HTTP/1.1 request with a bearer key and, when `body`, a JSON body."""
    payload = json.dumps(body).encode() if body is not None else b""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Authorization: Bearer {key}"]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    lines += [f"{name}: {value}" for name, value in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """The status and the headers (lower-case names) of the next response."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    """The body after `headers`: by Content-Length, chunked, or up to the end."""
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # (no trailers expected)
                return b"".join(chunks)
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
    return await reader.read()


class HeldRequest:
    """A request sent and left open: its head (and, for a refusal, its body) is read as it
    comes; a stream's events are read and dropped so that the server never blocks on us."""

    def __init__(self, host: str, port: int, data: bytes) -> None:
        self.host, self.port, self.data = host, port, data
        self.answer = Answer()
        self.writer: asyncio.StreamWriter | None = None
        self.reader_task: asyncio.Task | None = None
        self.stream_bytes = 0
        self.stream_head = b""  # the first bytes of a stream's body (for the report)

    async def open(self) -> None:
        started = time.perf_counter()
        try:
            reader, self.writer = await asyncio.open_connection(self.host, self.port)
            self.writer.write(self.data)
            await self.writer.drain()
        except OSError as exc:
            self.answer.error = f"connect: {exc.__class__.__name__}"
            return
        self.reader_task = asyncio.create_task(self._read(reader, started))

    async def _read(self, reader: asyncio.StreamReader, started: float) -> None:
        try:
            self.answer.status, self.answer.headers = await read_head(reader)
            self.answer.seconds = time.perf_counter() - started
            if self.answer.headers.get("content-type", "").startswith("text/event-stream"):
                while chunk := await reader.read(65536):
                    if len(self.stream_head) < 300:
                        self.stream_head += chunk[: 300 - len(self.stream_head)]
                    self.stream_bytes += len(chunk)
            else:
                self.answer.body = await read_body(reader, self.answer.headers)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self.answer.error = exc.__class__.__name__

    def close(self) -> None:
        """The client leaves: its end of the connection is closed (a FIN, as an SDK that
        times out does)."""
        if self.reader_task is not None:
            self.reader_task.cancel()
        if self.writer is not None:
            self.writer.close()


def held_tally(requests: list[HeldRequest]) -> dict[str, int]:
    """How the held requests stand, by outcome: still waiting (no answer), refused, a
    stream still open (its reader running), a stream that ended, another answer. Call it
    before closing them: a closed request's reader is cancelled, i.e. its stream ended."""
    counts: Counter[str] = Counter()
    for held in requests:
        a = held.answer
        if a.status is None:
            counts["no answer (waiting)" if a.error is None else f"error {a.error}"] += 1
        elif a.status == 503 and a.code == "server_busy":
            counts["refused 503 server_busy"] += 1
        elif a.status == 200 and held.reader_task is not None and not held.reader_task.done():
            counts["200, streaming (waiting)"] += 1
        elif a.status == 200 and a.headers.get("content-type", "").startswith("text/event-stream"):
            counts[f"200, stream ended ({a.error or 'closed by the server'})"] += 1
        else:
            counts[f"{a.status} {a.code or ''}".strip()] += 1
    return dict(sorted(counts.items()))


async def open_all(requests: list[HeldRequest]) -> None:
    """Open every request, CONNECT_AT_ONCE at a time."""
    gate = asyncio.Semaphore(CONNECT_AT_ONCE)

    async def one(held: HeldRequest) -> None:
        async with gate:
            await held.open()

    await asyncio.gather(*(one(held) for held in requests))


async def one_request(host: str, port: int, data: bytes, timeout: float) -> Answer:
    """Send `data` on a new connection and read the whole answer (ToolError never: a
    timeout or a dropped connection is the answer's `error`)."""
    started = time.perf_counter()
    answer = Answer()
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(data)
            await writer.drain()
            answer.status, answer.headers = await read_head(reader)
            answer.body = await read_body(reader, answer.headers)
    except TimeoutError:
        answer.error = "timeout"
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        answer.error = exc.__class__.__name__
    finally:
        if writer is not None:
            writer.close()
    answer.seconds = time.perf_counter() - started
    return answer


# ---- The web process, from /proc -------------------------------------------------------------


def session_usage(session: int) -> tuple[int, float]:
    """(RSS in KB, CPU seconds used so far) summed over the live processes of `session`
    (the deployment starts each server in a session of its own: gunicorn's master and
    worker, or uvicorn's one process, all count)."""
    tick = os.sysconf("SC_CLK_TCK")
    page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
    rss_kb, cpu_s = 0, 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                raw = handle.read()
            with open(f"/proc/{entry}/statm") as handle:
                resident_pages = int(handle.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        fields = raw[raw.rindex(")") + 2 :].split()  # fields[0] is field 3 (state)
        if int(fields[3]) != session:
            continue
        rss_kb += resident_pages * page_kb
        cpu_s += (int(fields[11]) + int(fields[12])) / tick
    return rss_kb, cpu_s


def latency_ms(seconds: list[float]) -> dict[str, float | None]:
    ms = [s * 1000 for s in seconds]
    return {
        "p50": rounded(percentile(ms, 50), 1),
        "p95": rounded(percentile(ms, 95), 1),
        "max": rounded(max(ms), 1) if ms else None,
    }


# ---- The phases -------------------------------------------------------------------------------


class WebBench:
    """One run of the three phases against `deployment`'s web process (already started)."""

    def __init__(self, deployment: Deployment, o: WebOptions, keys: dict[str, str], say: Callable[[str], None]):
        parts = urlsplit(deployment.url)
        self.host, self.port = parts.hostname, parts.port
        self.host_header = f"{self.host}:{self.port}"
        self.deployment, self.o, self.keys, self.say = deployment, o, keys, say

    def data(self, method: str, path: str, tenant: str, body: dict | None = None, extra: dict | None = None) -> bytes:
        return request_bytes(method, path, self.host_header, self.keys[tenant], body, extra)

    def usage(self) -> tuple[int, float]:
        return session_usage(self.deployment.web.pid)

    def settle_down(self, *, busy_below: float = 0.1, longest: float = 60.0) -> float:
        """Wait until the web process uses less than `busy_below` of a core over a second
        (the held clients have left and the server has cancelled their jobs), at most
        `longest` seconds; returns the seconds waited. So that the next phase measures
        itself, not the end of the previous one."""
        started = time.monotonic()
        _, cpu = self.usage()
        while time.monotonic() - started < longest:
            time.sleep(1.0)
            _, now = self.usage()
            if now - cpu < busy_below:
                break
            cpu = now
        return round(time.monotonic() - started, 1)

    def money(self) -> dict[str, dict[str, Any]]:
        done = self.deployment.run([sys.executable, "-m", "tools.bench.probe", "tenants", TENANT_PREFIX])
        return json.loads(done.stdout.strip().splitlines()[-1])

    async def submit_poll_task(self) -> str:
        """A `Prefer: respond-async` generation: its task stays queued (no worker yet)."""
        body = {**SYNC_BODY, "prompt": f"webbench poll {PROMPT}"}
        answer = await one_request(
            self.host,
            self.port,
            self.data("POST", "/v1/images/generations", "poll", body, {"Prefer": "respond-async"}),
            timeout=30,
        )
        if answer.status != 202:
            raise ToolError(f"the poll task was not accepted: {answer.status} {answer.error} {answer.body[:300]!r}")
        return json.loads(answer.body)["id"]

    async def hold(self) -> dict[str, Any]:
        o = self.o
        probe = self.data("GET", "/v1/balance", "probe", extra={"Connection": "close"})
        for _ in range(20):  # warm up: imports, connections
            answer = await one_request(self.host, self.port, probe, timeout=o.probe_timeout)
        self.server = answer.headers.get("server", "?")  # what serves (gunicorn, uvicorn, ...)
        await asyncio.sleep(1)
        rss_before, _ = self.usage()
        self.say(f"web 1/3 hold: {o.waiting} waiting generations and {o.streams} streams, held {o.hold_seconds:g} s")
        held_sync = [
            HeldRequest(
                self.host,
                self.port,
                self.data("POST", "/v1/images/generations", "sync", {**SYNC_BODY, "prompt": f"webbench {i} {PROMPT}"}),
            )
            for i in range(o.waiting)
        ]
        held_streams = [
            HeldRequest(
                self.host,
                self.port,
                self.data(
                    "POST", "/v1/images/generations", "stream", {**STREAM_BODY, "prompt": f"webbench s{i} {PROMPT}"}
                ),
            )
            for i in range(o.streams)
        ]
        opened = time.perf_counter()
        await open_all(held_sync + held_streams)
        open_s = time.perf_counter() - opened
        probes: list[Answer] = []
        rss_holding = rss_before
        deadline = time.monotonic() + o.hold_seconds
        while time.monotonic() < deadline:
            probes.append(await one_request(self.host, self.port, probe, timeout=o.probe_timeout))
            rss_holding = max(rss_holding, self.usage()[0])
        money = await asyncio.to_thread(self.money)  # still holding: the jobs the waiting requests made
        rss_holding = max(rss_holding, self.usage()[0])

        sync_jobs = sum(money.get(f"{TENANT_PREFIX}sync", {}).get("jobs", {}).values())
        stream_jobs = sum(money.get(f"{TENANT_PREFIX}stream", {}).get("jobs", {}).values())
        waiting = sync_jobs + stream_jobs
        refused = [h for h in held_sync + held_streams if h.answer.status == 503]
        refusals = [h.answer.seconds for h in refused]
        ok_probes = [p.seconds for p in probes if p.status == 200]
        failed = Counter(p.error or str(p.status) for p in probes if p.status != 200)
        # Tallied while still holding: closing cancels each stream's reader, which would
        # then count as a stream the server ended.
        sync_tally, stream_tally = held_tally(held_sync), held_tally(held_streams)
        for held in held_sync + held_streams:
            held.close()
        await asyncio.sleep(0)
        return {
            "server_header": self.server,
            "stream_bytes_received": sum(h.stream_bytes for h in held_streams),
            "stream_sample": next((h.stream_head.decode("latin-1") for h in held_streams if h.stream_head), None),
            "refusal_samples": sorted({h.answer.body.decode(errors="replace")[:300] for h in refused})[:3],
            "waiting_requested": o.waiting,
            "streams_requested": o.streams,
            "seconds_to_open_all": rounded(open_s, 2),
            "synchronous": sync_tally,
            "streams": stream_tally,
            "admitted_synchronous_jobs": sync_jobs,
            "admitted_stream_jobs": stream_jobs,
            "refused_503_latency_ms": latency_ms(refusals),
            "balance_probes": {
                "sent": len(probes),
                "ok": len(ok_probes),
                "failed": dict(failed),
                "timeout_s": o.probe_timeout,
                "latency_ms": latency_ms(ok_probes),
            },
            "rss_kb_before": rss_before,
            "rss_kb_holding": rss_holding,
            "kb_per_waiting_request": rounded((rss_holding - rss_before) / waiting, 1) if waiting else None,
            "kb_per_open_request": rounded((rss_holding - rss_before) / (o.waiting + o.streams), 1)
            if o.waiting + o.streams
            else None,
        }

    async def poll(self, task_id: str) -> dict[str, Any]:
        o = self.o
        self.say(f"web 2/3 poll: {o.pollers} pollers on one queued task for {o.poll_seconds:g} s")
        path = f"/v1/images/tasks/{task_id}"
        data = self.data("GET", path, "poll")
        statuses: Counter[str] = Counter()
        seconds: list[float] = []
        reconnects = 0
        stop = asyncio.Event()

        async def poller() -> None:
            nonlocal reconnects
            reader = writer = None
            while not stop.is_set():
                try:
                    if writer is None:
                        reader, writer = await asyncio.open_connection(self.host, self.port)
                    started = time.perf_counter()
                    writer.write(data)
                    await writer.drain()
                    status, headers = await read_head(reader)
                    body = await read_body(reader, headers)
                    if stop.is_set():
                        break  # answered after the end: not counted
                    seconds.append(time.perf_counter() - started)
                    statuses[str(status) if status != 200 else json.loads(body).get("status", "?")] += 1
                    if headers.get("connection", "").lower() == "close":
                        writer.close()
                        writer = None
                        reconnects += 1
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    statuses[f"error {exc.__class__.__name__}"] += 1
                    if writer is not None:
                        writer.close()
                    writer = None
                    reconnects += 1
                    await asyncio.sleep(0.05)
            if writer is not None:
                writer.close()

        tasks = [asyncio.create_task(poller()) for _ in range(o.pollers)]
        await asyncio.sleep(1)  # connections open, first answers in: not measured
        statuses.clear()
        seconds.clear()
        _, cpu0 = self.usage()
        client0 = time.process_time()
        started = time.perf_counter()
        await asyncio.sleep(o.poll_seconds)
        stop.set()
        wall = time.perf_counter() - started
        _, cpu1 = self.usage()
        client_cpu = time.process_time() - client0
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        ok = sum(n for status, n in statuses.items() if status in ("queued", "running"))
        cpu = cpu1 - cpu0
        return {
            "pollers": o.pollers,
            "seconds": rounded(wall, 2),
            "answers": dict(sorted(statuses.items())),
            "polls_per_s": rounded(ok / wall, 1),
            "latency_ms": latency_ms(seconds),
            "web_cpu_s": rounded(cpu, 2),
            "web_cpu_pct_of_a_core": rounded(100 * cpu / wall, 1),
            "polls_per_web_cpu_s": rounded(ok / cpu, 1) if cpu > 0 else None,
            "web_cpu_ms_per_poll": rounded(1000 * cpu / ok, 2) if ok else None,
            "bench_client_cpu_s": rounded(client_cpu, 2),
            "reconnects": reconnects,
        }

    async def abandon(self) -> dict[str, Any]:
        o = self.o
        probe = self.data("GET", "/v1/balance", "probe", extra={"Connection": "close"})
        deadline = time.monotonic() + 60  # the pollers' last requests drained: the server answers again
        while (await one_request(self.host, self.port, probe, timeout=5)).status != 200:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
        self.say(f"web 3/3 abandon: {o.abandon} generations whose clients leave after {o.abandon_after:g} s")
        held = [
            HeldRequest(
                self.host,
                self.port,
                self.data(
                    "POST", "/v1/images/generations", "abandon", {**SYNC_BODY, "prompt": f"webbench a{i} {PROMPT}"}
                ),
            )
            for i in range(o.abandon)
        ]
        await open_all(held)
        await asyncio.sleep(o.abandon_after)
        answered = Counter(f"{h.answer.status} {h.answer.code or ''}".strip() for h in held if h.answer.status)
        for request in held:
            request.close()
        await asyncio.sleep(3)  # the server looks at its waiting clients about every 0.5 s
        return {"abandoned": o.abandon, "answered_before_leaving": dict(answered)}

    async def task_final(self, task_id: str, timeout: float) -> str:
        """Poll the task until it is final (the worker reached it); its status."""
        data = self.data("GET", f"/v1/images/tasks/{task_id}", "poll", extra={"Connection": "close"})
        deadline = time.monotonic() + timeout
        status = "?"
        while time.monotonic() < deadline:
            answer = await one_request(self.host, self.port, data, timeout=10)
            if answer.status == 200:
                status = json.loads(answer.body).get("status", "?")
                if status not in ("queued", "running"):
                    return status
            await asyncio.sleep(1)
        return status


def charged(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What a tenant paid between two `tenant_money` reads (credits), and its holds."""
    return {
        "credits_charged": before["balance"] - after["balance"],
        "captured": after["captured"],
        "usage_charged": after["usage_charged"],
        "held_after": after["held"],
        "jobs": after["jobs"],
        "holds": after["holds"],
    }


def web_run(o: WebOptions, *, say: Callable[[str], None]) -> dict[str, Any]:
    """The web phase; the result as `--out` stores it. Needs PostgreSQL and a broker
    (DATABASE_URL, BROKER_URL): without a broker the worker runs inside the web process.
    The deployment is stopped and its database dropped whatever happens."""
    if not settings.BROKER_URL or not settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        raise ToolError(
            "--phase web needs DATABASE_URL (PostgreSQL) and BROKER_URL (Redis): one web process and no "
            "worker (docs/benchmarks.md)"
        )
    tmp = Path(tempfile.mkdtemp(prefix="webbench-"))
    deployment = Deployment(
        tmp,
        name="webbench",
        log_level="WARNING",
        # Rate limits stay on (their cost is part of every request) but never refuse here.
        extra_env={"DEFAULT_TENANT_RPM": "100000000", "DEFAULT_MAX_CONCURRENT_JOBS": "1000000", "WEB_CONCURRENCY": "1"},
    )
    result: dict[str, Any] = {}
    try:
        say("Preparing the deployment (PostgreSQL, broker " + settings.BROKER_URL.split("@")[-1] + ")")
        deployment.prepare()
        keys = {
            name: deployment.tenant(CREDITS, name=f"{TENANT_PREFIX}{name}")
            for name in ("sync", "stream", "probe", "poll", "abandon")
        }
        say("Starting one web process (WEB_CONCURRENCY=1), no worker")
        deployment.start_web(env={"WEB_CONCURRENCY": "1"})
        deployment.wait_healthy(timeout=120)
        bench = WebBench(deployment, o, keys, say)
        task_id = asyncio.run(bench.submit_poll_task())
        result["hold"] = asyncio.run(bench.hold())
        # The held clients have left: the server cancels their jobs before the polls start.
        result["settled_after_hold_s"] = bench.settle_down()
        result["poll"] = asyncio.run(bench.poll(task_id))
        result["abandon"] = asyncio.run(bench.abandon())
        before = {name: {"balance": CREDITS} for name in keys}
        say("Starting a worker (runworker --processes 1 --threads 2); waiting for it to run the queue")
        deployment.start_worker(processes=1, threads=2, env={"OMP_NUM_THREADS": "1"})
        result["poll_task_final"] = asyncio.run(bench.task_final(task_id, o.worker_timeout))
        deadline = time.monotonic() + 60
        while True:  # until no job of these tenants is queued or running
            money = bench.money()
            busy = sum(
                n for row in money.values() for status, n in row["jobs"].items() if status in ("queued", "running")
            )
            if not busy or time.monotonic() > deadline:
                break
            time.sleep(2)
        result["jobs_still_queued_or_running"] = busy
        result["after_worker"] = {
            name: charged(before[name], money[f"{TENANT_PREFIX}{name}"]) for name in ("sync", "stream", "abandon")
        }
        result["server"] = f"{result['hold']['server_header']} (Server header); processes: {server_label(deployment)}"
    finally:
        deployment.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        **report.run_header(),
        "parameters": {
            **{k: getattr(o, k) for k in o.__dataclass_fields__},
            "web_processes": 1,
            "database": "postgresql",
            "broker": "redis",
            "env": {k: os.environ[k] for k in ("WEB_SERVER", "WEB_THREADS", "WEB_MAX_WAITING") if k in os.environ},
        },
        **result,
    }


def server_label(deployment: Deployment) -> str:
    """What the web session runs, from its processes' command lines (e.g. "gunicorn")."""
    names = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                raw = handle.read()
            if int(raw[raw.rindex(")") + 2 :].split()[3]) != deployment.web.pid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmd = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        for server in ("gunicorn", "uvicorn", "daphne", "hypercorn", "granian"):
            if server in cmd:
                names.add(server)
    return ", ".join(sorted(names)) or "manage.py serve"


def table(result: dict[str, Any]) -> str:
    """The figures as text, for stdout."""
    h, p, a = result["hold"], result["poll"], result["after_worker"]
    probes = h["balance_probes"]
    lines = [
        f"web tier: one web process ({result.get('server', '?')}), no worker; "
        f"{result['machine']['cpu_count']} CPUs, {result['machine']['platform']}",
        f"hold: {h['waiting_requested']} synchronous + {h['streams_requested']} streams opened in "
        f"{h['seconds_to_open_all']} s",
        f"  synchronous: {h['synchronous']}  (jobs made: {h['admitted_synchronous_jobs']})",
        f"  streams:     {h['streams']}  (jobs made: {h['admitted_stream_jobs']})",
        f"  503 refusals answered in ms: {h['refused_503_latency_ms']}",
        f"  GET /v1/balance meanwhile: {probes['ok']}/{probes['sent']} ok, failed {probes['failed']}, "
        f"ms {probes['latency_ms']}",
        f"  web RSS: {h['rss_kb_before']} KB before, {h['rss_kb_holding']} KB holding: "
        f"{h['kb_per_waiting_request']} KB per waiting request ({h['kb_per_open_request']} per open one)",
        f"poll: {p['pollers']} pollers, {p['seconds']} s: {p['polls_per_s']} polls/s, ms {p['latency_ms']}, "
        f"web CPU {p['web_cpu_pct_of_a_core']} % of a core = {p['polls_per_web_cpu_s']} polls per CPU-second "
        f"({p['web_cpu_ms_per_poll']} ms each); answers {p['answers']}",
        f"abandon: answered before leaving {result['abandon']['answered_before_leaving']}; poll task after the "
        f"worker: {result['poll_task_final']}; jobs still queued/running: {result['jobs_still_queued_or_running']}",
        f"abandoned: {result['abandon']['abandoned']}, charged: {a['abandon']['credits_charged']}  "
        f"(holds {a['abandon']['holds']}, jobs {a['abandon']['jobs']}, captured {a['abandon']['captured']})",
        f"held then closed: {h['waiting_requested']} synchronous, charged: {a['sync']['credits_charged']}; "
        f"{h['streams_requested']} streams, charged: {a['stream']['credits_charged']}",
    ]
    return "\n".join(lines) + "\n"
