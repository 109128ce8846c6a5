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


@admin.register(Price)
class PriceAdmin(admin.ModelAdmin):
    list_display = ("model", "kind", "size", "quality", "credits_per_image")
    list_filter = ("model",)
