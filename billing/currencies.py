"""Currencies as Stripe spells them: ISO 4217 codes in lower case ("usd", "eur", "jpy").

Every currency the platform stores or compares (credit packs, payments, the currency of
a webhook's PaymentIntent) goes through `currency_normalise`, so "USD", " usd " and
"usd" are one currency and a pack typed in capitals cannot turn every payment into a
mismatch. Amounts stay integers in the currency's minor unit (cents; yen for jpy)."""

from __future__ import annotations

import re
from decimal import Decimal

from babel.core import Locale, UnknownLocaleError
from babel.numbers import format_currency
from django.core.exceptions import ValidationError
from django.utils import translation

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


# Stripe's three-decimal currencies (minor unit = 1/1000); every other currency not in
# ZERO_DECIMAL has cents (https://docs.stripe.com/currencies#three-decimal).
THREE_DECIMAL = {"bhd", "jod", "kwd", "omr", "tnd"}


def minor_unit_exponent(currency: str) -> int:
    """Decimal places of the currency's minor unit as Stripe counts them: 0 (jpy), 3
    (kwd) or 2 (everything else)."""
    code = currency_normalise(currency)
    if code in ZERO_DECIMAL:
        return 0
    return 3 if code in THREE_DECIMAL else 2


def _babel_locale(locale: str | None) -> Locale:
    """The Babel locale for a Django language code ("en-us", "de"); the active
    language when None; en_US when Babel does not know it."""
    try:
        return Locale.parse(translation.to_locale(locale or translation.get_language() or "en-us"))
    except (UnknownLocaleError, ValueError):
        return Locale.parse("en_US")


def money_format(minor_units: int, currency: str, locale: str | None = None) -> str:
    """An integer amount in the currency's minor unit, as a person reads it in
    `locale` (a Django language code; the active language when None), by Babel/CLDR:
    1000 usd -> "$10.00", 1000 eur in "de" -> "10,00 €", 500 jpy -> "¥500". Exact
    (Decimal, no floats) and never rounded."""
    code = currency_normalise(currency)
    amount = Decimal(int(minor_units)).scaleb(-minor_unit_exponent(code))
    return format_currency(amount, code.upper(), locale=_babel_locale(locale), decimal_quantization=False)


def decimal_money_format(amount: Decimal, currency: str, locale: str | None = None) -> str:
    """A Decimal amount in whole units (a price per image may be a fraction of a cent:
    Decimal("0.016") usd -> "$0.016"), formatted like `money_format`: at least the
    currency's usual decimals, more when the amount has them."""
    code = currency_normalise(currency)
    return format_currency(amount, code.upper(), locale=_babel_locale(locale), decimal_quantization=False)


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
    """Minor units as a plain amount for messages and logs (the dashboard uses
    `money_format`): 50 usd -> "0.50 USD", 50 jpy -> "50 JPY", 1234 kwd -> "1.234 KWD"."""
    code = currency_normalise(currency)
    return f"{Decimal(int(amount)).scaleb(-minor_unit_exponent(code)):f} {code.upper()}"


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
