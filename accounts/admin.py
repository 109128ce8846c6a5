from django.contrib import admin

from accounts.models import APIKey, Membership, Tenant


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ("name", "status", "moderation_level", "balance", "held", "created_at")
    list_filter = ("status", "moderation_level")
    search_fields = ("name",)
    inlines = [MembershipInline]

    @admin.display(description="balance (credits)")
    def balance(self, obj: Tenant) -> int:
        account = getattr(obj, "credit_account", None)
        return account.balance if account else 0

    @admin.display(description="held (credits)")
    def held(self, obj: Tenant) -> int:
        account = getattr(obj, "credit_account", None)
        return account.held if account else 0


@admin.register(APIKey)
class APIKeyAdmin(admin.ModelAdmin):
    list_display = ("prefix", "name", "tenant", "created", "last_used_at", "revoked", "expiry_date")
    list_filter = ("revoked", "tenant")
    search_fields = ("prefix", "name", "tenant__name")
    readonly_fields = ("prefix", "hashed_key", "created", "last_used_at")
    exclude = ("id",)

    def has_add_permission(self, request) -> bool:
        return False  # keys are created with `manage.py tenant_create` / key_create (shown once)
