from django.contrib import admin

from billing.models import CreditAccount, Hold, LedgerEntry, Price, UsageRecord


class ReadOnlyAdmin(admin.ModelAdmin):
    """Money rows are written by services only; the admin shows them."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ("id", "tenant", "kind", "amount", "held_delta", "balance_after", "held_after", "job", "actor",
                    "note", "created_at")
    list_filter = ("kind", "tenant", "created_at")
    search_fields = ("tenant__name", "actor", "note", "idempotency_key")
    date_hierarchy = "created_at"
    list_select_related = ("tenant",)


@admin.register(CreditAccount)
class CreditAccountAdmin(ReadOnlyAdmin):
    list_display = ("tenant", "balance", "held", "updated_at")


@admin.register(Hold)
class HoldAdmin(ReadOnlyAdmin):
    list_display = ("job", "tenant", "amount", "captured", "status", "created_at", "settled_at")
    list_filter = ("status", "tenant")


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "tenant", "api_key", "model", "endpoint", "n", "images", "credits_charged",
                    "gpu_ms", "outcome", "error_code")
    list_filter = ("outcome", "model", "tenant", ("api_key", admin.RelatedOnlyFieldListFilter), "created_at",
                   "endpoint")
    search_fields = ("tenant__name", "api_key__prefix", "error_code")
    date_hierarchy = "created_at"
    list_select_related = ("tenant", "api_key")
    change_list_template = "admin/billing/usagerecord/change_list.html"

    def changelist_view(self, request, extra_context=None):
        """The filtered records also drawn as images and credits per day, and summed per model."""
        from datetime import timedelta

        from django.db.models import Count, Sum
        from django.db.models.functions import TruncDate
        from django.utils import timezone

        from core.charts import bar_chart

        response = super().changelist_view(request, extra_context)
        changelist = getattr(response, "context_data", {}).get("cl") if hasattr(response, "context_data") else None
        if changelist is None:
            return response
        records = changelist.queryset.order_by()
        end = timezone.now().date()
        start = end - timedelta(days=29)
        per_day = [{"day": row["day"].isoformat(), "images": row["images"] or 0, "credits": row["credits"] or 0}
                   for row in records.filter(created_at__date__gte=start).annotate(day=TruncDate("created_at"))
                   .values("day").annotate(images=Sum("images"), credits=Sum("credits_charged"))]
        response.context_data["usage_charts"] = [bar_chart(per_day, start=start, days=30, field=field)
                                                 for field in ("images", "credits")]
        response.context_data["usage_per_model"] = list(
            records.values("model").annotate(requests=Count("id"), images=Sum("images"), credits=Sum("credits_charged"),
                                             gpu_ms=Sum("gpu_ms")).order_by("model"))
        return response


@admin.register(Price)
class PriceAdmin(admin.ModelAdmin):
    """Credits per image ('' = any kind, size or quality; the most specific row wins).
    A model without a matching row is refused unless it is marked free."""

    list_display = ("model", "kind", "size", "quality", "credits_per_image", "model_is_free")
    list_filter = ("model", "model__is_free")
    list_select_related = ("model",)

    @admin.display(description="model is free", boolean=True, ordering="model__is_free")
    def model_is_free(self, obj: Price) -> bool:
        return obj.model.is_free
