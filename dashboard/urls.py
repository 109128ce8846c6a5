"""/dashboard/: the tenant dashboard (session login, tenant members only)."""

from django.urls import path

from dashboard import views, webhooks

app_name = "dashboard"

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", views.logout_view, name="logout"),
    path("keys/", views.keys, name="keys"),
    path("keys/<str:prefix>/revoke/", views.key_revoke, name="key_revoke"),
    path("usage/", views.usage, name="usage"),
    path("usage.csv", views.usage_csv, name="usage_csv"),
    path("jobs/", views.jobs, name="jobs"),
    path("jobs/<str:job_id>/", views.job_detail, name="job_detail"),
    path("jobs/<str:job_id>/images/<int:index>/thumb", views.job_image_thumbnail, name="job_image_thumbnail"),
    path("prices/", views.prices, name="prices"),
    path("playground/", views.playground, name="playground"),
    path("billing/", views.billing, name="billing"),
    path("billing/redeem/", views.billing_redeem, name="billing_redeem"),
    path("billing/alert/", views.billing_alert, name="billing_alert"),
    path("billing/pay/", views.billing_pay, name="billing_pay"),
    path("members/", views.members, name="members"),
    path("members/<int:membership_id>/remove/", views.member_remove, name="member_remove"),
    path("invite/<str:token>/", views.invitation_accept, name="invitation_accept"),
    path("webhooks/", webhooks.webhooks, name="webhooks"),
    path("webhooks/<str:endpoint_id>/toggle/", webhooks.webhook_toggle, name="webhook_toggle"),
    path("webhooks/<str:endpoint_id>/delete/", webhooks.webhook_delete, name="webhook_delete"),
    path(
        "webhooks/deliveries/<str:delivery_id>/retry/",
        webhooks.webhook_delivery_retry,
        name="webhook_delivery_retry",
    ),
]
