"""Every error on the API leaves in the envelope, with x-request-id."""

from __future__ import annotations

import pytest


def assert_envelope(response, status: int) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    assert response["x-request-id"].startswith("req_")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_malformed_json_is_400(api, registry, tenant):
    response = api.post(
        "/v1/images/generations", data=b'{"prompt": "x",', content_type="application/json", **tenant.auth
    )
    error = assert_envelope(response, 400)
    assert error["message"].startswith("We could not parse the JSON body of your request.")


def test_json_that_is_not_an_object_is_400(api, registry, tenant):
    assert_envelope(
        api.post("/v1/images/generations", data=b"[1, 2]", content_type="application/json", **tenant.auth), 400
    )


def test_invalid_utf8_is_400(api, registry, tenant):
    assert_envelope(
        api.post(
            "/v1/images/generations", data=b'{"prompt": "\xff\xfe"}', content_type="application/json", **tenant.auth
        ),
        400,
    )


@pytest.mark.parametrize("path", ["/v1/nope", "/v1/images/nope", "/api/nothing-here"])
def test_unknown_route_is_404(api, db, path):
    error = assert_envelope(api.get(path), 404)
    assert error["code"] == "unknown_url"


def test_wrong_method_is_405(api, registry, tenant):
    error = assert_envelope(api.get("/v1/images/generations", **tenant.auth), 405)
    assert error["code"] == "method_not_allowed"


def test_unsupported_content_type_is_415(api, registry, tenant):
    response = api.post("/v1/images/generations", data=b"prompt", content_type="text/plain", **tenant.auth)
    assert_envelope(response, 415)


def test_successful_responses_carry_request_id(api, registry, tenant):
    assert api.get("/v1/models", **tenant.auth)["x-request-id"].startswith("req_")


def test_healthz_ok(api, db):
    response = api.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_healthz_names_the_failing_broker(api, db, settings):
    settings.BROKER_URL = "redis://127.0.0.1:1/0"
    response = api.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "failing": ["broker"]}


def test_healthz_names_the_failing_database(api, db, monkeypatch):
    import health

    monkeypatch.setattr(health, "_database_ok", lambda: False)
    response = api.get("/healthz")
    assert response.status_code == 503 and response.json()["failing"] == ["database"]


def test_an_unknown_host_on_the_api_is_a_400_in_the_envelope(client):
    response = client.get("/v1/models", HTTP_HOST="evil.example")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"
    assert b"Traceback" not in response.content and b"ALLOWED_HOSTS" not in response.content


def test_the_served_address_opens_the_dashboard(client):
    response = client.get("/")
    assert response.status_code == 302 and response["Location"] == "/dashboard/"
