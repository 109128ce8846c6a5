from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest

from accounts.models import APIKey, Membership, Tenant
from accounts.services import api_key_create, api_key_revoke, key_models_validate
from core.errors import APIError

# The admin index links to the operator overview (/admin/overview/, see urls.py).
admin.site.index_template = "admin/platform_index.html"


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ("name", "status", "moderation_level", "output_moderation", "balance", "held", "created_at")
    list_filter = ("status", "moderation_level", "output_moderation")
    search_fields = ("name",)
    inlines = [MembershipInline]
    # billing/admin.py registers a subclass with the "grant credits" action (billing
    # sits above accounts; accounts imports no billing code).

    def save_formset(self, request, form, formset, change) -> None:
        """A member deleted in the inline leaves through `membership_remove`: the keys
        they made are revoked with them (the last owner stays, with an error)."""
        if formset.model is not Membership:
            return super().save_formset(request, form, formset, change)
        from accounts.services import membership_remove

        instances = formset.save(commit=False)  # deletions are left to us
        for membership in formset.deleted_objects:
            try:
                revoked = membership_remove(membership=membership)
            except APIError as exc:
                self.message_user(request, f"{membership.user}: {exc.message}", messages.ERROR)
            else:
                self.message_user(request, f"{membership.user} removed; {len(revoked)} key(s) they made revoked.")
        for membership in instances:
            membership.save()
        formset.save_m2m()

    @admin.display(description="balance (credits)")
    def balance(self, obj: Tenant) -> int:
        account = getattr(obj, "credit_account", None)
        return account.balance if account else 0

    @admin.display(description="held (credits)")
    def held(self, obj: Tenant) -> int:
        account = getattr(obj, "credit_account", None)
        return account.held if account else 0


class APIKeyForm(forms.ModelForm):
    class Meta:
        model = APIKey
        fields = ("name", "expiry_date", "allowed_models", "rpm_limit", "monthly_credit_limit", "is_admin")

    def clean_allowed_models(self) -> list[str]:
        """The same check as /v1/keys and `key_create` (accounts.services)."""
        try:
            return key_models_validate(model_ids=self.cleaned_data.get("allowed_models") or [])
        except APIError as exc:
            raise forms.ValidationError(exc.message) from exc


class APIKeyAddForm(APIKeyForm):
    class Meta:
        model = APIKey
        fields = ("tenant", "name", "expiry_date", "allowed_models", "rpm_limit", "monthly_credit_limit", "is_admin")


@admin.register(APIKey)
class APIKeyAdmin(admin.ModelAdmin):
    list_display = ("prefix", "name", "tenant", "created", "last_used_at", "revoked", "expiry_date", "is_admin")
    list_filter = ("revoked", "is_admin", "tenant")
    search_fields = ("prefix", "name", "tenant__name")
    exclude = ("id",)
    form = APIKeyForm
    actions = ["revoke_keys"]

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = APIKeyAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):
        if obj is None:
            return list(APIKeyAddForm.Meta.fields)
        return [
            "tenant",
            "prefix",
            "name",
            "created",
            "created_by",
            "parent",
            "last_used_at",
            "revoked",
            "expiry_date",
            "allowed_models",
            "rpm_limit",
            "monthly_credit_limit",
            "is_admin",
        ]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        # Revoking is final (an action); the hash never changes once shown.
        return ("tenant", "prefix", "created", "created_by", "parent", "last_used_at", "revoked")

    def save_model(self, request, obj: APIKey, form, change: bool) -> None:
        if change:
            return super().save_model(request, obj, form, change)
        data = form.cleaned_data
        key, raw = api_key_create(
            tenant=data["tenant"],
            name=data.get("name") or "default",
            created_by=request.user.get_username(),
            created_by_user=request.user,
            rpm_limit=data.get("rpm_limit"),
            expiry_date=data.get("expiry_date"),
            allowed_models=data.get("allowed_models") or [],
            monthly_credit_limit=data.get("monthly_credit_limit"),
            is_admin=bool(data.get("is_admin")),
        )
        obj.pk, obj.prefix, obj.hashed_key, obj.created = key.pk, key.prefix, key.hashed_key, key.created
        obj._state.adding = False
        # Shown once, on the next page only: the raw key is stored nowhere.
        messages.warning(request, f"New API key for {key.tenant.name} (copy it now, it is not shown again): {raw}")

    def message_user(self, request, message, level=messages.INFO, *args, **kwargs):
        # Keep the admin's own "was added successfully" line out of the way of the key.
        if "was added successfully" in str(message):
            return None
        return super().message_user(request, message, level, *args, **kwargs)

    @admin.action(description="Revoke the selected keys (final)", permissions=["change"])
    def revoke_keys(self, request: HttpRequest, queryset):
        count = 0
        for key in queryset.filter(revoked=False):
            api_key_revoke(key=key)
            count += 1
        self.message_user(request, f"Revoked {count} key(s), and the keys they created.", messages.SUCCESS)


# The library's own key model is unused here (accounts.APIKey carries the tenant); hide it.
from rest_framework_api_key.models import APIKey as _LibraryAPIKey  # noqa: E402

if admin.site.is_registered(_LibraryAPIKey):
    admin.site.unregister(_LibraryAPIKey)


from accounts.models import Invitation  # noqa: E402


class InvitationForm(forms.ModelForm):
    class Meta:
        model = Invitation
        fields = ("email", "tenant", "role")
        help_texts = {
            "tenant": "Empty: the operator invites a new customer, who gets a tenant of their own "
            "(with trial credits) at sign-up."
        }


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    """Invitations by email; adding one here sends it (accounts.services.invitation_create)."""

    list_display = ("email", "tenant", "role", "invited_by", "created_at", "expires_at", "accepted_at")
    list_filter = ("tenant",)
    search_fields = ("email",)
    form = InvitationForm

    def get_readonly_fields(self, request, obj=None):
        return (
            () if obj is None else ("email", "tenant", "role", "invited_by", "expires_at", "accepted_at", "accepted_by")
        )

    def save_model(self, request, obj: Invitation, form, change: bool) -> None:
        if change:
            return super().save_model(request, obj, form, change)
        from accounts.services import invitation_create

        invitation, _ = invitation_create(
            email=obj.email,
            tenant=obj.tenant,
            role=obj.role,
            invited_by=request.user.get_username(),
            base_url=request.build_absolute_uri("/"),
        )
        obj.pk = invitation.pk
        obj._state.adding = False


from accounts.models import TrialGrant  # noqa: E402


@admin.register(TrialGrant)
class TrialGrantAdmin(admin.ModelAdmin):
    """Which mailbox got the sign-up trial (one per mailbox); deleting a row lets that
    mailbox have a trial again."""

    list_display = ("mailbox", "tenant", "user", "credits", "created_at")
    search_fields = ("mailbox", "tenant__name")
    readonly_fields = ("mailbox", "tenant", "user", "credits", "created_at")

    def has_add_permission(self, request) -> bool:
        return False


from django.contrib.auth import get_user_model  # noqa: E402
from django.contrib.auth.admin import UserAdmin as _DjangoUserAdmin  # noqa: E402

_User = get_user_model()


class UserAdmin(_DjangoUserAdmin):
    """Django's user admin; deleting a user first revokes the keys they made
    (accounts.services.user_keys_revoke), as removing them from a tenant does."""

    def delete_model(self, request, obj) -> None:
        from accounts.services import user_keys_revoke

        user_keys_revoke(user_id=obj.pk)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset) -> None:
        from accounts.services import user_keys_revoke

        for user_id in queryset.values_list("pk", flat=True):
            user_keys_revoke(user_id=user_id)
        super().delete_queryset(request, queryset)


if admin.site.is_registered(_User) and isinstance(admin.site._registry[_User], _DjangoUserAdmin):
    admin.site.unregister(_User)
    admin.site.register(_User, UserAdmin)
