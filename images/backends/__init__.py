"""Image-generation backends: what runs the models behind a job.

`images.backends.base` is the interface the worker calls (tasks in, images and timings
out). It imports neither torch nor Django, so the web tier and the job services may use
its types freely. `images.backends.local` runs diffusers pipelines in this process; it
and its modules are the only importers of torch and diffusers in the project.
"""

import threading

_import_lock = threading.Lock()


def get_backend():
    """The process's backend (`images.backends.base.Backend`), imported on first use (by
    one thread at a time: the local one imports torch, transformers and diffusers, whose
    imports are not thread-safe), so the web tier never calls this."""
    with _import_lock:
        from images.backends.local import backend

    return backend
