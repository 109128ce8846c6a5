"""GET /v1/usage with hostile query parameters: every one is a 400 naming the
parameter (never a 500), and the dates at the ends of the calendar still work."""

from __future__ import annotations

import pytest

HOSTILE_DATES = [
    "0000-01-01",
    "10000-01-01",
    "2026-02-30",
    "2026-13-01",
    "2026-1-1",
    "20260101",
    "2026-W01-1",
    "2026-01-01T00:00:00",
    "2026-01-01 ",
    " 2026-01-01",
    "2026-01-01\x00",
    "\x00",
    "２０２６-０１-０１",
    "2026-01-0١",
    "été",
    "🗓",
    "-1",
    "1e9",
    "9" * 10_000,
    "x" * 100_000,
    "2026-01-01' OR '1'='1",
]
HOSTILE_CHOICES = ["DAY", "day ", "day\x00", "\x00", "日", "🔑", "x" * 100_000, "csv,json", "1", "__class__"]


def assert_400(response, param: str) -> None:
    assert response.status_code == 400, (response.status_code, response.content[:300])
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


@pytest.mark.parametrize("param", ["start", "end"])
@pytest.mark.parametrize("value", HOSTILE_DATES)
def test_hostile_dates_are_400(api, registry, tenant, param, value):
    assert_400(api.get("/v1/usage", {param: value}, **tenant.auth), param)


@pytest.mark.parametrize("param", ["group_by", "format"])
@pytest.mark.parametrize("value", HOSTILE_CHOICES)
def test_hostile_choices_are_400(api, registry, tenant, param, value):
    assert_400(api.get("/v1/usage", {param: value}, **tenant.auth), param)


def test_end_near_date_min_does_not_overflow(api, registry, tenant):
    """The issue's request: the default start (29 days before end) would be before year 1."""
    response = api.get("/v1/usage", {"end": "0001-01-05"}, **tenant.auth)
    assert response.status_code == 200
    assert (response.json()["start"], response.json()["end"]) == ("0001-01-01", "0001-01-05")


@pytest.mark.parametrize(
    "query",
    [
        {"start": "0001-01-01", "end": "0001-01-01"},
        {"end": "0001-01-01"},
        {"start": "9999-12-31", "end": "9999-12-31"},
        {"start": "9999-01-01", "end": "9999-12-31"},
        {"end": "9999-12-31"},
        {"start": "0001-01-01", "end": "0001-12-31", "format": "csv", "group_by": "key"},
    ],
)
def test_dates_at_the_ends_of_the_calendar_work(api, registry, tenant, query):
    response = api.get("/v1/usage", query, **tenant.auth)
    assert response.status_code == 200, response.content[:300]


def test_start_after_the_default_end_is_400(api, registry, tenant):
    assert_400(api.get("/v1/usage", {"start": "9999-12-31"}, **tenant.auth), "start")


def test_range_longer_than_366_days_is_400(api, registry, tenant):
    assert_400(api.get("/v1/usage", {"start": "0001-01-01", "end": "9999-12-31"}, **tenant.auth), "start")
    assert api.get("/v1/usage", {"start": "2024-01-01", "end": "2025-01-01"}, **tenant.auth).status_code == 200


def test_empty_parameters_are_the_defaults(api, registry, tenant):
    response = api.get("/v1/usage?start=&end=&group_by=&format=", **tenant.auth)
    assert response.status_code == 200
    assert response.json()["group_by"] == "day" and response["Content-Type"].startswith("application/json")


def test_known_format_and_group_values_work(api, registry, tenant):
    for group_by in ("day", "model", "key"):
        assert api.get("/v1/usage", {"group_by": group_by, "format": "json"}, **tenant.auth).status_code == 200
        csv_response = api.get("/v1/usage", {"group_by": group_by, "format": "csv"}, **tenant.auth)
        assert csv_response.status_code == 200 and csv_response["Content-Type"].startswith("text/csv")


def test_undecodable_query_string_is_not_a_500(api, registry, tenant):
    response = api.get("/v1/usage?end=%ff%fe&group_by=%c3%28", **tenant.auth)
    assert response.status_code == 400
