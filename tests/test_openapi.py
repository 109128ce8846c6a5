"""The OpenAPI document: valid OpenAPI 3, every API route described with the error
envelope and bearer auth, served without a key; and a bounded schemathesis run
against a live server that must never see a 5xx."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from drf_spectacular.validation import validate_schema
from rest_framework.test import APIClient

from tests.live import start_live_server

MAIN_PATHS = {
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/images/variations",
    "/v1/images/tasks/{task_id}",
    "/v1/models",
    "/v1/models/{model_id}",
    "/v1/files/{token}",
    "/v1/keys",
    "/v1/keys/{prefix}",
    "/v1/balance",
    "/v1/usage",
    "/v1/vision/generate",
    "/api/images/generations",
    "/api/v1/image/generation",
}


@pytest.fixture(scope="module")
def schema() -> dict:
    response = APIClient().get("/v1/openapi.json")  # no key
    assert response.status_code == 200
    assert "json" in response["Content-Type"]
    return json.loads(response.content)


@pytest.mark.django_db
def test_schema_is_valid_openapi_3(schema):
    assert schema["openapi"].startswith("3.")
    validate_schema(schema)  # drf-spectacular's bundled OpenAPI 3 JSON schema; raises on error


@pytest.mark.django_db
def test_every_api_route_is_described(schema):
    assert MAIN_PATHS <= set(schema["paths"])
    # Nothing but the API in the document (no catch-all, admin or dashboard routes).
    assert all(re.match(r"^/(v1|api)/", p) for p in schema["paths"])


@pytest.mark.django_db
def test_operations_have_request_response_and_error_envelope(schema):
    envelope = schema["components"]["schemas"]["Error"]
    assert envelope["properties"]["error"]["$ref"] == "#/components/schemas/ErrorDetail"
    detail = schema["components"]["schemas"]["ErrorDetail"]
    assert set(detail["properties"]) == {"message", "type", "param", "code"}
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if method not in ("get", "post", "delete", "put", "patch"):
                continue
            statuses = {s for s in operation["responses"] if s.startswith(("4", "5"))}
            assert "404" in statuses or "401" in statuses, (method, path)
            for status in statuses:
                ref = json.dumps(operation["responses"][status])
                assert "#/components/schemas/Error" in ref or "ResellerError" in ref, (method, path, status)
            success = [s for s in operation["responses"] if s.startswith("2")]
            assert success and "content" in operation["responses"][success[0]], (method, path)
            if method == "post":
                assert operation["requestBody"]["content"], (method, path)


@pytest.mark.django_db
def test_bearer_auth_is_the_security_scheme(schema):
    assert schema["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "A tenant API key: `Authorization: Bearer sk-...`",
    }
    generation = schema["paths"]["/v1/images/generations"]["post"]
    assert {"bearerAuth": []} in generation["security"]
    # Signed image links are readable without a key.
    files = schema["paths"]["/v1/files/{token}"]["get"]
    assert files.get("security", schema.get("security", [])) in ([], [{}])
    body = generation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body.endswith("/GenerationRequestRequest")
    assert "402" in generation["responses"] and "202" in generation["responses"]


@pytest.mark.django_db
def test_docs_page_uses_local_assets_only():
    response = APIClient().get("/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in html
    assert not re.search(r"(src|href)=\"https?://", html)  # no CDN


@pytest.mark.live
def test_schemathesis_finds_no_server_errors_and_responses_match_the_schema(tmp_path):
    """Fixed seed, 10 examples per operation. The tenant has no credits, so a valid
    generation stops at 402 before any GPU work; everything else must be 2xx/4xx, and
    every response (status, content type, headers, body) must be one the schema
    documents (the schema and the behaviour come from the same serializers). No rate
    limit for this tenant: the run must reach each operation's logic."""
    server = start_live_server(tmp_path, extra_env={"DEFAULT_TENANT_RPM": "0"})
    try:
        with urllib.request.urlopen(server.url + "/v1/openapi.json", timeout=10) as response:
            assert response.status == 200
        with urllib.request.urlopen(
            server.url + "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui.css", timeout=10
        ) as response:
            assert response.status == 200  # /docs/ works without DEBUG too
        key = server.tenant(credits=0)
        st = Path(sys.executable).with_name("st")
        result = subprocess.run(
            [
                str(st),
                "run",
                server.url + "/v1/openapi.json",
                "--url",
                server.url,
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,"
                "response_headers_conformance,response_schema_conformance",
                "--max-examples",
                "10",
                "--seed",
                "20240501",
                "--phases",
                "examples,coverage,fuzzing",
                "--workers",
                "1",
                "--no-shrink",
                "--request-timeout",
                "30",
                "--generation-database",
                "none",
                "-H",
                f"Authorization: Bearer {key}",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=240,
            cwd=tmp_path,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-6000:] + "\n---- server ----\n" + server.log_text()[-4000:]
        fuzzed = re.search(r"Fuzzing.*?(\d+) passed", output, re.S)
        assert fuzzed and int(fuzzed.group(1)) >= 14, output[-3000:]  # every operation ran
        assert "Rate limited" not in output, output[-3000:]
        print(output[-1500:])
    finally:
        server.stop()
