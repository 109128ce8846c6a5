"""The suite runs on platform/settings_test.py (conftest.py): the production settings
with a fast password hasher; production keeps Django's default (PBKDF2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from django.conf import settings
from django.contrib.auth.hashers import get_hasher

ROOT = Path(__file__).resolve().parent.parent


def test_the_suite_uses_the_fast_hasher():
    assert settings.SETTINGS_MODULE == "settings_test"
    assert get_hasher().algorithm == "md5"


def test_production_settings_keep_the_default_hasher():
    code = (
        "import os, sys; sys.path.append('platform'); os.environ['DJANGO_SETTINGS_MODULE'] = 'settings'; "
        "import django; django.setup(); from django.contrib.auth.hashers import get_hasher; "
        "print(get_hasher().algorithm)"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "pbkdf2_sha256"
