"""Image-generation backends: what runs the models behind a job.

`images.backends.base` is the interface the worker calls (tasks in, images and timings
out). It imports neither torch nor Django, so the web tier and the job services may use
its types freely. `images.backends.local` runs diffusers pipelines in this process; it
and its modules are the only importers of torch and diffusers in the project.

First use is `get_backend()`, from any thread (a job, the warm-up, the heartbeat, the
token counter): Python's imports are not safe for a package whose modules import each
other while two threads import them (the second thread is handed a *partially
initialised* module: "cannot import name 'select_device' from partially initialized
module"), and transformers' and diffusers' lazy modules make every attribute a possible
import. So the backend is built once, under one lock, and the build imports the whole
local package, every submodule and the library classes it uses, before any thread gets
it; code outside the package never imports `images.backends.local.*` itself (a test in
tests/images/test_backend_first_use.py starts fresh interpreters to keep that true).
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

# Every module of the local backend, imported in this order by the first get_backend().
LOCAL_MODULES = (
    "config",
    "device",
    "lanes",
    "previews",
    "families",
    "cache",
    "tokens",
    "runner",
    "batcher",
    "safety",
    "provenance",
    "tools",
)

_build_lock = threading.Lock()
_backend: Any = None


def get_backend() -> Any:
    """The process's backend (`images.backends.base.Backend`), built on first use by
    one thread while the others wait (see the module docstring); the web tier never
    calls this (the local backend imports torch)."""
    global _backend
    backend = _backend
    if backend is not None:
        return backend
    with _build_lock:
        if _backend is None:
            package = importlib.import_module("images.backends.local")
            for name in LOCAL_MODULES:
                importlib.import_module(f"images.backends.local.{name}")
            _backend = package.backend
        return _backend
