"""Customer endpoints for money, one ViewSet on the /v1 router (platform/api_router.py):
GET /v1/balance, GET /v1/usage and POST /v1/credits/redeem, in integer credits. Each
action carries its own OpenAPI schema (billing/serializers.py)."""

from __future__ import annotations

import csv
import io
import re
from datetime import date

from django.http import HttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from billing.selectors import USAGE_COLUMNS, USAGE_GROUPS, usage_summary, usage_totals
from billing.serializers import BalanceSerializer, RedeemRequest, RedeemResponse, UsageSerializer
from billing.services import account_for
from core.errors import InvalidRequest
from core.schema import AUTH_ERRORS, errors

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


class BillingViewSet(viewsets.ViewSet):
    """The caller's tenant's money, for an API key: its balance, its usage and voucher
    redemption. Registered on the /v1 router with an empty prefix, so each action's
    `url_path` is its whole path."""

    @extend_schema(
        summary="The tenant's balance in credits",
        tags=["billing"],
        operation_id="v1_balance_retrieve",
        responses={200: BalanceSerializer, **errors(*AUTH_ERRORS)},
    )
    @action(detail=False, methods=["get"], url_path="balance", url_name="balance")
    def balance(self, request: Request) -> Response:
        """GET /v1/balance: the caller's tenant balance in credits."""
        account = account_for(tenant=request.auth.tenant)
        return Response(
            BalanceSerializer(
                {
                    "object": "balance",
                    "balance": account.balance,
                    "held": account.held,
                    "available": account.available,
                    "currency": "credits",
                }
            ).data
        )

    @extend_schema(
        summary="Usage grouped by day, model or key",
        tags=["billing"],
        operation_id="v1_usage_retrieve",
        parameters=[
            OpenApiParameter("start", OpenApiTypes.DATE, required=False, description="default: 29 days before end"),
            OpenApiParameter("end", OpenApiTypes.DATE, required=False, description="default: today (UTC)"),
            OpenApiParameter("group_by", OpenApiTypes.STR, enum=list(USAGE_GROUPS), required=False),
            OpenApiParameter("format", OpenApiTypes.STR, enum=list(USAGE_FORMATS), required=False),
        ],
        responses={
            (200, "application/json"): OpenApiResponse(UsageSerializer, description="JSON (the default)"),
            (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="CSV, with format=csv"),
            **errors(400, *AUTH_ERRORS),
        },
    )
    @action(detail=False, methods=["get"], url_path="usage", url_name="usage")
    def usage(self, request: Request):
        """GET /v1/usage?start=&end=&group_by=day|model|key[&format=csv]: billing.selectors.USAGE_COLUMNS
        per group, and their totals (docs/api.md)."""
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
        return Response(
            {
                "object": "usage",
                "start": start.isoformat(),
                "end": end.isoformat(),
                "group_by": group_by,
                "currency": "credits",
                "totals": usage_totals(rows),
                "data": rows,
            }
        )

    @extend_schema(
        request=RedeemRequest,
        responses={200: RedeemResponse, **errors(400, *AUTH_ERRORS)},
        operation_id="credits_redeem",
        summary="Redeem a voucher code",
        tags=["billing"],
        description="400 `invalid_voucher` (counted: 429 `voucher_attempts_exceeded` past the limit), "
        "`voucher_expired`, `voucher_used_up` or `voucher_already_redeemed`.",
    )
    @action(detail=False, methods=["post"], url_path="credits/redeem", url_name="redeem")
    def redeem(self, request: Request) -> Response:
        """POST /v1/credits/redeem {"code": "..."}: a voucher's credits for the caller's tenant."""
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
