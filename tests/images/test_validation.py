"""Field rules of reference §2/§5: every bad request is a 400 in the envelope, with
the right param, and creates no job and holds no credit."""

from __future__ import annotations

import pytest

from billing.models import CreditAccount
from images.models import Job
from tests.conftest import post_json

URL = "/v1/images/generations"

CASES = [
    # (body, param, code)
    ({"model": "dall-e-2"}, "prompt", "missing_required_parameter"),
    ({"model": "dall-e-2", "prompt": ""}, "prompt", "missing_required_parameter"),
    ({"model": "dall-e-2", "prompt": 123}, "prompt", "invalid_type"),
    ({"model": "dall-e-2", "prompt": "x", "n": "2"}, "n", "invalid_type"),
    ({"model": "dall-e-2", "prompt": "x", "n": True}, "n", "invalid_type"),
    ({"model": "gpt-image-1", "prompt": "x", "stream": "yes"}, "stream", "invalid_type"),
    ({"model": "gpt-image-1", "prompt": "a white cat", "qualty": "low"}, "qualty", "unknown_parameter"),
    ({"model": "dall-e-2", "prompt": "x" * 1001}, "prompt", "string_above_max_length"),
    ({"model": "dall-e-3", "prompt": "x" * 4001}, "prompt", "string_above_max_length"),
    ({"model": "gpt-image-1", "prompt": "x" * 32001}, "prompt", "string_above_max_length"),
    ({"model": "dall-e-2", "prompt": "x", "n": 11}, "n", "integer_above_max_value"),
    ({"model": "dall-e-2", "prompt": "x", "n": 0}, "n", "integer_below_min_value"),
    ({"model": "dall-e-2", "prompt": "x", "n": "lots"}, "n", "invalid_type"),
    ({"model": "dall-e-2", "prompt": "x", "n": 1.5}, "n", "invalid_type"),
    ({"model": "dall-e-3", "prompt": "x", "n": 2}, "n", "invalid_value"),
    ({"model": "dall-e-2", "prompt": "x", "size": "1792x1024"}, "size", "invalid_value"),
    ({"model": "dall-e-2", "prompt": "x", "size": "auto"}, "size", "invalid_value"),
    ({"model": "dall-e-3", "prompt": "x", "size": "512x512"}, "size", "invalid_size"),
    ({"model": "gpt-image-1", "prompt": "x", "size": "1254x836"}, "size", "invalid_value"),
    ({"model": "gpt-image-1", "prompt": "x", "size": "99999999999x1"}, "size", "invalid_value"),
    ({"model": "dall-e-2", "prompt": "x", "quality": "hd"}, "quality", "invalid_value"),
    ({"model": "dall-e-3", "prompt": "x", "quality": "high"}, "quality", "invalid_value"),
    ({"model": "gpt-image-1", "prompt": "x", "quality": "standard"}, "quality", "invalid_value"),
    ({"model": "gpt-image-1", "prompt": "x", "response_format": "url"}, "response_format", "unknown_parameter"),
    ({"model": "dall-e-2", "prompt": "x", "response_format": "jpeg"}, "response_format", "invalid_value"),
    ({"model": "dall-e-3", "prompt": "x", "style": "moody"}, "style", "invalid_value"),
    ({"model": "dall-e-2", "prompt": "x", "style": "vivid"}, "style", "unsupported_parameter"),
    ({"model": "dall-e-2", "prompt": "x", "output_format": "webp"}, "output_format", "unsupported_parameter"),
    ({"model": "gpt-image-1", "prompt": "x", "output_format": "gif"}, "output_format", "invalid_value"),
    ({"model": "gpt-image-1", "prompt": "x", "output_compression": 101}, "output_compression", "invalid_value"),
    ({"model": "gpt-image-1", "prompt": "x", "background": "transparent"}, "background", "invalid_value"),
    ({"model": "gpt-image-1", "prompt": "x", "moderation": "none"}, "moderation", "invalid_value"),
    ({"model": "gpt-image-1", "prompt": "x", "partial_images": 4}, "partial_images", "invalid_value"),
    ({"model": "no-such-model", "prompt": "x"}, "model", "model_not_found"),
    ({"model": "dall-e-2", "prompt": "x", "seed": -1}, "seed", "invalid_value"),
]


@pytest.mark.parametrize("body,param,code", CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_bad_field_is_400_in_the_envelope_and_charges_nothing(api, registry, tenant, body, param, code):
    response = post_json(api, URL, body, tenant)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (param, code)
    assert error["message"]
    assert not Job.objects.exists()
    account = CreditAccount.objects.get(tenant=tenant.tenant)
    assert account.held == 0 and account.balance == 10_000


def test_dalle3_n_message_matches_openai(api, registry, tenant):
    response = post_json(api, URL, {"model": "dall-e-3", "prompt": "x", "n": 2}, tenant)
    assert response.json()["error"]["message"] == "You must provide n=1 for this model."


def test_gpt_size_message_lists_supported_values(api, registry, tenant):
    response = post_json(api, URL, {"model": "gpt-image-1", "prompt": "x", "size": "1254x836"}, tenant)
    assert response.json()["error"]["message"] == (
        "Invalid value: '1254x836'. Supported values are: '1024x1024', '1536x1024', '1024x1536', and 'auto'."
    )


def test_gpt_parameter_without_model_selects_a_gpt_image_model(api, parked, tenant):
    # output_format is GPT-only, so the default model is gpt-image-1, not dall-e-2.
    post_json(api, URL, {"prompt": "x", "output_format": "webp"}, tenant)
    assert Job.objects.get().model.public_id == "gpt-image-1"
