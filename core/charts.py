"""Server-rendered SVG bar charts (no JavaScript, no CDN), shared by the tenant
dashboard and the operator admin."""

from __future__ import annotations

from datetime import date, timedelta


def bar_chart(rows: list[dict], *, start: date, days: int, field: str, width: int = 720, height: int = 160) -> dict:
    """Bars for a server-rendered SVG: one slot per day, zero-filled."""
    by_day = {row["day"]: row[field] for row in rows}
    values = [(start + timedelta(days=i), by_day.get((start + timedelta(days=i)).isoformat(), 0)) for i in range(days)]
    peak = max([v for _, v in values] + [1])
    slot = width / days
    bars = []
    for i, (day, value) in enumerate(values):
        h = round((height - 20) * value / peak, 1)
        bars.append(
            {
                "x": round(i * slot + 1, 1),
                "y": round(height - 16 - h, 1),
                "w": round(slot - 2, 1),
                "h": h,
                "day": day.isoformat(),
                "value": value,
                "label": day.day if day.day in (1, 15) or i == 0 else "",
            }
        )
    return {"bars": bars, "peak": peak, "width": width, "height": height, "field": field}
