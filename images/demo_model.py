"""Installing the trained demo model (committed under images/backends/local/demo_weights).

The weights are trained by tools/demo_model/train.py (docs/demo-model.md) and committed;
`make setup` (manage.py platform_setup -> build_demo_model) only copies them under
MODEL_DIR, where the seeded models' `source` points. Torch-free: copying is seconds.
"""

from __future__ import annotations

import filecmp
import os
import pathlib
import shutil
import tempfile

DEMO_WEIGHTS = pathlib.Path(__file__).resolve().parent / "backends" / "local" / "demo_weights"
MARKER_FILE = "platform_model.json"  # written by the training script; names the native size
_OLD_MARKER = "platform_demo.json"  # the random-weight demo model built before
# The demo model's classifier-free guidance scale, seeded on its model rows (images.seed).
# 1.5 draws the asked figure on 192 of 192 vocabulary prompts at 2-6 steps; 5, the scale
# seeded before, over-saturates it (colour right 54-83 %): docs/demo-model.md.
DEMO_GUIDANCE = 1.5


def _is_current(path: pathlib.Path, weights: pathlib.Path) -> bool:
    marker = path / MARKER_FILE
    return (
        marker.is_file()
        and (path / "model_index.json").is_file()
        and filecmp.cmp(marker, weights / MARKER_FILE, shallow=False)
    )


def demo_model_install(path: pathlib.Path, *, weights: pathlib.Path = DEMO_WEIGHTS) -> bool:
    """Copy the committed demo model to `path` unless it is already there; True when copied.

    The copy is made in a temporary sibling folder renamed into place, so `path` holds
    either nothing or a complete model. An older demo model at `path` (the random-weight
    one, or another training of this one: its platform_model.json differs) is replaced.
    Raises FileExistsError when `path` holds anything else (an operator's folder), and
    FileNotFoundError when the committed weights are missing.
    """
    path = pathlib.Path(path)
    if not (weights / "model_index.json").is_file():
        raise FileNotFoundError(f"the demo model's weights are missing: {weights}")
    if _is_current(path, weights):
        return False
    if path.exists():
        is_demo = (path / MARKER_FILE).is_file() or (path / _OLD_MARKER).is_file()
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        elif path.is_dir() and is_demo:
            shutil.rmtree(path)
        else:
            raise FileExistsError(f"{path} exists and is not a demo model")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.copying-", dir=path.parent))
    try:
        staged = tmp / "model"
        shutil.copytree(weights, staged)
        try:
            os.rename(staged, path)
        except OSError:
            if _is_current(path, weights):  # a concurrent install won the race
                return False
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True
