"""Compatibility shim: the batcher moved to `images.backends.local.batcher` (and the lane
pool to `images.backends.local.lanes`). Re-exports the old names; imports torch."""

from __future__ import annotations

from images.backends.local.batcher import Batcher, batch_key, batcher
from images.backends.local.lanes import gpu_call
from images.backends.local.lanes import pool as lanes

__all__ = ["Batcher", "batch_key", "batcher", "gpu_call", "lanes"]
