from django import forms
from django.contrib import admin
from django.db.models import Count

from billing.models import Price
from images.models import (
    BlockedOutput,
    BlockedPrompt,
    GeneratedImage,
    ImageModel,
    Job,
    LoraAdapter,
    LoraUploadGrant,
    ModerationTerm,
    StabilityRoute,
    WebhookDelivery,
    WebhookEndpoint,
)


class PriceInline(admin.TabularInline):
    """Prices are entered with the model: a model with none is refused (400
    model_not_priced) unless it is marked free."""

    model = Price
    extra = 1


@admin.register(ImageModel)
class ImageModelAdmin(admin.ModelAdmin):
    list_display = (
        "public_id",
        "kind",
        "profile",
        "family",
        "source",
        "queue",
        "dtype",
        "enabled",
        "is_free",
        "price_rows",
    )
    list_filter = ("kind", "profile", "enabled", "is_free", "queue")
    inlines = [PriceInline]
    actions = ["capabilities_refresh"]

    @admin.display(description="family")
    def family(self, obj: ImageModel) -> str:
        return (obj.capabilities or {}).get("family", "unknown")

    # Computed from the source (images/services/models.py), never typed: a family edited
    # here would let through what the folder's family cannot do.
    readonly_fields = ("capabilities", "capabilities_source")

    @admin.action(description="Recognise the family from the model folder (model_index.json)")
    def capabilities_refresh(self, request, queryset) -> None:
        """What `manage.py model_add --update` records, for rows added by hand: the
        capabilities the web tier checks before holding credits."""
        for model in queryset:
            self._capabilities_refresh(request, model)

    def save_model(self, request, obj, form, change) -> None:
        """Save, then recompute the capabilities when the row's source is new to them (a
        new row, a copied one, an edited source): the old source's would let through what
        the new family cannot do (images/services/models.py)."""
        super().save_model(request, obj, form, change)
        if obj.capabilities_source != obj.source or "source" in form.changed_data:
            self._capabilities_refresh(request, obj)

    def _capabilities_refresh(self, request, model: ImageModel) -> None:
        from images.families_catalog import FamilyError
        from images.services.models import model_capabilities_compute, model_capabilities_refresh

        if model.kind != ImageModel.Kind.GENERATOR:  # (issue 26: a tool model has no diffusers family)
            self.message_user(request, f"{model.public_id}: {model.get_kind_display().lower()}, loaded by the worker")
            return
        capabilities = model_capabilities_refresh(model=model)
        if capabilities:
            self.message_user(request, f"{model.public_id}: {capabilities['family']} family recorded")
            return
        try:
            model_capabilities_compute(source=model.source)
            reason = "unknown"
        except FamilyError as exc:
            reason = str(exc)
        self.message_user(
            request,
            f"{model.public_id}: capabilities unknown until a worker loads it ({reason})",
            level="warning",
        )

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(price_count=Count("prices"))

    @admin.display(description="price rows", ordering="price_count")
    def price_rows(self, obj: ImageModel) -> int:
        return obj.price_count


class GeneratedImageInline(admin.TabularInline):
    model = GeneratedImage
    extra = 0
    readonly_fields = ("index", "file", "content_type", "width", "height", "bytes")
    can_delete = False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "tenant", "model", "kind", "status", "n", "width", "height", "quote", "created_at", "gpu_ms")
    list_filter = ("status", "kind", "model", "tenant", "endpoint", "created_at")
    search_fields = ("id", "tenant__name", "prompt")
    date_hierarchy = "created_at"
    list_select_related = ("tenant", "model")
    readonly_fields = [f.name for f in Job._meta.fields]
    inlines = [GeneratedImageInline]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(ModerationTerm)
class ModerationTermAdmin(admin.ModelAdmin):
    list_display = ("term", "category", "tier", "enabled")
    list_filter = ("category", "tier", "enabled")
    search_fields = ("term",)


@admin.register(BlockedPrompt)
class BlockedPromptAdmin(admin.ModelAdmin):
    list_display = ("created_at", "tenant", "model", "level", "categories", "prompt")
    list_filter = ("level", "tenant")
    search_fields = ("prompt",)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(BlockedOutput)
class BlockedOutputAdmin(admin.ModelAdmin):
    """Images the output classifier withheld (issue 25), with a small thumbnail. The
    thumbnail is served by this admin's own view (`thumbnail/`), behind the admin's
    staff login and the model's view permission: never by a public or signed link."""

    list_display = ("created_at", "tenant", "model", "endpoint", "level", "categories", "job", "index", "picture")
    list_filter = ("level", "tenant", "model")
    readonly_fields = ("picture",)
    list_select_related = ("tenant",)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="thumbnail")
    def picture(self, obj: BlockedOutput) -> str:
        from django.urls import reverse
        from django.utils.html import format_html

        if not obj.thumbnail:
            return "-"
        url = reverse("admin:images_blockedoutput_thumbnail", args=[obj.pk])
        return format_html('<img src="{}" alt="withheld image" width="64" loading="lazy">', url)

    def get_urls(self):
        from django.urls import path

        view = self.admin_site.admin_view(self.thumbnail_view)  # (staff only: the admin's login)
        return [
            path("<int:object_id>/thumbnail/", view, name="images_blockedoutput_thumbnail"),
            *super().get_urls(),
        ]

    def thumbnail_view(self, request, object_id: int):
        from django.core.files.storage import default_storage
        from django.http import Http404, HttpResponse

        if not self.has_view_permission(request):
            raise Http404
        row = BlockedOutput.objects.filter(pk=object_id).first()
        if row is None or not row.thumbnail:
            raise Http404
        try:
            with default_storage.open(row.thumbnail, "rb") as handle:
                data = handle.read()
        except (FileNotFoundError, OSError):
            raise Http404 from None
        response = HttpResponse(data, content_type="image/webp")
        response["Cache-Control"] = "private, no-store"
        return response


class LoraAdapterForm(forms.ModelForm):
    """The path must be a .safetensors file or a folder with one (as `manage.py lora_add`)."""

    class Meta:
        model = LoraAdapter
        fields = (
            "name",
            "path",
            "base_model",
            "family",
            "surcharge_credits",
            "trigger_words",
            "public",
            "tenants",
            "owner",
            "enabled",
        )

    def clean_path(self) -> str:
        from images.services.loras import LoraPathError, lora_path_resolve

        if self.instance.pk and self.instance.storage_name:  # a tenant's upload: its file is in the storage
            return ""
        try:
            return lora_path_resolve(self.cleaned_data["path"])
        except LoraPathError as exc:
            raise forms.ValidationError(f"Not a LoRA adapter: {exc}") from None

    def clean(self):
        data = super().clean()
        if not data.get("base_model") and not data.get("family"):
            raise forms.ValidationError("Name the base model (or the family) the adapter was trained for.")
        return data


@admin.register(LoraAdapter)
class LoraAdapterAdmin(admin.ModelAdmin):
    """LoRA adapters over base models (issue 23; docs/models.md). Not public: only the
    listed tenants (and its owner) may use it."""

    form = LoraAdapterForm
    list_display = ("name", "base_model", "family", "surcharge_credits", "public", "owner", "enabled", "created_at")
    list_filter = ("enabled", "public", "base_model")
    search_fields = ("name", "trigger_words")
    filter_horizontal = ("tenants",)
    readonly_fields = ("storage_name", "size_bytes")


@admin.register(LoraUploadGrant)
class LoraUploadGrantAdmin(admin.ModelAdmin):
    """Tenants that may upload their own LoRA adapters when LORA_TENANT_UPLOADS is
    `granted` (issue 23; docs/configuration.md); max_adapters empty = the setting's."""

    list_display = ("tenant", "max_adapters", "created_at")
    autocomplete_fields = ("tenant",)


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    """Tenants' webhook endpoints (issue 24). The signing secrets are never shown or
    edited here: a tenant rotates its own (`POST /v1/webhooks/{id}/rotate_secret`)."""

    list_display = ("url", "tenant", "enabled", "consecutive_failures", "failing_since", "disabled_at")
    list_filter = ("enabled",)
    search_fields = ("url", "tenant__name")
    exclude = ("secret", "previous_secret", "previous_secret_expires_at")
    readonly_fields = ("tenant", "failing_since", "consecutive_failures", "disabled_at", "disabled_reason")


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    """The delivery log (read-only): one row per event and target, its attempts and
    last error; "send again" is on the tenant's dashboard and API."""

    list_display = ("event_type", "url", "tenant", "status", "attempts", "last_status_code", "next_attempt_at")
    list_filter = ("status", "event_type")
    search_fields = ("url", "event_id", "tenant__name")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(StabilityRoute)
class StabilityRouteAdmin(admin.ModelAdmin):
    """Which own model serves each Stability v2beta endpoint (and each `model` value of
    generate/sd3); its price rows price the endpoint (docs/api.md, "Stability v2beta shape")."""

    list_display = ("service", "model_value", "image_model", "enabled")
    list_filter = ("service", "enabled")
    list_editable = ("image_model", "enabled")
