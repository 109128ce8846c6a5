"""Tooling around the platform, not part of it: the benchmark (`manage.py bench`), the
SD 1.5 / SDXL architecture builders (`manage.py arch_model`) and the real-deployment
harness that the benchmark and the live tests share. Nothing in the apps imports it.

Its modules use Django's settings and may import torch (arch_models, bench.direct):
they run on a worker-class machine, from a management command or a test.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository: manage.py's folder


class ToolError(RuntimeError):
    """A tool cannot go on; management commands show it as a CommandError."""
