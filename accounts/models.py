from __future__ import annotations

from django.conf import settings
from django.db import models
from rest_framework_api_key.models import AbstractAPIKey


class Tenant(models.Model):
    """A customer of the platform: owns keys, a credit balance, jobs and usage."""

    class Status(models.TextChoices):
        ACTIVE = "active"
        SUSPENDED = "suspended"

    class Moderation(models.TextChoices):
        STRICT = "strict"
        STANDARD = "standard"
        LOW = "low"

    class OutputModeration(models.TextChoices):
        BLOCK = "block"
        BLUR = "blur"
        FLAG = "flag"
        OFF = "off"

    name = models.CharField(max_length=100, unique=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    # The most permissive moderation level this tenant may ask for.
    moderation_level = models.CharField(max_length=16, choices=Moderation.choices, default=Moderation.STANDARD)
    # Requests per minute for the whole tenant; null = the installation default.
    rpm_limit = models.PositiveIntegerField(null=True, blank=True)
    # Jobs queued or running at once; null = the installation default.
    max_concurrent_jobs = models.PositiveIntegerField(null=True, blank=True)
    # What happens to a generated image the output classifier finds unsafe (issue 25;
    # images/services/output_moderation.py): withheld and not charged, delivered blurred,
    # delivered with a mark, or not checked at all. Sign-ups get SIGNUP_OUTPUT_MODERATION.
    output_moderation = models.CharField(max_length=8, choices=OutputModeration.choices, default=OutputModeration.BLOCK)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner"
        ADMIN = "admin"
        MEMBER = "member"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "user"], name="membership_unique")]

    def __str__(self) -> str:
        return f"{self.user_id} in {self.tenant_id} ({self.role})"


class APIKey(AbstractAPIKey):
    """A tenant's key: prefix kept for display, the rest stored as a hash, shown once."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    created_by = models.CharField(max_length=150, blank=True, default="")
    last_used_at = models.DateTimeField(null=True, blank=True)
    # Model ids this key may use; empty = all enabled models.
    allowed_models = models.JSONField(default=list, blank=True)
    rpm_limit = models.PositiveIntegerField(null=True, blank=True)
    # Credits this key may spend per calendar month (UTC); null = no limit.
    monthly_credit_limit = models.PositiveBigIntegerField(null=True, blank=True)
    # An admin key may also manage its tenant's keys through /v1/keys.
    is_admin = models.BooleanField(default=False)
    # The admin key that created this one through /v1/keys (null: an owner, the admin
    # site or manage.py made it). Such a key lies within its parent's scope and is
    # revoked with it (accounts.services.api_key_revoke).
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="children")
    # The person whose session made this key (dashboard, /v1/keys as an owner, the admin
    # site); removing them from the tenant revokes it (accounts.services.membership_remove).
    # `created_by` stays the display text ("manage.py", "key:<prefix>", a username).
    created_by_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta(AbstractAPIKey.Meta):
        verbose_name = "API key"
        verbose_name_plural = "API keys"


class Invitation(models.Model):
    """An invitation by email. With a tenant: an owner invites a member of it. Without
    one: the operator invites a customer, who gets a tenant of their own at sign-up
    (the way in when SIGNUP_MODE is `invite`). Only a hash of the token is kept (the raw
    token is in the emailed link)."""

    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Membership.Role.choices, default=Membership.Role.MEMBER)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    invited_by = models.CharField(max_length=150, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The account that signed up through this invitation's link with the invited address
    # (set at sign-up, before verification); only that account, once it has verified the
    # address, accepts it (accounts.services.signup_complete).
    claimed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        indexes = [models.Index(fields=["email"], name="invitation_email")]

    def __str__(self) -> str:
        return f"{self.email} → {self.tenant or 'own tenant'}"


class TrialGrant(models.Model):
    """The one sign-up trial a mailbox gets (accounts.services.mailbox_key: lower case,
    no +tag, no dots where the provider ignores them). The unique mailbox makes the rule
    hold under concurrent sign-ups: a second tenant for the same mailbox gets no trial."""

    mailbox = models.CharField(max_length=254, unique=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    credits = models.PositiveBigIntegerField()  # credits granted
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.mailbox} → {self.tenant_id}"
