"""Customer endpoints for money: balance and usage."""
from __future__ import annotations

import csv
import io
import re
from datetime import date

from django.http import HttpResponse
from django.utils import timezone
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.selectors import USAGE_GROUPS, usage_summary
from billing.services import account_for
from core.errors import InvalidRequest


class BalanceView(APIView):
    """GET /v1/balance: the caller's tenant balance in credits."""

    def get(self, request: Request) -> Response:
        account = account_for(tenant=request.auth.tenant)
        return Response({"object": "balance", "balance": account.balance, "held": account.held,
                         "available": account.available, "currency": "credits"})


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
    """GET /v1/usage?start=&end=&group_by=day|model|key[&format=csv]"""

    def get(self, request: Request):
        end = _date_param(request, "end") or timezone.now().date()
        start = _date_param(request, "start") or _days_before(end, USAGE_DEFAULT_DAYS - 1)
        if start > end:
            raise InvalidRequest("'start' must not be after 'end'.", param="start", code="invalid_value")
        if (end - start).days > USAGE_MAX_DAYS:
            raise InvalidRequest(f"The range may span at most {USAGE_MAX_DAYS} days.", param="start",
                                 code="invalid_value")
        group_by = _choice_param(request, "group_by", USAGE_GROUPS, "day")
        output = _choice_param(request, "format", USAGE_FORMATS, "json")
        rows = usage_summary(tenant=request.auth.tenant, start=start, end=end, group_by=group_by)
        if output == "csv":
            buffer = io.StringIO()
            columns = [group_by, "requests", "succeeded", "failed", "refused", "images", "pixels", "credits"]
            writer = csv.DictWriter(buffer, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
            response = HttpResponse(buffer.getvalue(), content_type="text/csv; charset=utf-8")
            response["Content-Disposition"] = f'attachment; filename="usage-{start}-{end}-{group_by}.csv"'
            return response
        totals = {k: sum(r[k] for r in rows) for k in ("requests", "images", "pixels", "credits")}
        return Response({"object": "usage", "start": start.isoformat(), "end": end.isoformat(),
                         "group_by": group_by, "currency": "credits", "totals": totals, "data": rows})
