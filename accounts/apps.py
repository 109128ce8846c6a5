from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from accounts import (
            adapters,  # noqa: F401  (connects allauth's email_confirmed to the sign-up service)
            checks,  # noqa: F401  (registers the system checks)
        )
        from accounts.key_cache import api_key_cache_connect

        api_key_cache_connect()  # a saved key or tenant drops its cached rows (issue 20)
