from django.contrib import admin

from images.models import GeneratedImage, ImageModel, Job


@admin.register(ImageModel)
class ImageModelAdmin(admin.ModelAdmin):
    list_display = ("public_id", "profile", "source", "queue", "dtype", "enabled")
    list_filter = ("profile", "enabled", "queue")


class GeneratedImageInline(admin.TabularInline):
    model = GeneratedImage
    extra = 0
    readonly_fields = ("index", "file", "content_type", "width", "height", "bytes")
    can_delete = False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "tenant", "model", "kind", "status", "n", "width", "height", "quote", "created_at", "gpu_ms")
    list_filter = ("status", "kind", "model")
    readonly_fields = [f.name for f in Job._meta.fields]
    inlines = [GeneratedImageInline]

    def has_add_permission(self, request) -> bool:
        return False
