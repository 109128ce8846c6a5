from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.http import HttpRequest
from django.template.response import TemplateResponse

from accounts.admin import TenantAdmin as AccountsTenantAdmin
from accounts.models import Tenant
from billing.errors import InvalidAmount
from billing.models import CreditAccount, Hold, LedgerEntry, Price, UsageRecord
from billing.services import credits_grant


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
    list_display = (
        "id",
        "tenant",
        "kind",
        "amount",
        "held_delta",
        "balance_after",
        "held_after",
        "job",
        "actor",
        "note",
        "created_at",
    )
    list_filter = ("kind", "tenant", "created_at")
    search_fields = ("tenant__name", "actor", "note", "idempotency_key")
    date_hierarchy = "created_at"
    list_select_related = ("tenant",)


@admin.register(CreditAccount)
class CreditAccountAdmin(ReadOnlyAdmin):
    """`owed`: credits a refund or dispute took back beyond the balance (spent or held);
    the tenant can spend nothing until later credits cover it (docs/operations.md)."""

    list_display = ("tenant", "balance", "held", "owed", "updated_at")

    @admin.display(description="owed")
    def owed(self, obj: CreditAccount) -> int:
        return obj.owed


@admin.register(Hold)
class HoldAdmin(ReadOnlyAdmin):
    list_display = ("job", "tenant", "amount", "captured", "status", "created_at", "settled_at")
    list_filter = ("status", "tenant")


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = (
        "created_at",
        "tenant",
        "api_key",
        "model",
        "endpoint",
        "n",
        "images",
        "credits_charged",
        "gpu_ms",
        "outcome",
        "error_code",
        "output_action",
        "images_withheld",
    )
    list_filter = (
        "outcome",
        "output_action",
        "model",
        "tenant",
        ("api_key", admin.RelatedOnlyFieldListFilter),
        "created_at",
        "endpoint",
    )
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
        per_day = [
            {"day": row["day"].isoformat(), "images": row["images"] or 0, "credits": row["credits"] or 0}
            for row in records.filter(created_at__date__gte=start)
            .annotate(day=TruncDate("created_at"))
            .values("day")
            .annotate(images=Sum("images"), credits=Sum("credits_charged"))
        ]
        response.context_data["usage_charts"] = [
            bar_chart(per_day, start=start, days=30, field=field) for field in ("images", "credits")
        ]
        response.context_data["usage_per_model"] = list(
            records.values("model")
            .annotate(requests=Count("id"), images=Sum("images"), credits=Sum("credits_charged"), gpu_ms=Sum("gpu_ms"))
            .order_by("model")
        )
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


# ---- Self-service: packs, payments, vouchers ----
from billing.models import BalanceAlert, CreditPack, Payment, Voucher, VoucherBatch, VoucherRedemption  # noqa: E402


@admin.register(CreditPack)
class CreditPackAdmin(admin.ModelAdmin):
    """What the billing page sells: `price` is in the currency's minor unit (cents)."""

    list_display = ("name", "credits", "price", "currency", "active")
    list_filter = ("active", "currency")
    list_editable = ("active",)


class UnrecoveredFilter(admin.SimpleListFilter):
    """Payments whose refund or lost dispute left credits out of the ledger (only an
    earlier version did; billing_reconcile lists them)."""

    title = "credits unrecovered"
    parameter_name = "unrecovered"

    def lookups(self, request, model_admin):
        return (("yes", "some credits unrecovered"), ("no", "none"))

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(credits_unrecovered__gt=0)
        if self.value() == "no":
            return queryset.filter(credits_unrecovered=0)
        return queryset


@admin.register(Payment)
class PaymentAdmin(ReadOnlyAdmin):
    """Card payments. `credits reversed`: credits taken back by refunds and disputes (all
    of them: what was spent or held became a debt, see the account's `owed`).
    `credits unrecovered`: credits an earlier version left out of the ledger."""

    list_display = (
        "created_at",
        "tenant",
        "external_id",
        "amount",
        "currency",
        "credits",
        "status",
        "amount_refunded",
        "amount_disputed",
        "dispute_status",
        "credits_reversed",
        "credits_unrecovered",
        "receipt",
    )
    list_filter = ("status", "provider", "currency", UnrecoveredFilter)
    search_fields = ("external_id", "tenant__name")
    list_select_related = ("tenant",)
    date_hierarchy = "created_at"

    @admin.display(description="receipt")
    def receipt(self, obj: Payment) -> str:
        from django.utils.html import format_html

        return format_html('<a href="{}">receipt</a>', obj.receipt_url) if obj.receipt_url else "—"


class VoucherBatchForm(forms.Form):
    credits = forms.IntegerField(min_value=1, help_text="Credits per redemption.")
    count = forms.IntegerField(min_value=1, max_value=10_000, initial=10, help_text="How many codes.")
    max_uses = forms.IntegerField(min_value=1, initial=1, help_text="Redemptions per code (each tenant once).")
    expires_at = forms.DateTimeField(required=False, help_text="Optional, e.g. 2026-12-31 23:59.")
    note = forms.CharField(max_length=200, required=False)


@admin.register(VoucherBatch)
class VoucherBatchAdmin(admin.ModelAdmin):
    """Adding a batch generates its codes and downloads them as CSV, once: only hashes
    are stored, so the codes cannot be shown again."""

    list_display = ("id", "created_at", "count", "credits", "max_uses", "expires_at", "note", "created_by", "redeemed")
    readonly_fields = ("credits", "max_uses", "expires_at", "count", "created_by", "created_at")

    @admin.display(description="redemptions")
    def redeemed(self, obj: VoucherBatch) -> int:
        return VoucherRedemption.objects.filter(voucher__batch=obj).count()

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def add_view(self, request, form_url="", extra_context=None):
        import csv
        import io

        from django.http import HttpResponse
        from django.template.response import TemplateResponse

        from billing.vouchers import vouchers_create

        if not self.has_add_permission(request):
            from django.core.exceptions import PermissionDenied

            raise PermissionDenied
        form = VoucherBatchForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            batch, codes = vouchers_create(
                credits=data["credits"],
                count=data["count"],
                max_uses=data["max_uses"],
                expires_at=data["expires_at"],
                note=data["note"] or "",
                created_by=request.user.get_username(),
            )
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            writer.writerow(["code", "credits", "max_uses", "expires_at", "batch", "note"])
            for code in codes:
                writer.writerow(
                    [
                        code,
                        batch.credits,
                        batch.max_uses,
                        batch.expires_at.isoformat() if batch.expires_at else "",
                        batch.pk,
                        batch.note,
                    ]
                )
            response = HttpResponse(buffer.getvalue(), content_type="text/csv; charset=utf-8")
            response["Content-Disposition"] = f'attachment; filename="vouchers-batch-{batch.pk}.csv"'
            response["Cache-Control"] = "no-store"
            return response
        return TemplateResponse(
            request,
            "admin/billing/voucherbatch/generate.html",
            {
                **self.admin_site.each_context(request),
                "title": "Generate voucher codes",
                "form": form,
                "opts": self.model._meta,
            },
        )


@admin.register(Voucher)
class VoucherAdmin(ReadOnlyAdmin):
    list_display = ("prefix", "batch", "credits", "uses", "max_uses", "expires_at", "note")
    list_filter = ("batch",)
    search_fields = ("prefix", "note")


@admin.register(VoucherRedemption)
class VoucherRedemptionAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "tenant", "voucher", "credits", "redeemed_by")
    search_fields = ("tenant__name", "voucher__prefix")
    list_select_related = ("tenant", "voucher")


@admin.register(BalanceAlert)
class BalanceAlertAdmin(admin.ModelAdmin):
    list_display = ("tenant", "threshold", "armed", "last_fired_at", "last_sent_at")


class GrantCreditsForm(forms.Form):
    amount = forms.IntegerField(help_text="Credits; negative removes (never more than is available).")
    note = forms.CharField(max_length=500, required=False, help_text="Shown in the ledger, e.g. 'invoice 42'.")


# The tenant admin is accounts' (accounts.admin.TenantAdmin) plus the "grant credits"
# action, which writes the ledger: billing sits above accounts in the layers (see
# tests/test_import_rules.py), so the action lives here and replaces the registration
# (billing comes after accounts in INSTALLED_APPS, so its admin module loads later).
admin.site.unregister(Tenant)


@admin.register(Tenant)
class TenantAdmin(AccountsTenantAdmin):
    """accounts' tenant admin with the "Grant credits to the selected tenants" action."""

    actions = ["grant_credits"]

    @admin.action(description="Grant credits to the selected tenants", permissions=["change"])
    def grant_credits(self, request: HttpRequest, queryset):
        """Asks for an amount and a note on an intermediate page, then writes one ledger
        row per tenant through billing.services.credits_grant."""
        form = GrantCreditsForm(request.POST if "apply" in request.POST else None)
        if "apply" in request.POST and form.is_valid():
            amount, note = form.cleaned_data["amount"], form.cleaned_data["note"]
            for tenant in queryset:
                try:
                    entry = credits_grant(tenant=tenant, amount=amount, actor=request.user.get_username(), note=note)
                except InvalidAmount as exc:
                    self.message_user(request, f"{tenant.name}: {exc.message}", messages.ERROR)
                else:
                    self.message_user(
                        request,
                        f"{tenant.name}: {amount:+d} credits, balance now {entry.balance_after}.",
                        messages.SUCCESS,
                    )
            return None
        return TemplateResponse(
            request,
            "admin/grant_credits.html",
            {
                **self.admin_site.each_context(request),
                "title": "Grant credits",
                "form": form,
                "tenants": queryset,
                "opts": self.model._meta,
                "action_checkbox_name": ACTION_CHECKBOX_NAME,
            },
        )
