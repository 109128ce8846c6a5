"""Customer endpoints for money: balance and usage."""
from __future__ import annotations

import csv
import io
from datetime import date, timedelta

from django.http import HttpResponse
from django.utils import timezone
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import InvalidRequest
from billing.selectors import USAGE_GROUPS, usage_summary
from billing.services import account_for


class BalanceView(APIView):
    """GET /v1/balance: the caller's tenant balance in credits."""

    def get(self, request: Request) -> Response:
        account = account_for(tenant=request.auth.tenant)
        return Response({"object": "balance", "balance": account.balance, "held": account.held,
                         "available": account.available, "currency": "credits"})


def _date_param(request: Request, name: str, default: date) -> date:
    raw = request.query_params.get(name)
    if not raw:
        return default
    try:
        return date.fromisoformat(raw[:10])
    except ValueError:
        raise InvalidRequest(f"'{name}' must be a date like 2026-11-21.", param=name, code="invalid_value") from None


class UsageView(APIView):
    """GET /v1/usage?start=&end=&group_by=day|model|key[&format=csv]"""

    def get(self, request: Request):
        today = timezone.now().date()
        end = _date_param(request, "end", today)
        start = _date_param(request, "start", end - timedelta(days=29))
        if start > end:
            raise InvalidRequest("'start' must not be after 'end'.", param="start", code="invalid_value")
        if (end - start).days > 366:
            raise InvalidRequest("The range may span at most 366 days.", param="start", code="invalid_value")
        group_by = request.query_params.get("group_by", "day")
        if group_by not in USAGE_GROUPS:
            raise InvalidRequest(f"'group_by' must be one of {', '.join(USAGE_GROUPS)}.", param="group_by",
                                 code="invalid_value")
        rows = usage_summary(tenant=request.auth.tenant, start=start, end=end, group_by=group_by)
        if request.query_params.get("format") == "csv":
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
