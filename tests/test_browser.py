"""The operator admin and the tenant dashboard in a real browser (headless Chromium via
Playwright) against a live server. SCREENSHOTS=1 also saves the main pages to
docs/screenshots/ (1200x800 PNG)."""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.browser import NEEDS_CHROMIUM, launch_chromium
from tests.live import start_live_server

pytestmark = [
    pytest.mark.live,
    NEEDS_CHROMIUM,
]
SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
PASSWORD = "correct-horse-battery-9"


def api(server, path: str, key: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        server.url + path,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def balance(server, key: str) -> dict:
    status, body = api(server, "/v1/balance", key)
    assert status == 200, body
    return body


def tenant_with_key(server, credits: int) -> tuple[str, str]:
    name = f"acme-{uuid.uuid4().hex[:6]}"
    out = server.manage("tenant_create", name, "--credits", str(credits)).stdout
    return name, out.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    server = start_live_server(tmp_path_factory.mktemp("browser"))
    server.tenant_a, server.key_a = tenant_with_key(server, 50_000)
    server.tenant_b, server.key_b = tenant_with_key(server, 1_000)
    server.manage("member_create", server.tenant_a, "olive", "--password", PASSWORD, "--role", "owner")
    server.manage("member_create", server.tenant_b, "bert", "--password", PASSWORD, "--role", "member")
    server.manage(
        "shell",
        "-c",
        "from django.contrib.auth.models import User; "
        f"User.objects.create_superuser('operator', 'op@example.com', '{PASSWORD}')",
    )
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


def shot(page, name: str) -> None:
    if os.environ.get("SCREENSHOTS") == "1":
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{name}.png"))


def admin_login(page, live, username: str = "operator") -> None:
    page.goto(live.url + "/admin/login/?next=/admin/")
    assert "/dashboard/login/" in page.url  # the admin's login is the shared login flow
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")


def dashboard_login(page, live, username: str) -> None:
    page.goto(live.url + "/dashboard/")
    assert "/dashboard/login/" in page.url  # sessions only: signed out goes to the login page
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(live.url + "/dashboard/")


def test_staff_overview_and_key_created_in_admin_works_once(page, live):
    admin_login(page, live)
    page.wait_for_selector("#overview-link")
    shot(page, "admin-index")
    page.click("#overview-link a")
    page.wait_for_selector("#overview")
    assert page.inner_text("#queue-depth").isdigit()
    assert "GPU seconds per model" in page.content()
    shot(page, "admin-overview")

    page.goto(live.url + "/admin/accounts/apikey/add/")
    page.select_option("#id_tenant", label=live.tenant_a)
    page.fill("#id_name", "from-admin")
    page.click("input[name=_save]")
    message = page.inner_text(".messagelist .warning")
    raw = re.search(r"not shown again\): (\S+)", message).group(1)
    assert balance(live, raw)["balance"] > 0  # the new key authenticates as tenant A
    page.goto(live.url + "/admin/accounts/apikey/")
    assert raw not in page.content()  # shown once, on that one page
    assert "from-admin" in page.content()


def test_grant_credits_action_writes_ledger_and_balance(page, live):
    before = balance(live, live.key_a)["balance"]
    admin_login(page, live)
    page.goto(live.url + f"/admin/accounts/tenant/?q={live.tenant_a}")
    page.check("input.action-select")
    page.select_option("select[name=action]", "grant_credits")
    page.click("button[name=index]")
    page.fill("#id_amount", "1234")
    page.fill("#id_note", "invoice 42")
    shot(page, "admin-grant-credits")
    page.click("#grant-submit")
    assert f"{live.tenant_a}: +1234 credits" in page.inner_text(".messagelist").lower()
    page.goto(live.url + "/admin/billing/ledgerentry/?q=invoice+42")
    row = page.inner_text("#result_list tbody tr")
    assert "invoice 42" in row and "operator" in row and "1234" in row
    shot(page, "admin-ledger")
    assert balance(live, live.key_a)["balance"] == before + 1234


def test_owner_creates_and_revokes_a_key_and_sees_usage(page, live):
    dashboard_login(page, live, "olive")
    assert page.inner_text("#tenant-name") == live.tenant_a
    assert int(page.inner_text("#available")) > 0
    shot(page, "dashboard-home")

    page.goto(live.url + "/dashboard/keys/")
    page.fill("#key-name", "browser-key")
    page.click("#key-create button")
    raw = page.inner_text("#raw-key").strip()
    shot(page, "dashboard-key-created")
    assert balance(live, raw)["available"] > 0
    prefix = raw.split(".")[0]
    page.goto(live.url + "/dashboard/keys/")
    assert raw not in page.content()
    page.once("dialog", lambda dialog: dialog.accept())
    page.click(f"tr[data-prefix='{prefix}'] button.danger")
    page.wait_for_selector(".messages")
    assert page.inner_text(f"tr[data-prefix='{prefix}'] .status") == "revoked"
    assert api(live, "/v1/balance", raw)[0] == 401
    shot(page, "dashboard-keys")

    page.goto(live.url + "/dashboard/usage/")
    assert page.locator("#chart-images svg rect.bar").count() == 30
    assert page.locator("#chart-credits svg rect.bar").count() == 30
    csv = page.request.get(live.url + "/dashboard/usage.csv")
    assert csv.ok and csv.text().startswith("day,requests,")


def test_playground_runs_a_charged_job_to_the_finished_image(page, live):
    before = balance(live, live.key_a)
    dashboard_login(page, live, "olive")
    page.goto(live.url + "/dashboard/playground/")
    page.fill("#prompt", "a yellow triangle on a blue background")
    page.select_option("#model", "dall-e-2")
    page.select_option("#size", "256x256")
    page.click("#generate")
    page.wait_for_selector("#pg-images img.generated", timeout=180_000)
    assert page.get_attribute("#pg-status", "data-status") == "succeeded"
    assert page.evaluate("document.querySelector('#pg-images img').naturalWidth") == 256
    assert page.evaluate("document.getElementById('pg-progress').value") == 1
    shot(page, "dashboard-playground")
    job_id = page.get_attribute("#result", "data-job")
    after = balance(live, live.key_a)
    assert after["balance"] < before["balance"] and after["held"] == 0

    page.goto(live.url + "/dashboard/jobs/")
    card = page.locator(f"a[data-job='{job_id}'] img")
    card.wait_for()
    card.scroll_into_view_if_needed()  # (thumbnails load lazily)
    page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=card.element_handle())
    # The card shows the small encoded copy (a 256-px image is never enlarged).
    assert "/thumb" in card.get_attribute("src")
    assert page.evaluate("(img) => img.naturalWidth", card.element_handle()) == 256
    shot(page, "dashboard-jobs")
    page.goto(live.url + "/dashboard/usage/")
    assert int(page.inner_text("#usage-table tbody tr:last-child td:nth-child(6)")) >= 1
    shot(page, "dashboard-usage")
    live.job_a = job_id


def test_other_tenants_member_gets_404_and_no_admin(page, live):
    status, task = api(
        live,
        "/v1/images/generations",
        live.key_a,
        {"model": "dall-e-2", "prompt": "a red fox", "size": "256x256"},
        {"Prefer": "respond-async"},
    )
    assert status == 202, task
    dashboard_login(page, live, "bert")
    assert page.inner_text("#tenant-name") == live.tenant_b
    response = page.goto(live.url + f"/dashboard/jobs/{task['id']}/")
    assert response.status == 404
    response = page.request.get(live.url + f"/dashboard/api/tasks/{task['id']}")
    assert response.status == 404
    page.goto(live.url + "/dashboard/jobs/")
    assert task["id"] not in page.content()
    page.goto(live.url + "/dashboard/keys/")
    assert page.locator("#key-create").count() == 0  # a plain member cannot create keys
    page.goto(live.url + "/admin/")
    assert "/admin/login/" in page.url  # not staff: the admin asks for another login
    page.goto(live.url + "/admin/overview/")
    assert "/admin/login/" in page.url


def test_admin_usage_page_draws_charts_from_records(db, tenant, worker, api):
    """Server-side check of the admin usage page (the browser tests cover the rest)."""
    from django.contrib.auth.models import User
    from django.test import Client

    from tests.conftest import post_json

    post_json(
        api,
        "/v1/images/generations",
        {"model": "dall-e-2", "prompt": "x", "size": "256x256", "response_format": "b64_json"},
        tenant,
    )
    User.objects.create_superuser("ops", "ops@example.com", "pw-123456")
    client = Client()
    client.login(username="ops", password="pw-123456")
    page = client.get("/admin/billing/usagerecord/").content.decode()
    assert 'id="chart-images"' in page and 'id="chart-credits"' in page and "<rect" in page
    assert "<td>dall-e-2</td><td>1</td><td>1</td><td>16</td>" in page
    assert "API key permissions" not in client.get("/admin/").content.decode().replace("Api", "API")
