"""The self-service journey in a real browser (Playwright + Debian's chromium) against a
live server and localstripe: sign up, read the verification email from the server's
console output, verify, sign in, create a key, generate with the trial credits through
the openai SDK, buy a pack, see the balance and the receipt.

What localstripe cannot do: its Stripe.js double has no Payment Element and its card
element sends no card to the server, so the card is put on the PaymentIntent server-side
(the SDK against localstripe, a 3-D Secure test card, exactly what Stripe.js does with the
card typed in); the browser then confirms the payment with Stripe.js (localstripe's 3-D
Secure step) and localstripe delivers the signed payment_intent.succeeded webhook to the
live server, which grants the credits."""

from __future__ import annotations

import re
import time

import pytest

from tests.billing.localstripe import LocalStripe
from tests.browser import NEEDS_CHROMIUM, launch_chromium
from tests.live import start_live_server

pytestmark = [
    pytest.mark.live,
    NEEDS_CHROMIUM,
]
PASSWORD = "correct-horse-battery-9"
TRIAL = 1000


@pytest.fixture(scope="module")
def stripe_server(tmp_path_factory):
    server = LocalStripe(tmp_path_factory.mktemp("localstripe-browser"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def live(tmp_path_factory, stripe_server):
    server = start_live_server(
        tmp_path_factory.mktemp("signup"),
        extra_env={**stripe_server.env(), "SIGNUP_MODE": "open", "SIGNUP_TRIAL_CREDITS": str(TRIAL)},
    )
    stripe_server.register_webhook(server.url + "/webhooks/stripe")
    server.manage(
        "shell",
        "-c",
        "from billing.models import CreditPack; "
        "CreditPack.objects.create(name='Starter', credits=5000, price=500, currency='usd')",
    )
    yield server
    server.stop()
    print("---- live server logs (tail) ----\n" + server.log_text()[-4000:])


@pytest.fixture(scope="module")
def browser():
    yield from launch_chromium()


def verification_link(live, email: str, timeout: float = 15) -> str:
    """The confirmation link from the email the console backend printed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = live.log_text()
        if email in text:
            found = re.findall(r"(http://\S+/accounts/confirm-email/[^/\s]+/)", text)
            if found:
                return found[-1]
        time.sleep(0.2)
    raise AssertionError("no verification email in the server output:\n" + live.log_text()[-3000:])


def put_3ds_card_on(stripe_server, intent_id: str) -> None:
    """Server-side, with the SDK: what Stripe.js does with a typed-in card (see the module docstring)."""
    import stripe

    sdk = stripe.StripeClient(stripe_server.env()["STRIPE_SECRET_KEY"], base_addresses={"api": stripe_server.url})
    method = sdk.v1.payment_methods.create(
        params={"type": "card", "card": {"number": "4000000000003220", "exp_month": 12, "exp_year": 2034, "cvc": "123"}}
    )
    sdk.v1.payment_intents.update(intent_id, params={"payment_method": method.id})
    assert sdk.v1.payment_intents.confirm(intent_id).status == "requires_action"


def test_stranger_signs_up_tries_pays_and_keeps_generating(browser, live, stripe_server):
    import openai

    email = "newcomer@example.com"
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    context.set_default_timeout(30_000)
    page = context.new_page()

    # Sign up from the dashboard's login page.
    page.goto(live.url + "/dashboard/")
    page.click("#signup-link")
    page.fill("#id_email", email)
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
    page.click("form[action='/accounts/signup/'] button[type=submit]")
    page.wait_for_url("**/accounts/confirm-email/")

    # Verify with the link from the email (printed by the console backend), then sign in.
    page.goto(verification_link(live, email))
    page.click("form button[type=submit]")
    context.clear_cookies()
    page.goto(live.url + "/accounts/login/")
    page.fill("#id_login", email)
    page.fill("#id_password", PASSWORD)
    page.click("form[action='/accounts/login/'] button[type=submit]")
    page.wait_for_url(live.url + "/dashboard/")
    assert int(page.inner_text("#available")) == TRIAL

    # A key, and a generation on the trial credits through the official SDK.
    page.goto(live.url + "/dashboard/keys/")
    page.fill("#key-name", "first-key")
    page.click("#key-create button")
    raw = page.inner_text("#raw-key").strip()
    client = openai.OpenAI(api_key=raw, base_url=live.url + "/v1", max_retries=0, timeout=120)
    result = client.images.generate(
        model="dall-e-2", prompt="a lighthouse at dusk", size="256x256", response_format="b64_json"
    )
    assert len(result.data) == 1 and result.data[0].b64_json
    page.goto(live.url + "/dashboard/")
    after_trial = int(page.inner_text("#available"))
    assert 0 < after_trial < TRIAL

    # Buy a pack: the page creates the PaymentIntent, Stripe.js confirms it, the webhook pays.
    page.goto(live.url + "/dashboard/billing/")
    page.click("#buy-button")
    page.wait_for_selector("#payment-element input")  # localstripe's card element, mounted by Stripe.js
    intent_id = page.get_attribute("#payment-form", "data-secret").split("_secret_")[0]
    put_3ds_card_on(stripe_server, intent_id)
    page.click("#pay-button")
    page.click("text=Complete authentication")  # localstripe's 3-D Secure step
    page.wait_for_url(re.compile(r".*/dashboard/billing/\?paid=pi_.*"))
    deadline = time.monotonic() + 30
    while True:
        page.goto(live.url + "/dashboard/billing/")
        if page.inner_text(f"tr[data-payment='{intent_id}'] .status") == "succeeded" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert page.inner_text(f"tr[data-payment='{intent_id}'] .status") == "succeeded"
    assert int(page.inner_text("#billing-balance")) == after_trial + 5000
    assert "Starter" in page.inner_text("#payments-table")

    # Keeps generating on the bought credits; every credit is in the ledger.
    client.images.generate(model="dall-e-2", prompt="a red fox", size="256x256", response_format="b64_json")
    assert "OK" in live.manage("billing_reconcile").stdout
    ledger = live.shell(
        "from billing.models import LedgerEntry; print(sorted(set(LedgerEntry.objects.filter("
        "kind='grant').values_list('note', flat=True))))"
    )
    assert "trial" in ledger and intent_id in ledger
    context.close()
