"""The pages a person sees, in a real browser (Playwright + Debian's chromium) against one
live server: sign-up, email verification, sign-in, password reset (every step),
two-factor (TOTP set-up, recovery codes, the second-factor sign-in), the dashboard's
quickstart, a key shown once with its copy button, the playground for every seeded model
(its own sizes, one generation each, a 402 turned into a top-up link), jobs, usage,
billing (a refused voucher in the error style), members, an invalid invitation link, the
API docs and the sign-out confirmation.

On every page: no console errors and no serious or critical axe-core violations
(axe-playwright-python's bundled axe.min.js). `python -m tools.screenshots` runs this
journey with SCREENSHOTS=1, which saves each page to docs/screenshots/<name>.png.
One browser, one server, one test: the steps share the signed-up account."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from tests.browser import NEEDS_CHROMIUM, launch_chromium
from tests.live import start_live_server

pytestmark = [pytest.mark.live, NEEDS_CHROMIUM]
SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
PASSWORD = "correct-horse-battery-9"
EMAIL = "journey@example.com"
TRIAL = 1000  # seven cheapest generations fit; ten high-quality gpt-image-1 images (1670) do not
BLOCKING_IMPACTS = ("serious", "critical")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    server = start_live_server(
        tmp_path_factory.mktemp("journey"),
        extra_env={
            "SIGNUP_MODE": "open",
            "SIGNUP_TRIAL_CREDITS": str(TRIAL),
            "VOUCHERS_ENABLED": "true",
            # one playground generation per seeded model (16 with the Stability routes'
            # models) inside a minute: more than a member's default 30 requests per minute
            "DEFAULT_MEMBER_RPM": "120",
        },
    )
    yield server
    server.stop()
    print("---- live server logs (tail) ----\n" + server.log_text()[-4000:])


@pytest.fixture(scope="module")
def browser():
    yield from launch_chromium()


class Journey:
    """One browser tab, the console errors it saw, and the per-page checks."""

    def __init__(self, page, live):
        from axe_playwright_python.sync_playwright import Axe

        self.page, self.live, self.axe = page, live, Axe()
        self.console_errors: list[str] = []
        self.expected_statuses: set[int] = set()  # a step that provokes an error answer names it
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.console_errors.append(f"{page.url}: {exc}"))

    def _console(self, msg) -> None:
        if msg.type != "error":
            return
        status = re.search(r"Failed to load resource: the server responded with a status of (\d+)", msg.text)
        if status and int(status.group(1)) in self.expected_statuses:
            return
        self.console_errors.append(f"{self.page.url}: {msg.text}")

    def goto(self, path: str):
        return self.page.goto(self.live.url + path)

    def check(self, name: str, *, axe: bool = True, ours: bool = True) -> None:
        """The page is styled (the dashboard's stylesheet applied), has no allauth
        "Menu:" list, passes axe (no serious/critical violations); saves a screenshot
        when asked."""
        page = self.page
        page.wait_for_load_state("load")
        body = page.inner_text("body")
        assert "Menu:" not in body, f"{name}: allauth's raw menu"
        assert not ours or page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(245, 246, 248)", (
            f"{name}: unstyled ({page.url})"
        )
        if axe:
            results = self.axe.run(page)
            blocking = [
                f"{v['id']} ({v['impact']}): {v['help']} -> {[n['target'] for n in v['nodes']][:3]}"
                for v in results.response["violations"]
                if v["impact"] in BLOCKING_IMPACTS
            ]
            assert not blocking, f"{name} ({page.url}): " + "\n".join(blocking)
        if os.environ.get("SCREENSHOTS") == "1":
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def verification_link(live, email: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = live.log_text()
        if email in text:
            found = re.findall(r"(http://\S+/accounts/confirm-email/[^/\s]+/)", text)
            if found:
                return found[-1]
        time.sleep(0.2)
    raise AssertionError("no verification email in the server output:\n" + live.log_text()[-3000:])


def totp_code(secret: str) -> str:
    """The authenticator app's current code for `secret` (allauth's own HOTP helpers)."""
    from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value, yield_hotp_counters_from_time

    counters = list(yield_hotp_counters_from_time())
    return format_hotp_value(hotp_value(secret, counters[len(counters) // 2]))


def sign_in(journey: Journey, password: str = PASSWORD) -> None:
    page = journey.page
    journey.goto("/dashboard/login/")
    page.fill("#id_username", EMAIL)
    page.fill("#id_password", password)
    page.click("form[action='/dashboard/login/'] button[type=submit]")


def test_a_stranger_signs_up_and_visits_every_page(browser, live):
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    context.set_default_timeout(30_000)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live.url)
    page = context.new_page()
    journey = Journey(page, live)

    # The sign-in page asks for an email; the sign-up and its verification are styled pages.
    journey.goto("/dashboard/")
    assert page.inner_text("label:has(#id_username)").strip().startswith("Email")
    journey.check("sign-in")
    page.click("#signup-link")
    page.wait_for_url("**/accounts/signup/**")
    journey.check("sign-up")
    page.fill("#id_email", EMAIL)
    page.fill("#id_password1", "short")
    page.fill("#id_password2", "short")
    page.click("form[action='/accounts/signup/'] button[type=submit]")
    error = page.locator(".errorlist").first
    assert error.is_visible() and error.evaluate("e => getComputedStyle(e).color") == "rgb(179, 38, 30)"
    journey.check("sign-up-error")
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
    page.click("form[action='/accounts/signup/'] button[type=submit]")
    page.wait_for_url("**/accounts/confirm-email/")
    journey.check("verification-sent")
    page.goto(verification_link(live, EMAIL))
    journey.check("verification-confirm")
    page.click("main form button[type=submit]")
    page.wait_for_load_state("load")

    # Signed out: a wrong password in the error style; the password reset steps.
    context.clear_cookies()
    sign_in(journey, password="not-the-password")
    assert page.locator("p.error[role=alert]").is_visible()
    journey.check("sign-in-error")
    journey.goto("/accounts/password/reset/")
    journey.check("password-reset")
    page.fill("#id_email", EMAIL)
    page.click("main form button[type=submit]")
    page.wait_for_url("**/accounts/password/reset/done/")
    journey.check("password-reset-done")
    reset = re.findall(r"(http://\S+/accounts/password/reset/key/\S+/)", live.log_text())
    assert reset, "no password-reset email"
    page.goto(reset[-1])
    journey.check("password-reset-key")
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
    page.click("main form button[type=submit]")
    page.wait_for_url("**/accounts/password/reset/key/done/")
    journey.check("password-reset-key-done")

    # Signed in with the email: the home page's quickstart.
    sign_in(journey)
    page.wait_for_url(live.url + "/dashboard/")
    assert int(page.inner_text("#available")) == TRIAL
    base_url = page.inner_text("#base-url").strip()
    assert base_url == live.url + "/v1"
    assert f'base_url="{base_url}"' in page.locator("#sample-python").text_content()
    assert "from openai import OpenAI" in page.locator("#sample-python").text_content()
    assert f"curl {base_url}/images/generations" in page.inner_text("#sample-curl")
    assert 'from "openai"' in page.locator("#sample-node").text_content()
    assert page.get_attribute("#docs-link", "href") == "/docs/"
    journey.check("dashboard-home")
    page.click("#tab-python")
    assert page.locator("#sample-python").is_visible() and not page.locator("#sample-curl").is_visible()

    # A key, shown once, with a working copy button.
    journey.goto("/dashboard/keys/")
    journey.check("dashboard-keys")
    page.fill("#key-name", "journey-key")
    page.click("#key-create button")
    raw = page.inner_text("#raw-key").strip()
    assert page.inner_text("#base-url").strip() == base_url
    assert "$IMAGE_API_KEY" in page.inner_text("#key-sample") and raw not in page.inner_text("#key-sample")
    page.click("#copy-key")
    page.wait_for_function("document.getElementById('copy-key').textContent === 'Copied'")
    assert page.evaluate("navigator.clipboard.readText()") == raw
    journey.check("dashboard-key-created")
    journey.goto("/dashboard/keys/")
    assert raw not in page.content()

    # Two-factor: the overview and the TOTP set-up (a QR code and a code field).
    journey.goto("/accounts/2fa/")
    journey.check("two-factor")
    journey.goto("/accounts/2fa/totp/activate/")
    if "/reauthenticate/" in page.url:
        journey.check("reauthenticate")
        page.fill("#id_password", PASSWORD)
        page.click("main form button[type=submit]")
        page.wait_for_url("**/accounts/2fa/totp/activate/")
    assert page.locator("img.qr").count() == 1 and page.locator("#id_code").count() == 1
    journey.check("two-factor-totp")
    page.fill("#id_code", totp_code(page.input_value("#authenticator_secret")))
    page.click("main form button[type=submit]")
    page.wait_for_load_state("load")
    journey.goto("/accounts/2fa/recovery-codes/")
    recovery_codes = page.input_value("#recovery_codes").split()
    assert len(recovery_codes) >= 2
    journey.check("two-factor-recovery-codes")

    # The playground: each model's own sizes from its profile, one generation each.
    journey.goto("/dashboard/playground/")
    models = page.eval_on_selector_all("#model option", "options => options.map(o => o.value)")
    assert {"dall-e-2", "dall-e-3", "gpt-image-1"} <= set(models)
    journey.check("dashboard-playground")
    page.fill("#prompt", "a yellow triangle on a blue background")
    for model in models:
        page.select_option("#model", model)
        sizes = page.eval_on_selector_all("#size option", "options => options.map(o => o.value)")
        if model == "dall-e-3":
            assert "1792x1024" in sizes and "256x256" not in sizes
            assert page.is_visible("#quality-field") and page.is_visible("#style-field")
            assert not page.is_visible("#n-field")
        if model.startswith("gpt-image"):
            assert "1536x1024" in sizes and page.is_visible("#format-field")
            page.select_option("#quality", "low")
        page.select_option("#size", sizes[0])
        page.click("#generate")
        assert page.is_disabled("#generate")
        if model == models[0]:  # a disabled button looks disabled (grey), not like the blue one
            assert page.eval_on_selector("#generate", "b => getComputedStyle(b).cursor") == "not-allowed"
        page.wait_for_function(
            "['succeeded', 'failed', 'error'].includes(document.getElementById('pg-status').dataset.status)",
            timeout=180_000,
        )
        assert page.get_attribute("#pg-status", "data-status") == "succeeded", page.inner_text("#result")
        width = int(sizes[0].split("x")[0])
        page.wait_for_function("document.querySelector('#pg-images img.generated').complete")
        assert page.evaluate("document.querySelector('#pg-images img.generated').naturalWidth") == width
        assert not page.is_disabled("#generate")
    journey.check("dashboard-playground-result")

    # More than the balance: a readable 402 with a link to top up, never stuck on "submitting".
    page.select_option("#model", "gpt-image-1")
    page.select_option("#quality", "high")
    page.fill("#n", "10")
    journey.expected_statuses = {402}
    page.click("#generate")
    page.wait_for_selector("#pg-error:not([hidden])")
    assert page.get_attribute("#pg-status", "data-code") == "402"
    assert page.inner_text("#pg-status") != "submitting"
    assert page.get_attribute("#pg-topup", "href") == "/dashboard/billing/"
    journey.check("dashboard-playground-402")
    journey.expected_statuses = set()

    # Jobs, a job, usage.
    journey.goto("/dashboard/jobs/")
    assert page.locator("#jobs a.job").count() == len(models)
    journey.check("dashboard-jobs")
    page.click("#jobs a.job >> nth=0")
    page.wait_for_selector("#job-status")
    journey.check("dashboard-job")
    journey.goto("/dashboard/usage/")
    journey.check("dashboard-usage")

    # Billing: a refused voucher is an error, not the green success box.
    journey.goto("/dashboard/billing/")
    journey.check("dashboard-billing")
    page.fill("#voucher-code", "WRONG-CODE-1234")
    journey.expected_statuses = {400}  # the refused form is answered 400, as a form error
    page.click("#redeem button[type=submit]")
    message = page.locator(".messages li.error")
    message.wait_for()
    journey.expected_statuses = set()
    assert message.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(253, 236, 234)"
    assert page.locator(".messages li.success").count() == 0
    journey.check("dashboard-billing-voucher-refused")

    # Members, the API docs, the sign-out confirmation.
    journey.goto("/dashboard/members/")
    assert EMAIL in page.inner_text("#members-table")
    journey.check("dashboard-members")
    journey.expected_statuses = {404}
    assert journey.goto("/dashboard/invite/not-a-token/").status == 404
    journey.check("invitation-invalid")
    journey.expected_statuses = set()
    journey.goto("/docs/")
    page.wait_for_selector(".swagger-ui .opblock")
    journey.check("docs", axe=False, ours=False)  # Swagger UI's own markup; its console must still be clean
    journey.goto("/accounts/logout/")
    journey.check("sign-out")
    page.click("main form button[type=submit]")
    page.wait_for_url("**/dashboard/login/")

    # Signing in again asks for the second factor; a recovery code lets the owner in.
    sign_in(journey)
    page.wait_for_url("**/accounts/2fa/authenticate/")
    journey.check("two-factor-authenticate")
    page.fill("#id_code", recovery_codes[0])
    page.click("main form button[type=submit]")
    page.wait_for_url(live.url + "/dashboard/")

    assert not journey.console_errors, "\n".join(journey.console_errors)
    context.close()
