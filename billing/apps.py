from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from accounts.signals import tenant_signed_up
        from billing.trials import on_tenant_signed_up

        # A new customer's tenant gets the sign-up trial (accounts sends, billing grants).
        tenant_signed_up.connect(on_tenant_signed_up, dispatch_uid="billing.trial_grant")
