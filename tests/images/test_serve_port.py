"""`make run` on a taken port fails clearly (issue 21): a non-zero exit naming the port,
and nothing printed before it, so no "Serving on" or curl line points at whatever holds
the port."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from images.management.commands.serve import port_free_check
from tools import ROOT


@pytest.fixture
def held_port():
    """A port on 127.0.0.1 that another socket is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        yield holder.getsockname()[1]


def test_a_taken_port_is_refused_naming_it(held_port):
    with pytest.raises(CommandError) as caught:
        port_free_check("127.0.0.1", held_port)
    message = str(caught.value)
    assert f"Port {held_port} on 127.0.0.1 is in use" in message
    assert "PORT=" in message


def test_a_free_port_passes_and_stays_free():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    port_free_check("127.0.0.1", port)
    with socket.socket() as again:  # the check let go of it
        again.bind(("127.0.0.1", port))


def test_serve_stops_before_printing_anything(held_port):
    out = io.StringIO()
    with pytest.raises(CommandError, match=f"Port {held_port}"):
        call_command("serve", host="127.0.0.1", port=held_port, stdout=out)
    assert out.getvalue() == ""


def test_manage_serve_exits_non_zero_naming_the_port(held_port, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update({"PORT": str(held_port), "VAR_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "settings"})
    done = subprocess.run(
        [sys.executable, "manage.py", "serve"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert f"Port {held_port} on 127.0.0.1 is in use" in done.stderr
    assert "Serving on" not in done.stdout and "curl" not in done.stdout
