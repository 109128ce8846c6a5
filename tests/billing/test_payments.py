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


def test_refund_after_part_spent_takes_back_everything_and_leaves_a_debt(paid, stripe_on, reconciled):
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
    assert (payment.status, payment.credits_reversed, payment.credits_unrecovered) == ("refunded", 5000, 0)
    assert balance(owner.tenant) == -3000  # the 3000 spent are owed
    assert CreditAccount.objects.get(tenant=owner.tenant).owed == 3000
    assert LedgerEntry.objects.filter(tenant=owner.tenant, kind="reversal", actor="stripe").count() == 1


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


# ---- Reversals reach held credits; an unpaid reversal is a debt (issue 19 item 1) ----

GPT_HIGH = {"model": "gpt-image-1", "prompt": "x", "size": "1024x1536", "quality": "high", "n": 10}  # 2500 credits


def async_job(api, owner) -> str:
    from tests.conftest import post_json

    response = post_json(api, "/v1/images/generations", GPT_HIGH, owner, HTTP_PREFER="respond-async")
    assert response.status_code == 202, response.content
    return response.json()["id"]


def refund_event(payment, amount_refunded: int, event_id: str = "evt_refund") -> dict:
    charge = {"id": "ch_r", "object": "charge", "amount": payment.amount, "payment_intent": payment.external_id}
    return event("charge.refunded", {**charge, "amount_refunded": amount_refunded, "refunded": True}, event_id)


def dispute_event(payment, kind: str, status: str, event_id: str, amount: int | None = None) -> dict:
    dispute = {
        "id": "dp_x",
        "object": "dispute",
        "amount": payment.amount if amount is None else amount,
        "status": status,
        "charge": "ch_r",
        "payment_intent": payment.external_id,
    }
    return event(kind, dispute, event_id)


def account_of(owner) -> tuple[int, int, int]:
    account = CreditAccount.objects.get(tenant=owner.tenant)
    return account.balance, account.held, account.available


def test_refund_while_credits_are_held_is_taken_back_when_the_jobs_are_cancelled(paid, api, parked, reconciled):
    owner, payment, intent = paid
    deliver(*signed(event("payment_intent.succeeded", intent)))
    tasks = [async_job(api, owner), async_job(api, owner)]
    assert account_of(owner) == (5000, 5000, 0)
    assert deliver(*signed(refund_event(payment, 500))).json()["outcome"] == "refund"
    assert account_of(owner) == (0, 5000, -5000)  # the whole reversal is booked, held credits included
    for task in tasks:
        assert api.delete(f"/v1/images/tasks/{task}", **owner.auth).status_code == 200
    assert account_of(owner) == (0, 0, 0)  # cancelling returns nothing: the refund took it
    payment.refresh_from_db()
    assert (payment.status, payment.credits_reversed, payment.credits_unrecovered) == ("refunded", 5000, 0)
    from billing.selectors import credits_owed

    assert credits_owed() == []


def test_refund_of_spent_credits_is_a_debt_that_stops_spending_until_paid(paid, api, parked, make_tenant, pack):
    from django.core.management import call_command

    from billing.selectors import credits_owed, ledger_reconcile
    from billing.services import hold_capture
    from images.models import Job
    from tests.conftest import post_json

    owner, payment, intent = paid
    deliver(*signed(event("payment_intent.succeeded", intent)))
    tasks = [async_job(api, owner), async_job(api, owner)]
    deliver(*signed(refund_event(payment, 500)))
    for job in Job.objects.filter(pk__in=tasks):
        hold_capture(job=job, charge=job.quote)  # the images were delivered
    assert account_of(owner) == (-5000, 0, -5000)
    assert ledger_reconcile() == []  # a debt is not a ledger disagreement
    [owed] = credits_owed()
    assert (owed.tenant_id, owed.credits, owed.payments) == (owner.tenant.pk, 5000, [payment.external_id])
    import io

    out = io.StringIO()
    call_command("billing_reconcile", stdout=out)
    assert f"OWED tenant {owner.tenant.name!r}" in out.getvalue() and "5000 credits" in out.getvalue()

    free = {"model": "dall-e-2", "prompt": "x", "size": "256x256"}
    refused = post_json(api, "/v1/images/generations", free, owner, HTTP_PREFER="respond-async")
    assert refused.status_code == 402
    message = refused.json()["error"]["message"]
    assert "owes 5000 credits" in message and "-5000" not in message

    credits_grant(tenant=owner.tenant, amount=3000, note="voucher")  # later credits pay the debt first
    assert post_json(api, "/v1/images/generations", free, owner, HTTP_PREFER="respond-async").status_code == 402
    assert credits_owed()[0].credits == 2000
    credits_grant(tenant=owner.tenant, amount=2016, note="top-up")
    assert credits_owed() == [] and ledger_reconcile() == []
    assert post_json(api, "/v1/images/generations", free, owner, HTTP_PREFER="respond-async").status_code == 202
    assert CreditAccount.objects.get(tenant=owner.tenant).debt_allowed == 0  # the database guard is whole again
    from django.db import IntegrityError, transaction

    with pytest.raises(IntegrityError), transaction.atomic():
        CreditAccount.objects.filter(tenant=owner.tenant).update(held=10**6)


def test_operator_removal_still_cannot_go_below_the_available_balance(make_tenant):
    from billing.errors import InvalidAmount

    owner = make_tenant(credits=100)
    with pytest.raises(InvalidAmount):
        credits_grant(tenant=owner.tenant, amount=-101, actor="op")
    assert balance(owner.tenant) == 100


def test_billing_page_shows_the_debt(paid, api, parked):
    from django.contrib.auth.models import User

    from billing.services import hold_capture
    from images.models import Job

    owner, payment, intent = paid
    deliver(*signed(event("payment_intent.succeeded", intent)))
    job = Job.objects.get(pk=async_job(api, owner))
    deliver(*signed(refund_event(payment, 500)))
    hold_capture(job=job, charge=job.quote)
    user = User.objects.create_user("olive", "olive@example.com", "pw-orbit-tandem-42")
    Membership.objects.create(tenant=owner.tenant, user=user, role="owner")
    client = Client()
    client.force_login(user)
    page = client.get("/dashboard/billing/").content.decode()
    assert 'id="billing-owed">2500<' in page and "refunded" in page


# ---- Events that arrive before payment_intent.succeeded (issue 19 item 2) ----


@pytest.mark.parametrize(
    "early, credited",
    [
        ("refund_full", 0),
        ("refund_part", 3000),
        ("dispute_lost", 0),
        ("dispute_withdrawn", 0),
        ("dispute_won", 5000),
        ("withdrawn_then_reinstated", 5000),
        ("reinstated_then_late_withdrawn", 5000),
    ],
)
def test_event_before_success_is_recorded_and_success_grants_only_what_remains(paid, reconciled, early, credited):
    owner, payment, intent = paid
    early_events = {
        "refund_full": [refund_event(payment, 500)],
        "refund_part": [refund_event(payment, 200)],
        "dispute_lost": [dispute_event(payment, "charge.dispute.closed", "lost", "evt_d")],
        "dispute_withdrawn": [dispute_event(payment, "charge.dispute.funds_withdrawn", "needs_response", "evt_d")],
        "dispute_won": [dispute_event(payment, "charge.dispute.closed", "won", "evt_d")],
        "withdrawn_then_reinstated": [
            dispute_event(payment, "charge.dispute.funds_withdrawn", "needs_response", "evt_d1"),
            dispute_event(payment, "charge.dispute.funds_reinstated", "won", "evt_d2"),
        ],
        "reinstated_then_late_withdrawn": [
            dispute_event(payment, "charge.dispute.funds_reinstated", "won", "evt_d2"),
            dispute_event(payment, "charge.dispute.funds_withdrawn", "needs_response", "evt_d1"),
        ],
    }[early]
    for item in early_events:
        assert deliver(*signed(item)).status_code == 200
    assert balance(owner.tenant) == 0
    payment.refresh_from_db()
    assert payment.status == "pending"
    body, signature = signed(event("payment_intent.succeeded", intent))
    assert deliver(body, signature).json()["outcome"] == "granted"
    assert account_of(owner) == (credited, 0, credited)  # Stripe does not send an answered event again
    for item in [*early_events, None]:  # every event again, and the success again: nothing changes
        assert deliver(*(signed(item) if item else (body, signature))).status_code == 200
    assert account_of(owner) == (credited, 0, credited)
    payment.refresh_from_db()
    assert payment.credits_reversed == 5000 - credited
    assert payment.status == {5000: "succeeded", 3000: "partially_refunded", 0: "refunded"}[credited]


def test_dispute_funds_withdrawn_takes_credits_at_once_and_a_won_dispute_returns_them(paid, reconciled):
    owner, payment, intent = paid
    deliver(*signed(event("payment_intent.succeeded", intent)))
    withdrawn = dispute_event(payment, "charge.dispute.funds_withdrawn", "needs_response", "evt_w")
    assert deliver(*signed(withdrawn)).json()["outcome"] == "dispute funds withdrawn"
    assert account_of(owner) == (0, 0, 0)
    assert deliver(*signed(dispute_event(payment, "charge.dispute.closed", "won", "evt_c"))).status_code == 200
    deliver(*signed(withdrawn))  # a late redelivery of the withdrawal
    assert account_of(owner) == (5000, 0, 5000)
    payment.refresh_from_db()
    assert (payment.status, payment.credits_reversed, payment.amount_disputed) == ("succeeded", 0, 0)


def test_mismatch_says_mismatch_every_time(paid, reconciled):
    owner, payment, intent = paid
    body, signature = signed(event("payment_intent.succeeded", {**intent, "amount": 1, "amount_received": 1}))
    assert deliver(body, signature).json()["outcome"] == "mismatch"
    assert deliver(body, signature).json()["outcome"] == "mismatch"
    assert deliver(*signed(event("payment_intent.succeeded", intent))).json()["outcome"] == "mismatch"
    assert balance(owner.tenant) == 0


def test_reconcile_lists_a_paid_payment_that_was_not_credited(paid):
    from billing.selectors import payments_uncredited

    owner, payment, intent = paid
    deliver(*signed(event("payment_intent.succeeded", {**intent, "currency": "eur"})))
    assert [p.external_id for p in payments_uncredited()] == [payment.external_id]
    outcome = deliver(*signed(refund_event(payment, 500))).json()["outcome"]
    assert outcome == "refund (recorded: the payment is mismatch)" and balance(owner.tenant) == 0
    assert payments_uncredited() == []  # the money went back: nothing owed any more


# ---- Currencies are Stripe's lower-case codes; Stripe's refusals are a message (issue 19 item 3) ----


def test_pack_currency_typed_in_capitals_is_normalised_and_its_payment_is_credited(stripe_on, make_tenant):
    pack = CreditPack.objects.create(name="Caps", credits=5_000, price=500, currency=" USD ")
    pack.refresh_from_db()
    assert pack.currency == "usd"
    owner = make_tenant(credits=0)
    payment, _ = payment_start(tenant=owner.tenant, pack_id=pack.pk)
    assert payment.currency == "usd"
    pay_with_test_card(payment.external_id)
    intent = stripe_get(stripe_on, f"/v1/payment_intents/{payment.external_id}")
    assert deliver(*signed(event("payment_intent.succeeded", intent))).json()["outcome"] == "granted"
    assert balance(owner.tenant) == 5000


def test_payment_stored_in_capitals_before_the_fix_is_still_credited(paid):
    owner, payment, intent = paid
    Payment.objects.filter(pk=payment.pk).update(currency="USD")  # a row written by the old code
    assert deliver(*signed(event("payment_intent.succeeded", intent))).json()["outcome"] == "granted"
    assert balance(owner.tenant) == 5000


@pytest.mark.parametrize("currency", ["US", "dollars", "u$d", ""])
def test_pack_with_a_malformed_currency_is_refused(db, currency):
    from django.core.exceptions import ValidationError

    pack = CreditPack(name="Bad", credits=1, price=500, currency=currency)
    with pytest.raises(ValidationError):
        pack.full_clean()
    with pytest.raises(ValidationError):
        pack.save()


def test_pack_below_stripes_minimum_charge_is_refused_in_the_admin_form(db):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as refused:
        CreditPack(name="Tiny", credits=10, price=10, currency="usd").full_clean()
    assert "0.50" in str(refused.value) or "50" in str(refused.value)
    CreditPack(name="Ok", credits=10, price=50, currency="usd").full_clean()
    tiny = CreditPack.objects.create(name="Tiny", credits=10, price=10, currency="usd")  # (the ORM is not a form)
    from django.forms import modelform_factory

    toggle = modelform_factory(CreditPack, fields=["active"])({"active": ""}, instance=tiny)
    assert toggle.is_valid(), toggle.errors  # the admin can still switch a too-cheap pack off
    toggle.save()
    assert CreditPack.objects.get(pk=tiny.pk).active is False


def owner_client(owner) -> Client:
    from django.contrib.auth.models import User

    user = User.objects.create_user(f"olive{owner.tenant.pk}", "olive@example.com", "pw-orbit-tandem-42")
    Membership.objects.create(tenant=owner.tenant, user=user, role="owner")
    client = Client()
    client.force_login(user)
    return client


def test_pay_page_shows_stripes_refusal_as_a_message_not_a_500(stripe_on, make_tenant):
    owner = make_tenant(credits=0)
    pack = CreditPack.objects.create(name="Zero", credits=10, price=50, currency="isk")  # no minimum known here
    CreditPack.objects.filter(pk=pack.pk).update(price=0)  # Stripe (localstripe too) refuses amount 0
    response = owner_client(owner).post("/dashboard/billing/pay/", {"pack": pack.pk}, follow=True)
    assert response.status_code == 200
    page = response.content.decode()
    assert "Stripe refused this payment" in page and "Zero" in page
    assert not Payment.objects.filter(tenant=owner.tenant).exists()


def test_pay_page_refuses_a_pack_below_stripes_minimum_with_a_clear_message(stripe_on, make_tenant):
    owner = make_tenant(credits=0)
    pack = CreditPack.objects.create(name="Tiny", credits=10, price=50, currency="usd")
    CreditPack.objects.filter(pk=pack.pk).update(price=20)  # saved before the admin checked minimums
    response = owner_client(owner).post("/dashboard/billing/pay/", {"pack": pack.pk}, follow=True)
    assert response.status_code == 200
    assert "below Stripe&#x27;s minimum charge" in response.content.decode()
    assert not Payment.objects.filter(tenant=owner.tenant).exists()


@pytest.mark.django_db(transaction=True)
def test_refund_racing_the_success_event_never_leaves_the_refunded_credits(paid):
    from billing.selectors import ledger_reconcile

    owner, payment, intent = paid
    deliveries = [signed(event("payment_intent.succeeded", intent, "evt_s")), signed(refund_event(payment, 500))]
    barrier, answers = threading.Barrier(2), []

    def post(body_and_signature):
        try:
            barrier.wait()
            answers.append(deliver(*body_and_signature).status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=post, args=(d,)) for d in deliveries]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert answers == [200, 200]
    assert account_of(owner) == (0, 0, 0)
    payment.refresh_from_db()
    assert (payment.status, payment.credits_reversed) == ("refunded", 5000)
    assert ledger_reconcile() == []


@pytest.mark.django_db(transaction=True)
def test_refund_racing_new_holds_leaves_exactly_the_held_credits_owed(paid, parked):
    from rest_framework.test import APIClient

    from billing.selectors import credits_owed, ledger_reconcile

    owner, payment, intent = paid
    deliver(*signed(event("payment_intent.succeeded", intent)))
    barrier, answers = threading.Barrier(3), []

    def submit():
        try:
            barrier.wait()
            from tests.conftest import post_json

            answers.append(
                post_json(
                    APIClient(), "/v1/images/generations", GPT_HIGH, owner, HTTP_PREFER="respond-async"
                ).status_code
            )
        finally:
            connection.close()

    def refund():
        try:
            barrier.wait()
            answers.append(deliver(*signed(refund_event(payment, 500))).status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=submit), threading.Thread(target=submit), threading.Thread(target=refund)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(answers) in ([200, 202, 202], [200, 402, 402], [200, 202, 402])
    held = 2500 * answers.count(202)
    assert account_of(owner) == (0, held, -held)
    assert ledger_reconcile() == []
    assert [o.credits for o in credits_owed()] == ([held] if held else [])


def test_upgrade_lowercases_currencies_saved_before(paid):
    import importlib

    from django.apps import apps

    owner, payment, intent = paid
    CreditPack.objects.filter(pk=payment.pack_id).update(currency="USD")
    Payment.objects.filter(pk=payment.pk).update(currency="Usd")
    importlib.import_module("billing.migrations.0005_payment_reversals").currencies_lower(apps, None)
    assert CreditPack.objects.get(pk=payment.pack_id).currency == Payment.objects.get(pk=payment.pk).currency == "usd"
