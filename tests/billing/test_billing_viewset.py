"""The billing endpoints are one ViewSet on the /v1 router with their own OpenAPI
schema (issue 21 item 5): the paths are those of before, every response documented
(the usage columns all of billing.selectors.USAGE_COLUMNS), and a wrong method is a
405 in the envelope."""

from __future__ import annotations

import json

import pytest
from django.urls import resolve
from rest_framework.test import APIClient

from billing.api import BillingViewSet
from billing.selectors import USAGE_COLUMNS

PATHS = {"/v1/balance": "get", "/v1/usage": "get", "/v1/credits/redeem": "post"}


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(APIClient().get("/v1/openapi.json").content)


def _component(schema: dict, ref: str) -> dict:
    return schema["components"]["schemas"][ref.rsplit("/", 1)[1]]


def _response(schema: dict, path: str, method: str, status: str, media: str = "application/json") -> dict:
    """The component a documented response refers to."""
    return _component(schema, schema["paths"][path][method]["responses"][status]["content"][media]["schema"]["$ref"])


def _ref(field: dict) -> str:
    return field["allOf"][0]["$ref"] if "allOf" in field else field["$ref"]


@pytest.mark.parametrize("path", PATHS)
def test_each_billing_path_is_an_action_of_the_viewset(path):
    assert resolve(path).func.cls is BillingViewSet


@pytest.mark.django_db
def test_billing_operations_document_their_responses(schema):
    for path, method in PATHS.items():
        operation = schema["paths"][path][method]
        assert operation["tags"] == ["billing"]
        assert {"401", "403", "429"} <= set(operation["responses"])
    balance = _response(schema, "/v1/balance", "get", "200")
    assert {"balance", "held", "available"} <= set(balance["properties"])
    assert all(balance["properties"][name]["type"] == "integer" for name in ("balance", "held", "available"))
    usage_ok = schema["paths"]["/v1/usage"]["get"]["responses"]["200"]["content"]
    assert set(usage_ok) == {"application/json", "text/csv"}
    usage = _component(schema, usage_ok["application/json"]["schema"]["$ref"])
    totals = _component(schema, _ref(usage["properties"]["totals"]))
    assert set(totals["properties"]) == set(USAGE_COLUMNS)
    row = _component(schema, usage["properties"]["data"]["items"]["$ref"])
    assert set(row["properties"]) == {"day", "model", "key", *USAGE_COLUMNS}
    redeem = schema["paths"]["/v1/credits/redeem"]["post"]
    assert "requestBody" in redeem and "200" in redeem["responses"]


@pytest.mark.django_db
def test_charged_402_documents_required_available_and_held(schema):
    envelope = _response(schema, "/v1/images/generations", "post", "402")
    detail = _component(schema, _ref(envelope["properties"]["error"]))
    assert {"message", "type", "param", "code", "required", "available", "held"} <= set(detail["properties"])


@pytest.mark.parametrize(
    ("path", "method"), [("/v1/balance", "post"), ("/v1/usage", "delete"), ("/v1/credits/redeem", "get")]
)
def test_wrong_method_is_405_in_the_envelope(api, tenant, path, method):
    response = getattr(api, method)(path, **tenant.auth)
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
