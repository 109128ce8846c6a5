"""The benchmark's direct phase draws a native-size model (the demo model) as the
serving code does: at its native size, fitted to the size asked (tools/bench/direct.py)."""

from __future__ import annotations

from PIL import Image

from images.demo_model import DEMO_WEIGHTS
from tools.bench.direct import drawn_size


def test_a_native_size_model_is_drawn_at_its_size_and_fitted():
    width, height, fit = drawn_size(str(DEMO_WEIGHTS), 1792, 1024)
    assert (width, height) == (32, 32)
    assert fit(Image.new("RGB", (32, 32), "red")).size == (1792, 1024)


def test_any_other_model_is_drawn_at_the_size_asked(tmp_path):
    width, height, fit = drawn_size(str(tmp_path), 512, 768)
    image = Image.new("RGB", (512, 768))
    assert (width, height) == (512, 768) and fit(image) is image
