"""A real deployment for compatibility tests: `manage.py serve` (gunicorn) and, when
BROKER_URL is set, a separate `rundramatiq` worker process, on their own database
(a fresh PostgreSQL database when the suite runs on PostgreSQL, else a SQLite file)
and their own broker namespace. Tests talk to it over HTTP only."""
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
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from images.management.commands.bench import stop_process_groups

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pg_admin(sql: str) -> None:
    import psycopg

    db = settings.DATABASES["default"]
    with psycopg.connect(host=db["HOST"] or None, port=db["PORT"] or None, user=db["USER"],
                         password=db["PASSWORD"] or None, dbname="postgres", autocommit=True) as conn:
        conn.execute(sql)


@dataclass
class LiveServer:
    url: str
    env: dict[str, str]
    processes: list[subprocess.Popen] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    pg_database: str | None = None
    tmp: Path = Path("/tmp")
    web: subprocess.Popen | None = None
    worker: subprocess.Popen | None = None

    def manage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True,
                              text=True, check=check, timeout=300)

    def shell(self, code: str) -> str:
        """Run Python in `manage.py shell` against this server's database; its last output line."""
        return self.manage("shell", "-v0", "-c", code).stdout.strip().splitlines()[-1]

    def tenant(self, credits: int = 100_000) -> str:
        """Create a tenant with `manage.py tenant_create`; returns its key (the last line)."""
        out = self.manage("tenant_create", f"live-{uuid.uuid4().hex[:8]}", "--credits", str(credits)).stdout
        return out.strip().splitlines()[-1]

    def start_process(self, name: str, command: list[str]) -> subprocess.Popen:
        log = self.tmp / f"live-{name}-{len(self.logs)}.log"
        self.logs.append(log)
        proc = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.processes.append(proc)
        return proc

    def start_web(self) -> subprocess.Popen:
        self.web = self.start_process("web", [sys.executable, "manage.py", "serve", "--port", self.url.rsplit(":", 1)[1]])
        return self.web

    def start_worker(self) -> subprocess.Popen:
        self.worker = self.start_process("worker", [sys.executable, "manage.py", "runworker", "--processes", "1",
                                                    "--threads", "2"])
        return self.worker

    def kill(self, proc: subprocess.Popen, sig: int = signal.SIGKILL, wait: float = 60) -> None:
        """Signal a process and everything it started (its own session)."""
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        proc.wait(timeout=wait)

    def wait_healthy(self, timeout: float = 90, expect: int = 200) -> None:
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
                raise RuntimeError("live server did not start:\n" + self.log_text()[-4000:])
            time.sleep(0.2)

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def stop(self) -> None:
        stop_process_groups(self.processes, timeout=20)
        if self.pg_database:
            _pg_admin(f'DROP DATABASE IF EXISTS "{self.pg_database}" WITH (FORCE)')


def start_live_server(tmp: Path, extra_env: dict[str, str] | None = None, *, worker: bool | None = None,
                      expect_health: int = 200) -> LiveServer:
    """Migrate a fresh database, start `serve` and (with a broker) a `runworker`
    process, and wait until /healthz answers `expect_health`."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update({
        "SECRET_KEY": "live-test-secret-key-" + uuid.uuid4().hex, "PORT": str(port), "MEDIA_ROOT": str(tmp / "media"),
        "MODEL_DIR": str(settings.MODEL_DIR), "LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1",
        "DJANGO_SETTINGS_MODULE": "settings", "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SESSION_COOKIE_SECURE": "false", "CSRF_COOKIE_SECURE": "false",
    })
    pg_database = None
    if settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        pg_database = f"live_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        _pg_admin(f'CREATE DATABASE "{pg_database}"')
        db = settings.DATABASES["default"]
        env["DATABASE_URL"] = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{pg_database}"
    else:
        env["DATABASE_URL"] = f"sqlite:///{tmp / 'live.sqlite3'}"
    if settings.BROKER_URL:
        env["BROKER_NAMESPACE"] = f"live-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    env.update(extra_env or {})
    if callable(env.get("DATABASE_URL")):
        env["DATABASE_URL"] = env["DATABASE_URL"](pg_database)
    server = LiveServer(url=f"http://127.0.0.1:{port}", env=env, pg_database=pg_database, tmp=tmp)
    try:
        server.manage("migrate", "-v0")
        server.manage("platform_setup")
        server.start_web()
        if worker if worker is not None else bool(env.get("BROKER_URL")):
            server.start_worker()
        server.wait_healthy(expect=expect_health)
    except BaseException:
        server.stop()
        raise
    return server
