"""Start-up is order-independent, and metrics are right or refused (docs/operations.md).

`make run` and `make worker` both run `manage.py migrate` and `platform_setup` first; on
one fresh PostgreSQL database started together, one of them used to crash ("relation
already exists"). A PROMETHEUS_MULTIPROC_DIR that did not exist yet crashed `migrate`;
several web processes without one counted apart, so totals went backwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from tools import ROOT
from tools.deployment import free_port


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "PROMETHEUS", "WEB_CONCURRENCY"))}
    env.update({"DJANGO_SETTINGS_MODULE": "settings", "SECRET_KEY": "startup-test-secret-key", **extra})
    return env


def _manage(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def _on_postgresql() -> bool:
    return settings.DATABASES["default"]["ENGINE"].endswith("postgresql")


@pytest.mark.skipif(
    not _on_postgresql(),
    reason="PostgreSQL runs only (SQLite: test_two_starts_on_a_fresh_sqlite_database_both_migrate)",
)
def test_two_starts_on_a_fresh_postgresql_database_both_migrate_and_set_up():
    from tools.deployment import pg_admin  # (psycopg: PostgreSQL runs only)

    db = settings.DATABASES["default"]
    host = f"{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"
    user = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    for attempt in range(3):
        name = f"{db['NAME']}_start_{uuid.uuid4().hex[:8]}"[-63:]
        pg_admin(f'CREATE DATABASE "{name}"')
        try:
            env = _env(DATABASE_URL=f"postgres://{user}@{host}/{name}")
            # What `make setup` runs, twice at once (make run + make worker).
            command = [sys.executable, "manage.py", "migrate", "-v0"]
            setup = [sys.executable, "manage.py", "platform_setup", "--no-model"]
            starts = [
                subprocess.Popen(
                    ["sh", "-c", f"{' '.join(command)} && {' '.join(setup)}"],
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                for _ in range(2)
            ]
            outputs = [(p.communicate(timeout=600)[0], p.returncode) for p in starts]
            assert [rc for _, rc in outputs] == [0, 0], f"attempt {attempt}:\n" + "\n".join(
                o[-2000:] for o, _ in outputs
            )
            shown = _manage("showmigrations", "--plan", env=env)
            assert shown.returncode == 0 and "[ ]" not in shown.stdout
            seeded = _manage(
                "shell", "-c", "from images.models import ImageModel; print(ImageModel.objects.count())", env=env
            )
            assert int(seeded.stdout.strip().splitlines()[-1]) > 0
        finally:
            pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_two_starts_on_a_fresh_sqlite_database_both_migrate(tmp_path):
    """`make run` and `make worker` share the embedded SQLite file: two `migrate`s at once
    used to interleave their migrations ("table ... already exists" in one of them)."""
    for attempt in range(3):
        env = _env(VAR_DIR=str(tmp_path / f"var{attempt}"))
        for name in ("DATABASE_URL", "BROKER_URL", "CACHE_URL"):  # embedded: var/db.sqlite3
            env.pop(name, None)
        starts = [
            subprocess.Popen(
                [sys.executable, "manage.py", "migrate", "-v0"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(2)
        ]
        outputs = [(p.communicate(timeout=600)[0], p.returncode) for p in starts]
        assert [rc for _, rc in outputs] == [0, 0], f"attempt {attempt}:\n" + "\n".join(o[-2000:] for o, _ in outputs)
        shown = _manage("showmigrations", "--plan", env=env)
        assert shown.returncode == 0 and "[ ]" not in shown.stdout


def test_migrate_creates_a_missing_prometheus_multiproc_dir(tmp_path):
    folder = tmp_path / "not" / "yet" / "prometheus"
    env = _env(DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}", PROMETHEUS_MULTIPROC_DIR=str(folder))
    done = _manage("migrate", "-v0", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert folder.is_dir()


# Counts one request in a forked process and two in this one, then reads the scrape's
# total through the same registry /metrics renders (core.metrics.process_registry).
COUNT_IN_TWO_PROCESSES = """
import os
from django_prometheus.middleware import Metrics
from core.metrics import process_registry
counter = Metrics.get_instance().requests_total
pid = os.fork()
if pid == 0:
    counter.inc()
    os._exit(0)
os.waitpid(pid, 0)
counter.inc(); counter.inc()
total = process_registry().get_sample_value("django_http_requests_before_middlewares_total")
print(int(total or 0))
"""


def test_several_web_processes_with_metrics_on_add_their_counts_up(tmp_path):
    env = _env(
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        VAR_DIR=str(tmp_path / "var"),
        METRICS_TOKEN="metrics-token",
        WEB_CONCURRENCY="2",
    )
    done = _manage("shell", "-v0", "-c", COUNT_IN_TWO_PROCESSES, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "3"  # both processes' requests, not one's
    assert Path(tmp_path / "var" / "prometheus").is_dir()


def test_serve_with_several_processes_and_no_multiprocess_mode_is_refused(tmp_path):
    env = _env(
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        METRICS_TOKEN="metrics-token",
        BROKER_URL="redis://127.0.0.1:6379/11",  # not embedded: serve would start 2 processes
    )
    try:
        done = _manage("serve", "--workers", "2", "--port", str(free_port()), env=env, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("serve started two processes that count apart instead of refusing")
    assert done.returncode != 0
    assert "multiprocess mode" in done.stderr and "WEB_CONCURRENCY" in done.stderr
