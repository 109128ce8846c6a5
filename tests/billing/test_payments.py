"""Card payments: PaymentIntents created at localstripe (a real Stripe-API server on
loopback), credits only from signed webhook events, exactly once, refunds and lost
disputes through the ledger. billing_reconcile is clean after each scenario."""

from __future__ import annotations

import base64
import json
import threading
import urllib.request

import pytest
from django.db import connection
from django.test import Client

from accounts.models import Membership
from billing.models import CreditAccount, CreditPack, LedgerEntry, Payment
from billing.payments.gateway import client as stripe_client
from billing.payments.services import payment_start
from billing.services import credits_grant
from tests.billing.localstripe import SECRET_KEY, signed

WEBHOOK = "/webhooks/stripe"


@pytest.fixture
def pack(db) -> CreditPack:
    return CreditPack.objects.create(name="Starter", credits=5_000, price=500, currency="usd")


def stripe_get(server, path: str) -> dict:
    """A Stripe object as JSON, straight from localstripe's API."""
    auth = base64.b64encode(f"{SECRET_KEY}:".encode()).decode()
    request = urllib.request.Request(server.url + path, headers={"Authorization": f"Basic {auth}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def pay_with_test_card(intent_id: str, number: str = "4242424242424242") -> None:
    """What Stripe.js does in the browser, done with the SDK: a card payment method on
    the PaymentIntent, then confirm it."""
    sdk = stripe_client()
    method = sdk.v1.payment_methods.create(
        params={"type": "card", "card": {"number": number, "exp_month": 12, "exp_year": 2034, "cvc": "123"}}
    )
    sdk.v1.payment_intents.update(intent_id, params={"payment_method": method.id})
    sdk.v1.payment_intents.confirm(intent_id)


def event(kind: str, obj: dict, event_id: str = "evt_test") -> dict:
    return {"id": event_id, "object": "event", "type": kind, "data": {"object": obj}}


def deliver(body: bytes, signature: str, client: Client | None = None):
    return (client or Client()).post(WEBHOOK, body, content_type="application/json", HTTP_STRIPE_SIGNATURE=signature)


@pytest.fixture
def paid(stripe_on, pack, make_tenant):
    """A tenant whose payment for the pack succeeded at localstripe (nothing granted yet)."""
    owner = make_tenant(credits=0)
    payment, secret = payment_start(tenant=owner.tenant, pack_id=pack.pk, created_by="olive")
    assert secret.startswith(payment.external_id + "_secret_")
    pay_with_test_card(payment.external_id)
    intent = stripe_get(stripe_on, f"/v1/payment_intents/{payment.external_id}")
    assert intent["status"] == "succeeded"
    return owner, payment, intent


def balance(tenant) -> int:
    account = CreditAccount.objects.filter(tenant=tenant).first()
    return account.balance if account else 0


def test_payment_intent_carries_pack_and_tenant_and_grants_nothing_before_the_webhook(paid, reconciled):
    owner, payment, intent = paid
    assert intent["amount"] == 500 and intent["currency"] == "usd"
    assert intent["metadata"] == {"tenant_id": str(owner.tenant.pk), "pack_id": str(payment.pack_id), "credits": "5000"}
    assert (payment.status, payment.amount, payment.credits, payment.provider) == ("pending", 500, 5000, "stripe")
    assert balance(owner.tenant) == 0


def test_signed_success_event_grants_once_even_when_delivered_twice(paid, reconciled):
    owner, payment, intent = paid
    body, signature = signed(event("payment_intent.succeeded", intent))
    first, second = deliver(body, signature), deliver(body, signature)
    assert first.status_code == second.status_code == 200
    assert first.json()["outcome"] == "granted" and second.json()["outcome"] == "already handled"
    assert balance(owner.tenant) == 5000
    entry = LedgerEntry.objects.get(idempotency_key=f"stripe:{payment.external_id}")
    assert entry.amount == 5000 and entry.actor == "stripe" and payment.external_id in entry.note
    payment.refresh_from_db()
    assert payment.status == "succeeded" and payment.paid_at is not None


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_deliveries_grant_once(paid, reconciled):
    owner, payment, intent = paid
    body, signature = signed(event("payment_intent.succeeded", intent))
    barrier, answers = threading.Barrier(2), []

    def post():
        try:
            barrier.wait()
            answers.append(deliver(body, signature).json()["outcome"])
        finally:
            connection.close()

    threads = [threading.Thread(target=post) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(answers) == ["already handled", "granted"]
    assert balance(owner.tenant) == 5000
    assert LedgerEntry.objects.filter(tenant=owner.tenant, kind="grant").count() == 1


def test_bad_signature_is_400_and_grants_nothing(paid, reconciled):
    owner, payment, intent = paid
    body, _ = signed(event("payment_intent.succeeded", intent))
    _, forged = signed(event("payment_intent.succeeded", intent), secret="whsec_someone_else")
    assert deliver(body, forged).status_code == 400
    assert deliver(body, "").status_code == 400
    assert deliver(body + b" ", signed(event("payment_intent.succeeded", intent))[1]).status_code == 400
    assert balance(owner.tenant) == 0
    payment.refresh_from_db()
    assert payment.status == "pending"


def test_unknown_event_type_is_acknowledged_and_changes_nothing(paid, reconciled):
    owner, payment, intent = paid
    response = deliver(*signed(event("customer.created", {"id": "cus_1", "object": "customer"})))
    assert response.status_code == 200 and response.json()["outcome"] == "ignored"
    assert balance(owner.tenant) == 0


def test_amount_mismatch_is_recorded_not_credited(paid, reconciled):
    owner, payment, intent = paid
    response = deliver(*signed(event("payment_intent.succeeded", {**intent, "amount": 1, "amount_received": 1})))
    assert response.status_code == 200
    payment.refresh_from_db()
    assert payment.status == "mismatch" and balance(owner.tenant) == 0


def test_refund_after_part_spent_takes_back_what_is_left_and_records_the_rest(paid, stripe_on, reconciled):
    owner, payment, intent = paid
    deliver(*signed(event("payment_intent.succeeded", intent)))
    credits_grant(tenant=owner.tenant, amount=-3000, actor="test", note="spent")  # 2000 left of 5000
    sdk = stripe_client()
    refund = sdk.v1.refunds.create(params={"payment_intent": payment.external_id})
    assert refund.amount == 500
    latest = intent["latest_charge"]
    charge = stripe_get(stripe_on, f"/v1/charges/{latest if isinstance(latest, str) else latest['id']}")
    refunded_charge = {**charge, "amount_refunded": 500, "refunded": True, "payment_intent": payment.external_id}
    body, signature = signed(event("charge.refunded", refunded_charge, "evt_refund"))
    assert deliver(body, signature).json()["outcome"] == "refund"
    assert deliver(body, signature).status_code == 200  # a repeat changes nothing
    payment.refresh_from_db()
    assert (payment.status, payment.credits_reversed, payment.credits_unrecovered) == ("refunded", 2000, 3000)
    assert balance(owner.tenant) == 0
    assert LedgerEntry.objects.filter(tenant=owner.tenant, kind="adjustment", actor="stripe").count() == 1


def test_partial_refunds_then_lost_dispute_take_back_in_proportion(paid, reconciled):
    owner, payment, intent = paid
    deliver(*signed(event("payment_intent.succeeded", intent)))
    charge = {"id": "ch_x", "object": "charge", "amount": 500, "payment_intent": payment.external_id}
    deliver(*signed(event("charge.refunded", {**charge, "amount_refunded": 100}, "evt_r1")))
    payment.refresh_from_db()
    assert (payment.status, payment.credits_reversed, balance(owner.tenant)) == ("partially_refunded", 1000, 4000)
    dispute = {
        "id": "dp_1",
        "object": "dispute",
        "amount": 400,
        "status": "lost",
        "charge": "ch_x",
        "payment_intent": payment.external_id,
    }
    deliver(*signed(event("charge.dispute.closed", {**dispute, "status": "won"}, "evt_d0")))
    assert balance(owner.tenant) == 4000  # a dispute won takes nothing
    deliver(*signed(event("charge.dispute.closed", dispute, "evt_d1")))
    deliver(*signed(event("charge.dispute.closed", dispute, "evt_d1")))
    payment.refresh_from_db()
    assert (payment.status, payment.credits_reversed, payment.credits_unrecovered) == ("refunded", 5000, 0)
    assert balance(owner.tenant) == 0


def test_receipt_link_from_the_charge_event_is_shown_on_the_billing_page(paid, reconciled):
    owner, payment, intent = paid
    from django.contrib.auth.models import User

    deliver(*signed(event("payment_intent.succeeded", intent)))
    deliver(
        *signed(
            event(
                "charge.succeeded",
                {
                    "id": "ch_1",
                    "object": "charge",
                    "payment_intent": payment.external_id,
                    "receipt_url": "https://pay.stripe.com/receipts/r_1",
                },
            )
        )
    )
    user = User.objects.create_user("olive", "olive@example.com", "pw-orbit-tandem-42")
    Membership.objects.create(tenant=owner.tenant, user=user, role="owner")
    client = Client()
    client.force_login(user)
    page = client.get("/dashboard/billing/").content.decode()
    assert "https://pay.stripe.com/receipts/r_1" in page and payment.external_id in page and "succeeded" in page
    assert 'id="billing-balance">5000<' in page


def test_owner_starts_a_payment_from_the_billing_page(stripe_on, pack, make_tenant):
    from django.contrib.auth.models import User

    owner = make_tenant(credits=0)
    user = User.objects.create_user("olive", "olive@example.com", "pw-orbit-tandem-42")
    Membership.objects.create(tenant=owner.tenant, user=user, role="owner")
    client = Client()
    client.force_login(user)
    assert "Starter" in client.get("/dashboard/billing/").content.decode()
    page = client.post("/dashboard/billing/pay/", {"pack": pack.pk}).content.decode()
    payment = Payment.objects.get(tenant=owner.tenant)
    assert f'data-secret="{payment.external_id}_secret_' in page and stripe_on.url + "/js.stripe.com/v3/" in page
    member = User.objects.create_user("mo", "mo@example.com", "pw-orbit-tandem-42")
    Membership.objects.create(tenant=owner.tenant, user=member, role="member")
    client.force_login(member)
    assert client.post("/dashboard/billing/pay/", {"pack": pack.pk}).status_code == 403  # owners pay


def test_without_stripe_keys_the_billing_page_says_card_payments_are_off(make_tenant, pack, settings):
    from django.contrib.auth.models import User

    settings.STRIPE_SECRET_KEY = ""
    owner = make_tenant(credits=0)
    user = User.objects.create_user("olive", "olive@example.com", "pw-orbit-tandem-42")
    Membership.objects.create(tenant=owner.tenant, user=user, role="owner")
    client = Client()
    client.force_login(user)
    page = client.get("/dashboard/billing/").content.decode()
    assert "Card payments are off" in page and "Starter" not in page
    assert client.post(WEBHOOK, b"{}", content_type="application/json").status_code in (400, 404)
