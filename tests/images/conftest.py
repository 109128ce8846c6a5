"""Fixtures for the GPU-layer tests: a demo model built once per module, on the CPU."""
import pytest

from images import pipelines
from images.demo_model import build_demo_model
from images.pipelines import PipelineSource


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # Pin the device so results do not depend on the host, and start from defaults.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLATFORM_DEVICE", "cpu")
        for name in ("PIPELINE_MAX_BATCH", "PIPELINE_CACHE_SIZE", "PIPELINE_VAE_TILING", "PIPELINE_LANES"):
            mp.delenv(name, raising=False)
        path = tmp_path_factory.mktemp("models") / "demo"
        build_demo_model(path, seed=0)
        yield path
    pipelines._clear_cache()


@pytest.fixture(scope="module")
def source(model_dir) -> PipelineSource:
    return PipelineSource(str(model_dir))
