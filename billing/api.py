"""Customer endpoints for money: balance and usage."""

from __future__ import annotations

import csv
import io
import re
from datetime import date

from django.http import HttpResponse
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.selectors import USAGE_COLUMNS, USAGE_GROUPS, usage_summary, usage_totals
from billing.services import account_for
from core.errors import InvalidRequest
from core.schema import AUTH_ERRORS, errors


class BalanceView(APIView):
    """GET /v1/balance: the caller's tenant balance in credits."""

    def get(self, request: Request) -> Response:
        account = account_for(tenant=request.auth.tenant)
        return Response(
            {
                "object": "balance",
                "balance": account.balance,
                "held": account.held,
                "available": account.available,
                "currency": "credits",
            }
        )


USAGE_FORMATS = ("json", "csv")
# The widest span one request may cover: `end - start` in days.
USAGE_MAX_DAYS = 366
USAGE_DEFAULT_DAYS = 30
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _date_param(request: Request, name: str) -> date | None:
    """A `YYYY-MM-DD` query parameter (ASCII digits only), or None when absent or empty;
    anything else is a 400 naming it, never an exception the caller did not cause."""
    raw = request.query_params.get(name)
    if not raw:
        return None
    if _ISO_DATE.fullmatch(raw):
        try:
            return date.fromisoformat(raw)
        except ValueError:
            pass
    raise InvalidRequest(f"'{name}' must be a date like 2026-11-21.", param=name, code="invalid_value")


def _choice_param(request: Request, name: str, choices: tuple[str, ...], default: str) -> str:
    """One of `choices`; absent or empty is the default, anything else a 400 naming it."""
    value = request.query_params.get(name) or default
    if value not in choices:
        raise InvalidRequest(f"'{name}' must be one of {', '.join(choices)}.", param=name, code="invalid_value")
    return value


def _days_before(day: date, days: int) -> date:
    """`day - days`, stopping at date.min instead of overflowing."""
    return date.fromordinal(max(1, day.toordinal() - days))


class UsageView(APIView):
    """GET /v1/usage?start=&end=&group_by=day|model|key[&format=csv]: billing.selectors.USAGE_COLUMNS
    per group, and their totals (docs/api.md)."""

    def get(self, request: Request):
        end = _date_param(request, "end") or timezone.now().date()
        start = _date_param(request, "start") or _days_before(end, USAGE_DEFAULT_DAYS - 1)
        if start > end:
            raise InvalidRequest("'start' must not be after 'end'.", param="start", code="invalid_value")
        if (end - start).days > USAGE_MAX_DAYS:
            raise InvalidRequest(
                f"The range may span at most {USAGE_MAX_DAYS} days.", param="start", code="invalid_value"
            )
        group_by = _choice_param(request, "group_by", USAGE_GROUPS, "day")
        output = _choice_param(request, "format", USAGE_FORMATS, "json")
        rows = usage_summary(tenant=request.auth.tenant, start=start, end=end, group_by=group_by)
        if output == "csv":
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=[group_by, *USAGE_COLUMNS])
            writer.writeheader()
            writer.writerows(rows)
            response = HttpResponse(buffer.getvalue(), content_type="text/csv; charset=utf-8")
            response["Content-Disposition"] = f'attachment; filename="usage-{start}-{end}-{group_by}.csv"'
            return response
        totals = usage_totals(rows)
        return Response(
            {
                "object": "usage",
                "start": start.isoformat(),
                "end": end.isoformat(),
                "group_by": group_by,
                "currency": "credits",
                "totals": totals,
                "data": rows,
            }
        )


class RedeemRequest(serializers.Serializer):
    code = serializers.CharField(max_length=100, help_text="The voucher code, as printed (any case; dashes optional).")


class RedeemResponse(serializers.Serializer):
    object = serializers.CharField(default="credit_redemption")
    credits = serializers.IntegerField(help_text="Credits granted by this redemption.")
    balance = serializers.IntegerField(help_text="The balance after it, in credits.")
    available = serializers.IntegerField(help_text="Balance minus credits held by jobs in flight.")
    currency = serializers.CharField(default="credits")


class RedeemView(APIView):
    """POST /v1/credits/redeem {"code": "..."}: a voucher's credits for the caller's tenant."""

    @extend_schema(
        request=RedeemRequest,
        responses={200: RedeemResponse, **errors(400, *AUTH_ERRORS)},
        operation_id="credits_redeem",
        summary="Redeem a voucher code",
        tags=["billing"],
        description="400 `invalid_voucher` (counted: 429 `voucher_attempts_exceeded` past the limit), "
        "`voucher_expired`, `voucher_used_up` or `voucher_already_redeemed`.",
    )
    def post(self, request: Request) -> Response:
        from billing.vouchers import voucher_redeem

        data = RedeemRequest(data=request.data)
        data.is_valid(raise_exception=True)
        key = request.auth
        done = voucher_redeem(
            tenant=key.tenant,
            code=data.validated_data["code"],
            actor=f"key:{key.prefix}",
        )
        return Response(
            RedeemResponse(
                {
                    "object": "credit_redemption",
                    "credits": done.redemption.credits,
                    "balance": done.balance,
                    "available": done.available,
                    "currency": "credits",
                }
            ).data
        )
