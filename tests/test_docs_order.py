"""/docs/ lists OpenAI's endpoints first and the vendor shapes last (issue 21), and the
model object's `pricing` extension is described in the schema."""

from __future__ import annotations

import json

import pytest
from rest_framework.test import APIClient


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(APIClient().get("/v1/openapi.json").content)


@pytest.mark.django_db
def test_tags_put_openai_first_and_vendors_last(schema):
    names = [tag["name"] for tag in schema["tags"]]
    assert names[:2] == ["images", "models"] and names[-1] == "vendors"
    used = {tag for item in schema["paths"].values() for op in item.values() for tag in op.get("tags", [])}
    assert set(names) == used


@pytest.mark.django_db
def test_paths_put_openai_first_and_vendors_last(schema):
    paths = list(schema["paths"])
    assert paths[:4] == ["/v1/images/edits", "/v1/images/generations", "/v1/images/variations", "/v1/models"]
    vendors = [p for p in paths if p.startswith("/api/") or p.startswith("/v1/vision/")]
    assert paths[-len(vendors) :] == vendors and len(vendors) >= 3


@pytest.mark.django_db
def test_the_model_object_documents_pricing(schema):
    model = schema["components"]["schemas"]["Model"]
    assert "pricing" in model["properties"]
    price = schema["components"]["schemas"]["ModelPrice"]["properties"]
    assert {"kind", "size", "quality", "credits", "amount", "currency"} <= set(price)
