"""`{% load money %}`: amounts shown in their currency (Babel), never by string slicing.

    {{ pack.price|money:pack.currency }}   1000, "usd" -> "$10.00" (integer minor units)

The locale is the active language (LANGUAGE_CODE, or the request's with LocaleMiddleware).
"""

from __future__ import annotations

from django import template

from billing.currencies import money_format

register = template.Library()


@register.filter(name="money")
def money(minor_units, currency: str) -> str:
    """An integer amount in `currency`'s minor unit as money ("$10.00"); '' for None."""
    if minor_units is None or minor_units == "":
        return ""
    return money_format(int(minor_units), currency)
