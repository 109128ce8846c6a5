"""A 402 carries its numbers as fields of the error object (issue 21 item 5, Zulip's
`data_fields`): `required` (the price), `available` and `held`, integer credits, beside
the four envelope fields and the one sentence written from them; in the OpenAI
envelope and inside the reseller shape's envelope alike."""

from __future__ import annotations

from billing.services import credits_reverse
from core.errors import InsufficientCredits
from tests.conftest import post_json

SMALL = {"model": "dall-e-2", "prompt": "x", "size": "256x256", "response_format": "b64_json"}  # 16 credits
VENDOR = {"model": "dall-e-2", "prompt": "x", "size": "256x256"}
NUMBERS = ("required", "available", "held")


def _numbers(error: dict) -> tuple[int, int, int]:
    assert all(type(error[name]) is int for name in NUMBERS), error
    return error["required"], error["available"], error["held"]


def test_second_request_gets_402_naming_price_available_and_held(api, parked, make_tenant):
    customer = make_tenant(credits=20)
    first = post_json(api, "/v1/images/generations", SMALL, customer, HTTP_PREFER="respond-async")
    assert first.status_code == 202, first.content
    refused = post_json(api, "/v1/images/generations", SMALL, customer)
    assert refused.status_code == 402
    error = refused.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("insufficient_quota", "insufficient_quota", None)
    assert _numbers(error) == (16, 4, 16)
    assert error["message"].startswith(
        "Insufficient credits: this request costs 16 credits and your available balance is 4 credits "
        "(20 total, 16 held by requests in flight)."
    )


def test_402_of_an_account_that_owes_credits_has_a_negative_available(api, parked, make_tenant):
    customer = make_tenant(credits=20)
    credits_reverse(tenant=customer.tenant, credits=25, actor="test", note="dispute", idempotency_key="t402:owed")
    refused = post_json(api, "/v1/images/generations", SMALL, customer)
    assert refused.status_code == 402
    error = refused.json()["error"]
    assert _numbers(error) == (16, -5, 0)
    assert "owes 5 credits" in error["message"] and "-5" not in error["message"]


def test_reseller_envelope_keeps_the_402_fields_in_its_error_object(api, parked, make_tenant):
    customer = make_tenant(credits=10)
    refused = post_json(
        api, "/api/v1/image/generation", {"model": "dall-e-2", "prompt": "x", "size": "256x256"}, customer
    )
    assert refused.status_code == 402
    body = refused.json()
    assert body["code"] == 402 and body["data"] is None
    assert _numbers(body["error"]) == (16, 10, 0)
    assert body["message"] == body["error"]["message"]


def test_aigne_shape_402_is_the_openai_error_object_with_its_fields(api, parked, make_tenant):
    customer = make_tenant(credits=10)
    refused = post_json(
        api, "/api/images/generations", {"model": "dall-e-2", "prompt": "x", "size": "256x256"}, customer
    )
    assert refused.status_code == 402
    assert _numbers(refused.json()["error"]) == (16, 10, 0)


def test_the_sentence_is_written_once_from_the_fields():
    error = InsufficientCredits(required=7, available=3, held=2)
    assert (error.status_code, error.code, error.data) == (
        402,
        "insufficient_quota",
        {"required": 7, "available": 3, "held": 2},
    )
    assert error.message == (
        "Insufficient credits: this request costs 7 credits and your available balance is 3 credits "
        "(5 total, 2 held by requests in flight)."
    )
    body = error.body()["error"]
    assert {name: body[name] for name in ("message", "type", "param", "code")} == {
        "message": body["message"],
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    }
    assert _numbers(body) == (7, 3, 2)
