"""Fixtures for the GPU-layer tests: the trained demo model (copied once per module), on the CPU."""

from contextlib import ExitStack

import pytest

from images.backends.base import PipelineSource
from images.backends.local import config
from images.backends.local.cache import clear_cache
from images.demo_model import demo_model_install


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # Pin the device so results do not depend on the host, and start from defaults.
    with config.override(device="cpu", max_batch=None, cache_size=2, vae_tiling=False, lanes=None):
        path = tmp_path_factory.mktemp("models") / "demo"
        demo_model_install(path)
        yield path
    clear_cache()


@pytest.fixture(scope="module")
def source(model_dir) -> PipelineSource:
    return PipelineSource(str(model_dir))


@pytest.fixture
def pipeline_config():
    """Change the local backend's configuration for one test: `pipeline_config(lanes=2)`;
    put back afterwards."""
    with ExitStack() as stack:
        yield lambda **changes: stack.enter_context(config.override(**changes))
