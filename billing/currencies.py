"""Currencies as Stripe spells them: ISO 4217 codes in lower case ("usd", "eur", "jpy").

Every currency the platform stores or compares (credit packs, payments, the currency of
a webhook's PaymentIntent) goes through `currency_normalise`, so "USD", " usd " and
"usd" are one currency and a pack typed in capitals cannot turn every payment into a
mismatch. Amounts stay integers in the currency's minor unit (cents; yen for jpy)."""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError

_CODE = re.compile(r"^[a-z]{3}$")

# Stripe's minimum charge per currency, in minor units
# (https://docs.stripe.com/currencies#minimum-and-maximum-charge-amounts). A charge in
# another currency must still convert to at least the minimum of the account's
# settlement currency: Stripe's own refusal (shown on the pay page) remains the last word.
STRIPE_MINIMUM_CHARGE = {
    "usd": 50,
    "aed": 200,
    "aud": 50,
    "bgn": 100,
    "brl": 50,
    "cad": 50,
    "chf": 50,
    "czk": 1500,
    "dkk": 250,
    "eur": 50,
    "gbp": 30,
    "hkd": 400,
    "huf": 17500,
    "inr": 50,
    "jpy": 50,
    "mxn": 1000,
    "myr": 200,
    "nok": 300,
    "nzd": 50,
    "pln": 200,
    "ron": 200,
    "sek": 300,
    "sgd": 50,
    "thb": 1000,
}
# Currencies without a minor unit at Stripe (amounts are whole units): for display only.
ZERO_DECIMAL = {
    "bif",
    "clp",
    "djf",
    "gnf",
    "jpy",
    "kmf",
    "krw",
    "mga",
    "pyg",
    "rwf",
    "ugx",
    "vnd",
    "vuv",
    "xaf",
    "xof",
    "xpf",
}


def currency_normalise(value: object) -> str:
    """`value` stripped and in lower case (Stripe's spelling); no validation."""
    return str(value or "").strip().lower()


def currency_validate(value: str) -> None:
    """ValidationError unless `value` is three letters (an ISO 4217 code; Stripe checks
    that it supports it when a payment starts). Used as the model field's validator."""
    if not _CODE.match(currency_normalise(value)):
        raise ValidationError(
            "Enter a three-letter ISO 4217 currency code, such as usd or eur.", code="invalid_currency"
        )


def amount_display(*, amount: int, currency: str) -> str:
    """Minor units as a human amount: 50 usd -> "0.50 USD", 50 jpy -> "50 JPY"."""
    code = currency_normalise(currency)
    if code in ZERO_DECIMAL:
        return f"{amount} {code.upper()}"
    return f"{amount // 100}.{amount % 100:02d} {code.upper()}"


def minimum_charge_problem(*, amount: int, currency: str) -> str | None:
    """A sentence when `amount` minor units is below Stripe's minimum charge for the
    currency (known currencies only), else None."""
    code = currency_normalise(currency)
    minimum = STRIPE_MINIMUM_CHARGE.get(code)
    if minimum is None or amount >= minimum:
        return None
    return (
        f"{amount_display(amount=amount, currency=code)} is below Stripe's minimum charge of "
        f"{amount_display(amount=minimum, currency=code)}."
    )
