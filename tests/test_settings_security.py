"""Embedded installs: DEBUG off unless asked for, var/ private to its owner, and an
unknown Host answered with a plain 400, not a debug page. Each case loads the settings
in a fresh process with a clean environment (as `make run` would), on a temporary VAR_DIR."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = r"""
import json, os, sys
sys.path.append(os.path.join(os.getcwd(), "platform"))
os.environ["DJANGO_SETTINGS_MODULE"] = "settings"
import django
django.setup()
from django.conf import settings
from django.test import Client

answers = {}
for path in ("/v1/models", "/dashboard/login/", "/admin/login/"):
    response = Client().get(path, HTTP_HOST="evil.example")
    answers[path] = [response.status_code, response.content.decode(errors="replace")]
print(json.dumps({"DEBUG": settings.DEBUG, "VAR_DIR": str(settings.VAR_DIR),
                  "DB": str(settings.DATABASES["default"]["NAME"]), "MEDIA_ROOT": str(settings.MEDIA_ROOT),
                  "SESSION_COOKIE_SECURE": settings.SESSION_COOKIE_SECURE, "answers": answers}))
"""


def run_probe(tmp_path: Path, **extra: str) -> subprocess.CompletedProcess:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "VAR_DIR": str(tmp_path / "var"),
        "WARM_UP_MODELS": "false",
        "JOB_SWEEP_SECONDS": "0",
        **extra,
    }
    return subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def probe(tmp_path: Path, **extra: str) -> dict:
    result = run_probe(tmp_path, **extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_embedded_install_has_debug_off_and_a_private_var(tmp_path):
    found = probe(tmp_path)
    var = tmp_path / "var"
    assert found["DEBUG"] is False
    assert found["VAR_DIR"] == str(var.resolve())
    assert mode(var) == 0o700
    secret = var / "secret_key"
    assert mode(secret) == 0o600 and len(secret.read_text().strip()) >= 50
    # The SQLite database and the images live under it.
    assert Path(found["DB"]).parent == var.resolve() and Path(found["MEDIA_ROOT"]).parent == var.resolve()
    assert found["SESSION_COOKIE_SECURE"] is False  # embedded serves http on this machine


def test_unknown_host_is_a_plain_400_without_debug_details(tmp_path):
    found = probe(tmp_path)
    for path, (status, body) in found["answers"].items():
        assert status == 400, (path, status)
        for leak in (
            "Traceback",
            "DisallowedHost",
            "ALLOWED_HOSTS",
            "SECRET_KEY",
            "settings",
            str(tmp_path),
            str(ROOT),
            "Django Version",
        ):
            assert leak not in body, (path, leak, body[:500])
        assert len(body) < 1000, (path, body[:500])


def test_an_existing_open_var_is_tightened_and_keeps_its_secret(tmp_path):
    var = tmp_path / "var"
    var.mkdir(mode=0o755)
    var.chmod(0o755)
    (var / "secret_key").write_text("kept-secret-" + "k" * 50)
    (var / "secret_key").chmod(0o644)
    probe(tmp_path)
    assert mode(var) == 0o700 and mode(var / "secret_key") == 0o600
    assert (var / "secret_key").read_text() == "kept-secret-" + "k" * 50


def test_debug_is_on_only_when_asked_for(tmp_path):
    assert probe(tmp_path, DEBUG="true")["DEBUG"] is True


def test_production_still_needs_a_secret_key(tmp_path):
    result = run_probe(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path / 'prod.sqlite3'}")
    assert result.returncode != 0 and "SECRET_KEY" in result.stderr
    assert not (tmp_path / "var" / "secret_key").exists()
