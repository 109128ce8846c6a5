"""`background: "transparent"` is a clear 400 on every model now that the unused
`supports_alpha` switch is gone, and the local backend starts without transformers'
torchvision notices (issue 21)."""

from __future__ import annotations

import logging

import pytest
from django.core.exceptions import FieldDoesNotExist

from billing.models import CreditAccount
from images.models import ImageModel
from images.seed import SEEDED_MODELS
from tests.conftest import post_json


def test_the_supports_alpha_switch_is_gone():
    with pytest.raises(FieldDoesNotExist):
        ImageModel._meta.get_field("supports_alpha")


@pytest.mark.parametrize("model_id", [m for m, (profile, _) in SEEDED_MODELS.items() if profile == "gpt-image"])
@pytest.mark.parametrize("output_format", ["png", "webp"])
def test_transparent_background_is_a_400_naming_background(api, registry, tenant, model_id, output_format):
    before = CreditAccount.objects.get(tenant=tenant.tenant).balance
    response = post_json(
        api,
        "/v1/images/generations",
        {"model": model_id, "prompt": "a sticker", "background": "transparent", "output_format": output_format},
        tenant,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "background" and error["code"] == "invalid_value"
    assert "transparent" in error["message"]
    account = CreditAccount.objects.get(tenant=tenant.tenant)
    assert account.balance == before and account.held == 0  # refused before any hold


def test_no_torchvision_notice_but_other_import_records_pass(caplog):
    import transformers

    import images.backends.local  # noqa: F401  (installs the filter)

    logger = logging.getLogger("transformers.utils.import_utils")
    with caplog.at_level(logging.WARNING, logger="transformers.utils.import_utils"):
        logger.warning(
            "`FooImageProcessor` requires torchvision (not installed); falling back to `FooImageProcessorPil` "
            "for backward compatibility."
        )
        logger.warning("Could not import module 'Foo': a real problem")
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["Could not import module 'Foo': a real problem"]
    # and the processors diffusers' pipelines import still resolve (to the PIL ones here)
    assert transformers.CLIPImageProcessor.__name__.startswith("CLIPImageProcessor")


def test_a_workers_warm_up_loads_generators_only_and_logs_no_error(transactional_db, settings, caplog):
    """Tool models (issue 26) are not diffusers pipelines: warming them up as one logged
    an ERROR with a traceback for each at every start (#21: no warnings at a normal start)."""
    from images.middleware import WorkerLifecycle
    from images.seed import registry_seed

    registry_seed()
    settings.WARM_UP_MODELS = True
    settings.PIPELINE_CACHE_SIZE = 100
    assert ImageModel.objects.exclude(kind=ImageModel.Kind.GENERATOR).filter(enabled=True).exists()
    with caplog.at_level(logging.INFO, logger="images.middleware"):
        WorkerLifecycle._warm_up(WorkerLifecycle.__new__(WorkerLifecycle))
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    warmed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("warmed up")]
    assert warmed and not any("/tools/" in message for message in warmed)
