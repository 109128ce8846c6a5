"""The web tier never imports torch: only worker processes pay for it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import os, sys
sys.path.append(os.path.join(os.getcwd(), "platform"))
os.environ["DJANGO_SETTINGS_MODULE"] = "settings"
os.environ["JOB_WAIT_SECONDS"] = "0.1"
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from images.seed import registry_seed
registry_seed()
from django.test import Client
from django.urls import get_resolver
import wsgi  # the production entry point
get_resolver().url_patterns  # import every view
from accounts.services import tenant_create_with_key
from billing.services import credits_grant
tenant, key, raw = tenant_create_with_key(name="web-tier")
credits_grant(tenant=tenant, amount=1000)
client = Client()
auth = {"HTTP_AUTHORIZATION": "Bearer " + raw}
assert client.get("/v1/models", **auth).status_code == 200
bad = client.post("/v1/images/generations", {"prompt": "x", "n": 11}, content_type="application/json", **auth)
assert bad.status_code == 400
# A real submission: priced, held, enqueued; no worker runs here, so the wait times out.
body = {"prompt": "x", "size": "256x256"}
status = client.post("/v1/images/generations", body, content_type="application/json", **auth).status_code
assert status == 504, status
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers"))
print("HEAVY:", heavy)
sys.exit(1 if heavy else 0)
"""


def test_web_tier_serves_requests_without_importing_torch(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'web.sqlite3'}",
        "SECRET_KEY": "x",
        "MEDIA_ROOT": str(tmp_path / "media"),
        "HOME": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "HEAVY: []" in result.stdout
