"""LoRA adapters on resident pipelines (issue 23): loaded once, switched per call.

Adapters live in the pipeline's modules (peft layers inside the denoiser and, for some
adapters, the text encoders). Those modules are shared by every lane's pipeline of a
model and by its derived img2img/inpaint pipelines (images.backends.local.cache), so the
adapter set is per *model*, not per pipeline object. Hence the gate:

- `activate(pipe, key, loras)` is a context manager around a pipeline call. Calls that
  want the same adapter set run side by side (several lanes); a call that wants another
  set waits until the model's running calls are done, then switches: it loads what is
  missing (`load_lora_weights(path, adapter_name=...)`, once per model: an LRU of at most
  LORA_CACHE_SIZE adapters, `delete_adapters` on eviction), then `set_adapters(names,
  adapter_weights=scales)`; with no adapter wanted, `disable_lora()` leaves every peft
  layer returning its base layer's output unchanged (bit-exact with a model that never
  saw an adapter: tests/images/test_loras.py). The pipeline itself is never reloaded.
- An adapter with scale 0 is dropped from the set (`effective`): the call is the base
  model's, and batches with base requests.

The batcher and run_batch group tasks by `effective(task.loras)`, so batch-mates never
share another request's adapter.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from images.backends.base import LoraSpec, PipelineError, error_summary
from images.backends.local import config

logger = logging.getLogger(__name__)

AdapterSet = tuple[tuple[str, str, float], ...]  # ((name, path, scale), ...) in request order


def effective(loras: tuple[LoraSpec, ...] | list[LoraSpec]) -> AdapterSet:
    """The adapter set a task really needs: (name, path, scale) of each adapter whose
    scale is not 0, in request order. () = the base model."""
    return tuple((spec.name, spec.path, float(spec.scale)) for spec in loras if float(spec.scale) != 0.0)


class _ModelAdapters:
    """One model's adapter state: what is loaded (LRU), what is active, who is running."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.active: AdapterSet = ()
        self.users = 0
        # peft adapter name -> (name, path, bytes of its weights), least recently used first.
        self.loaded: OrderedDict[str, tuple[str, str, int]] = OrderedDict()
        self.ever_loaded = False
        # A call holding the model alone (an IP-Adapter attached to the shared UNet), and
        # how many wait for that: new shared calls wait behind them (no starving).
        self.exclusive = False
        self.exclusive_waiting = 0


_MODELS: dict[tuple, _ModelAdapters] = {}
_MODELS_LOCK = threading.Lock()
# Seconds spent switching adapter sets, for the benchmark: [switches, seconds].
SWITCHES = [0, 0.0]


def _state(key: tuple) -> _ModelAdapters:
    with _MODELS_LOCK:
        return _MODELS.setdefault(key, _ModelAdapters())


def forget(key: tuple) -> None:
    """Drop the adapter state of an evicted model (its modules go with it)."""
    with _MODELS_LOCK:
        _MODELS.pop(key, None)


def adapter_name(name: str, path: str) -> str:
    """peft's name for a catalog adapter: a stable, module-name-safe hash of (name, path,
    the file's modification time), so a replaced file is loaded afresh."""
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError:
        stamp = 0
    return "lora_" + hashlib.sha256(f"{name}\0{path}\0{stamp}".encode()).hexdigest()[:16]


def _adapter_bytes(pipe: Any, peft_name: str) -> int:
    total = 0
    for component in ("unet", "transformer", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, component, None)
        if module is None or not hasattr(module, "named_parameters"):
            continue
        for param_name, param in module.named_parameters():
            if f".{peft_name}." in param_name or param_name.endswith(f".{peft_name}"):
                total += param.numel() * param.element_size()
    return total


def _switch(pipe: Any, state: _ModelAdapters, wanted: AdapterSet) -> None:
    """(Exclusive: no call of this model running.) Make `wanted` the active set."""
    started = time.perf_counter()
    if not wanted:
        if state.ever_loaded:
            pipe.disable_lora()
        state.active = ()
        return
    if not hasattr(pipe, "load_lora_weights"):
        raise PipelineError(f"{type(pipe).__name__} pipelines do not take LoRA adapters")
    names = []
    for name, path, _ in wanted:
        peft_name = adapter_name(name, path)
        if peft_name in state.loaded:
            state.loaded.move_to_end(peft_name)
        else:
            limit = max(config.current().lora_cache_size, len(wanted))
            wanted_names = {adapter_name(n, p) for n, p, _ in wanted}
            for old in [k for k in state.loaded if k not in wanted_names]:
                if len(state.loaded) < limit:
                    break
                pipe.delete_adapters(old)
                logger.info("unloaded LoRA adapter %s", state.loaded.pop(old)[0])
            try:
                pipe.load_lora_weights(path, adapter_name=peft_name)
            except Exception as exc:
                raise PipelineError(f"could not load LoRA adapter {name!r}: {error_summary(exc)}") from exc
            state.ever_loaded = True
            size = _adapter_bytes(pipe, peft_name)
            state.loaded[peft_name] = (name, path, size)
            logger.info("loaded LoRA adapter %s from %s (%d bytes)", name, path, size)
        names.append(peft_name)
    pipe.enable_lora()
    pipe.set_adapters(names, adapter_weights=[scale for _, _, scale in wanted])
    state.active = wanted
    SWITCHES[0] += 1
    SWITCHES[1] += time.perf_counter() - started


@contextmanager
def activate(
    pipe: Any, key: tuple, loras: tuple[LoraSpec, ...] | list[LoraSpec], *, exclusive: bool = False
) -> Iterator[None]:
    """Run the body with exactly `effective(loras)` active on the model `key` (cache key)
    whose pipeline `pipe` is (module docstring). `exclusive`: no other call of the model
    runs during the body (it changes the shared modules beyond the LoRA set: an
    IP-Adapter, images.backends.local.control). Raises PipelineError when an adapter
    cannot be loaded or the pipeline takes none."""
    wanted = effective(loras)
    state = _state(key)
    with state.changed:
        if exclusive:
            state.exclusive_waiting += 1
            try:
                state.changed.wait_for(lambda: state.users == 0)
            finally:
                state.exclusive_waiting -= 1
        else:
            state.changed.wait_for(
                lambda: (
                    not state.exclusive and not state.exclusive_waiting and (state.active == wanted or state.users == 0)
                )
            )
        if state.active != wanted:
            try:
                _switch(pipe, state, wanted)
            except Exception:
                # Half switched: unknown, so the next call switches again from scratch.
                state.active = (("?", "", float("nan")),)
                state.changed.notify_all()
                raise
        state.users += 1
        state.exclusive = exclusive
    try:
        yield
    finally:
        with state.changed:
            state.users -= 1
            if exclusive:
                state.exclusive = False
            state.changed.notify_all()


def loaded(key: tuple) -> dict[str, Any]:
    """What model `key` holds: {"active": [names], "loaded": [names, LRU first], "bytes": total}."""
    state = _state(key)
    with state.changed:
        return {
            "active": [name for name, _, _ in state.active],
            "loaded": [entry[0] for entry in state.loaded.values()],
            "bytes": sum(entry[2] for entry in state.loaded.values()),
        }
