"""Structured logs (core/logging.py): one JSON object per line, carrying the request id,
tenant, key prefix and job id where they apply; never a key, a secret or a prompt."""

from __future__ import annotations

import io
import json
import logging

import pytest

from images.selectors import image_model_cache_clear
from tests.conftest import post_json

URL = "/v1/images/generations"
PROMPT = "a very private prompt about a purple lighthouse"


@pytest.fixture
def json_lines():
    """Every log record, rendered by the production formatter, as parsed lines."""
    from core.logging import JSONFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)

    def lines() -> list[dict]:
        handler.flush()
        raw = [line for line in stream.getvalue().splitlines() if line.strip()]
        return [json.loads(line) for line in raw]  # each line on its own is one JSON object

    yield lines
    root.removeHandler(handler)
    root.setLevel(old_level)


def test_a_refused_request_logs_one_json_line_with_its_request_tenant_and_key_prefix(
    api, registry, make_tenant, json_lines
):
    poor = make_tenant(credits=0)
    response = post_json(api, URL, {"model": "dall-e-2", "prompt": PROMPT, "size": "256x256"}, poor)
    assert response.status_code == 402
    lines = [line for line in json_lines() if line.get("logger") == "django.request"]
    assert lines, json_lines()
    line = lines[-1]
    assert line["level"] == "warning" and "timestamp" in line
    assert line["request_id"] == response["x-request-id"]
    assert line["tenant"] == poor.tenant.pk and line["key_prefix"] == poor.key.prefix
    everything = json.dumps(json_lines())
    assert poor.raw not in everything and poor.raw.split(".", 1)[1] not in everything
    assert PROMPT not in everything


def test_worker_lines_carry_the_job_id(api, worker, tenant, json_lines):
    from images.models import ImageModel, Job

    ImageModel.objects.filter(public_id="dall-e-2").update(source="/nonexistent")
    image_model_cache_clear()  # (a bulk update sends no signal)
    response = post_json(api, URL, {"model": "dall-e-2", "prompt": PROMPT, "size": "256x256"}, tenant)
    assert response.status_code == 502
    job = Job.objects.get()
    failed = [line for line in json_lines() if line.get("logger") == "images.worker"]
    assert failed and all(line["job_id"] == str(job.pk) for line in failed)
    assert PROMPT not in json.dumps(json_lines())


def test_secrets_and_prompts_are_redacted_unless_prompts_are_turned_on(json_lines, settings):
    logger = logging.getLogger("tests.logging")
    key = "AbCd1234.s3cr3tS3cr3tS3cr3tS3cr3tS3cr3t00"
    logger.warning(
        "client sent %s in Authorization: Bearer %s",
        key,
        "tok_abcdef",
        extra={"prompt": PROMPT, "api_key": key, "password": "hunter2", "size": "256x256"},
    )
    settings.LOG_PROMPTS = True
    logger.warning("with prompts on", extra={"prompt": PROMPT})
    first, second = json_lines()[-2:]
    assert key not in json.dumps(first) and "s3cr3t" not in json.dumps(first) and "tok_abcdef" not in first["event"]
    assert "AbCd1234." in first["event"]  # the prefix stays, for support
    assert first["prompt"] == first["api_key"] == first["password"] == "[redacted]"
    assert first["size"] == "256x256"
    assert second["prompt"] == PROMPT


def test_exceptions_stay_on_one_line(json_lines):
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        logging.getLogger("tests.logging").exception("it failed")
    line = json_lines()[-1]
    assert line["event"] == "it failed" and "ValueError: boom" in line["exception"]
