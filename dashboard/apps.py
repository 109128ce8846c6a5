from django.apps import AppConfig


class DashboardConfig(AppConfig):
    """Every HTML and session surface: the tenant dashboard (/dashboard/), its playground
    endpoints, the operator overview (/admin/overview/), the favicon, and the templates
    that restyle allauth's pages. It sits on top of the layers (dashboard > images >
    billing > accounts > core): it may import any app; no app imports it."""

    name = "dashboard"
    default_auto_field = "django.db.models.BigAutoField"
