"""A real deployment for compatibility tests: `manage.py serve` (gunicorn) and, when
BROKER_URL is set, a separate `runworker` process, on their own database (a fresh
PostgreSQL database when the suite runs on PostgreSQL, else a SQLite file) and their own
broker namespace. Tests talk to it over HTTP only. The mechanism is tools.deployment's,
shared with `manage.py bench`."""

from __future__ import annotations

from pathlib import Path

from tools.deployment import Deployment


class LiveServer(Deployment):
    def shell(self, code: str) -> str:
        """Run Python in `manage.py shell` against this server's database; its last output
        line. For assertions in drills only: tooling has real entry points."""
        return self.manage("shell", "-v0", "-c", code).stdout.strip().splitlines()[-1]


def start_live_server(
    tmp: Path, extra_env: dict | None = None, *, worker: bool | None = None, expect_health: int = 200
) -> LiveServer:
    """Migrate a fresh database, start `serve` and (with a broker) a `runworker`
    process, and wait until /healthz answers `expect_health`."""
    server = LiveServer(tmp, name="live", extra_env=extra_env)
    try:
        server.prepare()
        server.start_web()
        if worker if worker is not None else server.distributed:
            server.start_worker()
        server.wait_healthy(expect=expect_health)
    except BaseException:
        server.stop()
        raise
    return server
