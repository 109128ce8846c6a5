"""A real deployment on its own database and broker namespace, for the benchmark and the
live tests: `manage.py serve` (gunicorn) and, with a broker, separate `manage.py runworker`
processes, each in a session of its own, talked to over HTTP only.

The database is a fresh PostgreSQL database named after DATABASE_URL's when this process
runs on PostgreSQL (dropped by `stop`), else a SQLite file in `tmp`. With BROKER_URL the
deployment gets its own broker namespace (its keys deleted by `stop`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

from django.conf import settings

from tools import ROOT, ToolError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pg_admin(sql: str) -> None:
    """Run one statement (CREATE/DROP DATABASE) on the server of this process's database."""
    import psycopg

    db = settings.DATABASES["default"]
    with psycopg.connect(
        host=db["HOST"] or None,
        port=db["PORT"] or None,
        user=db["USER"],
        password=db["PASSWORD"] or None,
        dbname="postgres",
        autocommit=True,
    ) as conn:
        conn.execute(sql)


def stop_process_groups(processes: list[subprocess.Popen], *, timeout: float) -> None:
    """SIGTERM each process's group (each was started in a session of its own), wait up
    to `timeout` seconds each, then SIGKILL what is left."""
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
    """One deployment's environment, processes and clean-up. `name` labels its database,
    broker namespace and logs; `extra_env` overrides any variable, and a callable
    DATABASE_URL there is given the fresh PostgreSQL database's name (None on SQLite)."""

    def __init__(
        self,
        tmp: Path,
        *,
        name: str = "live",
        log_level: str = "INFO",
        extra_env: Mapping[str, str | Callable[[str | None], str]] | None = None,
    ) -> None:
        self.tmp = tmp
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.processes: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.web: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None  # the latest started
        self.workers: list[subprocess.Popen] = []
        self.pg_database: str | None = None
        self.namespace: str | None = None
        env: dict = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        env.update(
            {
                "SECRET_KEY": f"{name}-secret-key-{uuid.uuid4().hex}",
                "PORT": str(self.port),
                "MEDIA_ROOT": str(tmp / "media"),
                "MODEL_DIR": str(settings.MODEL_DIR),
                "LOG_LEVEL": log_level,
                "PYTHONUNBUFFERED": "1",
                "DJANGO_SETTINGS_MODULE": "settings",
                "ALLOWED_HOSTS": "127.0.0.1,localhost",
                "SESSION_COOKIE_SECURE": "false",
                "CSRF_COOKIE_SECURE": "false",
            }
        )
        db = settings.DATABASES["default"]
        if db["ENGINE"].endswith("postgresql"):  # (django_prometheus' wrapper too)
            self.pg_database = f"{db['NAME']}_{name}_{os.getpid()}_{uuid.uuid4().hex[:6]}"[-63:]
            user = f"{db['USER']}" + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
            host = f"{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"
            env["DATABASE_URL"] = f"postgres://{user}@{host}/{self.pg_database}"
        else:
            env["DATABASE_URL"] = f"sqlite:///{tmp / (name + '.sqlite3')}"
        if settings.BROKER_URL:
            self.namespace = env["BROKER_NAMESPACE"] = f"{name}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        env.update(extra_env or {})
        if callable(env.get("DATABASE_URL")):
            env["DATABASE_URL"] = env["DATABASE_URL"](self.pg_database)
        self.env: dict[str, str] = env

    @property
    def distributed(self) -> bool:
        """Whether jobs go through a broker to separate worker processes."""
        return bool(self.env.get("BROKER_URL"))

    # -- database and commands ------------------------------------------------
    def prepare(self) -> None:
        """Create the database (PostgreSQL), migrate it and seed the registry."""
        if self.pg_database:
            pg_admin(f'CREATE DATABASE "{self.pg_database}"')
        self.manage("migrate", "-v0")
        self.manage("platform_setup")

    def manage(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        """`manage.py ARGS` in the deployment's environment; ToolError (with the output's
        tail) when it fails and `check`."""
        return self.run([sys.executable, "manage.py", *args], check=check, timeout=timeout)

    def run(self, command: list[str], *, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        done = subprocess.run(command, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode:
            raise ToolError(
                f"{' '.join(command[1:3])} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-4000:]}"
            )
        return done

    def tenant(self, credits: int = 100_000, name: str | None = None) -> str:
        """Create a tenant with `manage.py tenant_create`; its API key (the last line)."""
        out = self.manage(
            "tenant_create", name or f"{self.name}-{uuid.uuid4().hex[:8]}", "--credits", str(credits)
        ).stdout
        return out.strip().splitlines()[-1]

    # -- processes ------------------------------------------------------------
    def start_process(self, name: str, command: list[str], env: Mapping[str, str] | None = None) -> subprocess.Popen:
        log = self.tmp / f"{self.name}-{name}-{len(self.logs)}.log"
        self.logs.append(log)
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**self.env, **(env or {})},
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(proc)
        return proc

    def start_web(
        self, *, workers: int | None = None, threads: int | None = None, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen:
        command = [sys.executable, "manage.py", "serve", "--port", str(self.port)]
        if workers is not None:
            command += ["--workers", str(workers)]
        if threads is not None:
            command += ["--threads", str(threads)]
        self.web = self.start_process("web", command, env)
        return self.web

    def start_worker(
        self, *, processes: int = 1, threads: int = 2, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen:
        """One more `runworker` (several may run: the distributed test starts two, each
        with a MEDIA_ROOT of its own through `env`)."""
        self.worker = self.start_process(
            "worker",
            [sys.executable, "manage.py", "runworker", "--processes", str(processes), "--threads", str(threads)],
            env,
        )
        self.workers.append(self.worker)
        return self.worker

    def kill(self, proc: subprocess.Popen, sig: int = signal.SIGKILL, wait: float = 60) -> None:
        """Signal a process and everything it started (its own session)."""
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        proc.wait(timeout=wait)

    def wait_healthy(self, timeout: float = 90, expect: int = 200) -> None:
        """Wait until GET /healthz answers `expect`; ToolError (with the logs' tail) when
        the web process dies or `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=5) as response:
                    status = response.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except OSError:
                status = None
            if status == expect:
                return
            if time.monotonic() > deadline or (self.web is not None and self.web.poll() is not None):
                raise ToolError("the deployment did not start:\n" + self.log_text()[-4000:])
            time.sleep(0.2)

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def stop(self) -> None:
        """Stop every process, drop the PostgreSQL database, delete the broker namespace's
        keys. Clean-up failures are reported on stderr, never raised over the caller's error."""
        stop_process_groups(self.processes, timeout=30)
        self.processes.clear()
        if self.pg_database:
            try:
                pg_admin(f'DROP DATABASE IF EXISTS "{self.pg_database}" WITH (FORCE)')
            except Exception as exc:
                print(f"could not drop {self.pg_database}: {exc}", file=sys.stderr)
        broker = self.env.get("BROKER_URL", "")
        if self.namespace and broker.startswith(("redis://", "rediss://", "unix://")):
            try:
                import redis

                client = redis.Redis.from_url(broker, socket_connect_timeout=2)
                keys = list(client.scan_iter(match=f"{self.namespace}:*", count=1000))
                if keys:
                    client.delete(*keys)
            except Exception as exc:
                print(f"could not clean the broker namespace {self.namespace}: {exc}", file=sys.stderr)
