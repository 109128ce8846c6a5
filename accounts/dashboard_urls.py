"""/dashboard/: the tenant dashboard (session login, tenant members only)."""

from django.urls import path

from accounts import dashboard, dashboard_webhooks

app_name = "dashboard"

urlpatterns = [
    path("", dashboard.home, name="home"),
    path("login/", dashboard.LoginView.as_view(), name="login"),
    path("logout/", dashboard.logout_view, name="logout"),
    path("keys/", dashboard.keys, name="keys"),
    path("keys/<str:prefix>/revoke/", dashboard.key_revoke, name="key_revoke"),
    path("usage/", dashboard.usage, name="usage"),
    path("usage.csv", dashboard.usage_csv, name="usage_csv"),
    path("jobs/", dashboard.jobs, name="jobs"),
    path("jobs/<str:job_id>/", dashboard.job_detail, name="job_detail"),
    path("jobs/<str:job_id>/images/<int:index>/thumb", dashboard.job_image_thumbnail, name="job_image_thumbnail"),
    path("prices/", dashboard.prices, name="prices"),
    path("playground/", dashboard.playground, name="playground"),
    path("billing/", dashboard.billing, name="billing"),
    path("billing/redeem/", dashboard.billing_redeem, name="billing_redeem"),
    path("billing/alert/", dashboard.billing_alert, name="billing_alert"),
    path("billing/pay/", dashboard.billing_pay, name="billing_pay"),
    path("members/", dashboard.members, name="members"),
    path("members/<int:membership_id>/remove/", dashboard.member_remove, name="member_remove"),
    path("invite/<str:token>/", dashboard.invitation_accept, name="invitation_accept"),
    path("webhooks/", dashboard_webhooks.webhooks, name="webhooks"),
    path("webhooks/<str:endpoint_id>/toggle/", dashboard_webhooks.webhook_toggle, name="webhook_toggle"),
    path("webhooks/<str:endpoint_id>/delete/", dashboard_webhooks.webhook_delete, name="webhook_delete"),
    path(
        "webhooks/deliveries/<str:delivery_id>/retry/",
        dashboard_webhooks.webhook_delivery_retry,
        name="webhook_delivery_retry",
    ),
]
