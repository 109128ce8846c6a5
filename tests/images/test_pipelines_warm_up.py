"""Worker start-up warms every enabled model; one that fails does not keep the others cold."""

from __future__ import annotations

import pytest

from images.middleware import WorkerLifecycle
from images.models import ImageModel


class FirstFailsWarmUp:
    """Fails the first model it is asked to warm (whichever the order), warms the rest."""

    def __init__(self) -> None:
        self.failed: list[str] = []
        self.warmed: list[str] = []

    def __call__(self, source) -> None:
        name = source.source.rsplit("/", 1)[-1]
        if not self.failed:
            self.failed.append(name)
            raise RuntimeError("out of memory while loading")
        self.warmed.append(name)


@pytest.mark.django_db
def test_one_model_failing_to_warm_up_does_not_stop_the_others(settings, monkeypatch, caplog):
    settings.WARM_UP_MODELS = True
    settings.PIPELINE_CACHE_SIZE = 3
    for name in ("model-a", "model-b", "model-c"):
        ImageModel.objects.create(
            public_id=name, profile="dall-e-2", source=f"/models/{name}", queue=settings.GPU_QUEUES[0]
        )
    pytest.importorskip("torch")
    from images.backends import get_backend

    # The real backend's warm_up replaced (get_backend itself is bound at import elsewhere).
    backend = FirstFailsWarmUp()
    monkeypatch.setattr(get_backend(), "warm_up", backend)
    from django.db import connection

    monkeypatch.setattr(connection, "close", lambda: None)  # the test's transaction stays open

    WorkerLifecycle()._warm_up()

    assert len(backend.failed) == 1 and len(backend.warmed) == 2
    assert sorted(backend.failed + backend.warmed) == ["model-a", "model-b", "model-c"]
    assert f"warm-up of /models/{backend.failed[0]} failed" in caplog.text
