"""The playground's LoRA picker in a real browser (issue 23; headless Chromium via
Playwright, against a live server): it lists the adapters the tenant may use for the
chosen model, and a job run with one is charged its surcharge."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from django.conf import settings

from tests.browser import NEEDS_CHROMIUM, launch_chromium
from tests.live import start_live_server
from tests.test_browser import PASSWORD, balance, dashboard_login, tenant_with_key

pytestmark = [pytest.mark.live, NEEDS_CHROMIUM]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from tools.loras import build_lora

    tmp = tmp_path_factory.mktemp("browser-loras")
    server = start_live_server(tmp)
    server.tenant, server.key = tenant_with_key(server, 50_000)
    server.other, _ = tenant_with_key(server, 1_000)
    server.manage("member_create", server.tenant, "lena", "--password", PASSWORD, "--role", "owner")
    folder = build_lora(Path(settings.MODEL_DIR) / "demo-sd-tiny", tmp / "watercolor")
    server.manage("lora_add", "watercolor", str(folder), "--base", "dall-e-2", "--credits", "3", "--trigger", "wc")
    server.manage("lora_add", "theirs", str(folder), "--base", "dall-e-2", "--tenants", server.other)
    yield server
    server.stop()
    print("---- live server logs (tail) ----\n" + server.log_text()[-4000:])


@pytest.fixture(scope="module")
def browser():
    yield from launch_chromium()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    context.set_default_timeout(30_000)
    yield context.new_page()
    context.close()


def test_the_picker_sends_the_chosen_adapter_and_the_job_pays_its_surcharge(page, live):
    before = balance(live, live.key)["balance"]
    dashboard_login(page, live, "lena")
    page.goto(live.url + "/dashboard/playground/")
    page.select_option("#model", "dall-e-3")
    assert page.locator("#loras-field").is_hidden()  # nothing fits dall-e-3
    page.select_option("#model", "dall-e-2")
    page.select_option("#size", "256x256")
    assert page.locator("#loras-field").is_visible()
    rows = page.locator("#loras div.lora")
    assert [rows.nth(i).get_attribute("data-lora") for i in range(rows.count())] == ["watercolor"]
    assert "theirs" not in page.content()
    page.check("#loras div.lora[data-lora=watercolor] input.lora-use")
    page.fill("#loras div.lora[data-lora=watercolor] input.lora-scale", "0.8")
    page.fill("#seed", str(uuid.uuid4().int % 1000))
    with page.expect_request(lambda r: r.url.endswith("/dashboard/api/generations")) as sent:
        page.click("#generate")
    assert sent.value.post_data_json["loras"] == [{"name": "watercolor", "scale": 0.8}]
    page.wait_for_selector("#pg-images img.generated", timeout=180_000)
    assert page.get_attribute("#pg-status", "data-status") == "succeeded"
    assert "19 credits charged" in page.inner_text("#pg-job-link")  # 16 + 3 per image
    assert balance(live, live.key)["balance"] == before - 19
