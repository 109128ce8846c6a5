"""Writes for tenants and keys."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import transaction

from accounts.key_cache import api_key_cache_forget
from accounts.models import APIKey, Tenant
from core.errors import InvalidRequest, PermissionDeniedError


def tenant_create(*, name: str) -> Tenant:
    return Tenant.objects.create(name=name)


# How key_models_validate learns which model ids exist: the model registry is images',
# a layer above accounts, so images registers a lookup at start-up
# (ImagesConfig.ready -> model_catalog_register) instead of accounts importing it.
_model_catalog: Callable[[list[str]], set[str]] | None = None


def model_catalog_register(known_ids: Callable[[list[str]], set[str]]) -> None:
    """Sets the lookup `key_models_validate` uses: `known_ids(ids)` returns the subset of
    `ids` that name a model in the registry (enabled or not). Called by images'
    AppConfig.ready; a second call replaces the first."""
    global _model_catalog
    _model_catalog = known_ids


def key_models_validate(*, model_ids: list[str] | None) -> list[str]:
    """The model ids a key may use, stripped and de-duplicated in order; an id that names
    no model in the registry (enabled or not) is a 400 naming it. The registry is read
    through the lookup images registers (`model_catalog_register`); without one (images
    not installed) a non-empty list raises RuntimeError rather than pass unchecked."""
    if model_ids is not None and (not isinstance(model_ids, list) or not all(isinstance(m, str) for m in model_ids)):
        raise InvalidRequest(
            "'allowed_models' must be a list of model ids.", param="allowed_models", code="invalid_value"
        )
    wanted = list(dict.fromkeys(m.strip() for m in (model_ids or []) if m.strip()))
    if not wanted:
        return wanted
    if _model_catalog is None:
        raise RuntimeError("No model catalog registered (accounts.services.model_catalog_register).")
    known = _model_catalog(wanted)
    unknown = [m for m in wanted if m not in known]
    if unknown:
        raise InvalidRequest(
            f"Unknown model(s): {', '.join(repr(m) for m in unknown)}.", param="allowed_models", code="model_not_found"
        )
    return wanted


def _beyond_scope(param: str, detail: str) -> PermissionDeniedError:
    return PermissionDeniedError(
        f"A key can only create keys within its own scope: {detail}", param=param, code="key_scope_exceeded"
    )


@dataclass(frozen=True)
class KeyLimits:
    rpm_limit: int | None
    expiry_date: datetime | None
    allowed_models: list[str]
    monthly_credit_limit: int | None


def key_scope_narrow(*, parent: APIKey, limits: KeyLimits) -> KeyLimits:
    """The limits of a key that `parent` creates: each one omitted (None or empty) is the
    parent's own, and none may be looser than the parent's, or it is a 403
    `key_scope_exceeded` naming the parameter. rpm compares with the parent's effective
    limit (its own, else DEFAULT_KEY_RPM; 0 = none)."""
    models = limits.allowed_models or list(parent.allowed_models)
    if parent.allowed_models:
        outside = [m for m in models if m not in parent.allowed_models]
        if outside:
            raise _beyond_scope("allowed_models", f"this key may not use {', '.join(repr(m) for m in outside)}.")
    rpm = limits.rpm_limit if limits.rpm_limit is not None else parent.rpm_limit
    parent_rpm = parent.rpm_limit or settings.DEFAULT_KEY_RPM
    if parent_rpm and (rpm or settings.DEFAULT_KEY_RPM) > parent_rpm:
        raise _beyond_scope("rpm_limit", f"'rpm_limit' may be at most {parent_rpm}.")
    monthly = limits.monthly_credit_limit if limits.monthly_credit_limit is not None else parent.monthly_credit_limit
    if parent.monthly_credit_limit is not None and monthly > parent.monthly_credit_limit:
        raise _beyond_scope(
            "monthly_credit_limit", f"'monthly_credit_limit' may be at most {parent.monthly_credit_limit}."
        )
    expiry = limits.expiry_date or parent.expiry_date
    if parent.expiry_date is not None and expiry > parent.expiry_date:
        raise _beyond_scope("expires_at", f"'expires_at' may be no later than {parent.expiry_date.isoformat()}.")
    return KeyLimits(rpm_limit=rpm, expiry_date=expiry, allowed_models=models, monthly_credit_limit=monthly)


def api_key_create(
    *,
    tenant: Tenant,
    name: str = "default",
    created_by: str = "",
    rpm_limit: int | None = None,
    expiry_date: datetime | None = None,
    allowed_models: list[str] | None = None,
    monthly_credit_limit: int | None = None,
    is_admin: bool = False,
    parent: APIKey | None = None,
    created_by_user=None,
) -> tuple[APIKey, str]:
    """Create a key; the raw key is returned once and never stored (only prefix + hash).

    Every way of making a key comes here (/v1/keys, the dashboard, the admin site,
    `key_create`), so model ids are checked once (400 `model_not_found`). `parent` is
    the admin key making this one through /v1/keys: the new key is confined to the
    parent's scope (`key_scope_narrow`), is never an admin key itself, and is revoked
    with its parent. Owners' sessions and operators pass no parent: they are the
    tenant's and the installation's authority, not a key's. `created_by_user` is the
    signed-in person making it, if any: the key is revoked when they leave the tenant
    (`membership_remove`)."""
    limits = KeyLimits(
        rpm_limit=rpm_limit,
        expiry_date=expiry_date,
        allowed_models=key_models_validate(model_ids=allowed_models),
        monthly_credit_limit=monthly_credit_limit,
    )
    if parent is not None:
        if parent.tenant_id != tenant.pk or not parent.is_admin or parent.revoked:
            raise PermissionDeniedError(
                "Managing keys needs an admin key or an owner's session.", code="insufficient_permissions"
            )
        if is_admin:
            raise _beyond_scope("is_admin", "a key cannot create admin keys; an owner's session can.")
        limits = key_scope_narrow(parent=parent, limits=limits)
    key, raw = APIKey.objects.create_key(
        tenant=tenant,
        name=name[:50] or "default",
        created_by=created_by,
        rpm_limit=limits.rpm_limit,
        expiry_date=limits.expiry_date,
        allowed_models=limits.allowed_models,
        monthly_credit_limit=limits.monthly_credit_limit,
        is_admin=is_admin,
        parent=parent,
        created_by_user=created_by_user,
    )
    return key, raw


@transaction.atomic
def api_key_revoke(*, key: APIKey) -> APIKey:
    """Revoke for good: revoked keys get 401 and cannot be reactivated. The keys this
    key created (and theirs, down the tree) are revoked with it: a key made by a key
    never outlives the one that made it."""
    if not key.revoked:
        key.revoked = True
        key.save(update_fields=["revoked"])
    parents = [key.pk]
    while parents:
        found = list(APIKey.objects.filter(parent_id__in=parents, revoked=False).values_list("pk", "prefix"))
        children = [pk for pk, _ in found]
        APIKey.objects.filter(pk__in=children).update(revoked=True)
        api_key_cache_forget(prefixes=[prefix for _, prefix in found])  # (no post_save for update())
        parents = children
    return key


def tenant_update(
    *,
    tenant: Tenant,
    moderation_level: str | None = None,
    status: str | None = None,
    rpm_limit: int | None = None,
    max_concurrent_jobs: int | None = None,
    output_moderation: str | None = None,
) -> Tenant:
    """Change the given fields of a tenant (None = leave as is). `output_moderation`:
    block|blur|flag|off (issue 25, Tenant.OutputModeration); anything else is a
    ValueError (the command and the admin offer only the choices)."""
    if output_moderation is not None and output_moderation not in Tenant.OutputModeration.values:
        raise ValueError(f"output_moderation must be one of {', '.join(Tenant.OutputModeration.values)}")
    fields = []
    for name, value in (
        ("moderation_level", moderation_level),
        ("status", status),
        ("rpm_limit", rpm_limit),
        ("max_concurrent_jobs", max_concurrent_jobs),
        ("output_moderation", output_moderation),
    ):
        if value is not None:
            setattr(tenant, name, value)
            fields.append(name)
    if fields:
        tenant.save(update_fields=fields)
    return tenant


@transaction.atomic
def tenant_create_with_key(*, name: str, created_by: str = "") -> tuple[Tenant, APIKey, str]:
    tenant = tenant_create(name=name)
    key, raw = api_key_create(tenant=tenant, name="default", created_by=created_by)
    return tenant, key, raw


# ---- Self-service sign-up and invitations ----


def _token_hash(token: str) -> str:
    import hashlib

    return hashlib.sha256(token.encode()).hexdigest()


def invitation_find(*, token: str):
    """The open (not accepted, not expired) invitation for a raw token, or None."""
    from django.utils import timezone

    from accounts.models import Invitation

    if not token or len(token) > 200:
        return None
    return (
        Invitation.objects.filter(
            token_hash=_token_hash(token), accepted_at__isnull=True, expires_at__gt=timezone.now()
        )
        .select_related("tenant")
        .first()
    )


def invitation_email_clean(*, email: str) -> str:
    """An invitation's address, lower case: one that Django's EmailValidator accepts
    (no spaces, no CR or LF: nothing that could add a mail header), else 400
    `invalid_value` on `email`. Every way of inviting (dashboard, admin) comes here."""
    from django.core.exceptions import ValidationError
    from django.core.validators import validate_email

    email = (email if isinstance(email, str) else "").strip().lower()
    try:
        validate_email(email)
    except ValidationError:
        raise InvalidRequest("Enter a valid email address.", param="email", code="invalid_value") from None
    if len(email) > 254:
        raise InvalidRequest("Enter a valid email address.", param="email", code="invalid_value")
    return email


def invitation_claim(*, invitation, user, email: str) -> bool:
    """At sign-up through the invitation's link (its token in the browser's session):
    binds the invitation to this new account when `email` is exactly the invited
    address (case aside). Returns whether it was claimed; a first claim stands.
    `signup_complete` accepts it once this account has verified that address."""
    from accounts.models import Invitation

    if (email or "").strip().lower() != invitation.email.lower():
        return False
    return bool(
        Invitation.objects.filter(pk=invitation.pk, accepted_at__isnull=True, claimed_by__isnull=True).update(
            claimed_by=user
        )
    )


def invitation_create(
    *, email: str, tenant: Tenant | None, role: str = "member", invited_by: str = "", base_url: str = ""
) -> tuple[Invitation, str]:  # noqa: F821
    """Invite `email` to `tenant` (None: the operator invites a customer, who gets a
    tenant of their own). Emails the link after commit; returns the invitation and its
    raw token (shown to whoever invites, never stored)."""
    import secrets
    from datetime import timedelta

    from django.core.mail import send_mail
    from django.utils import timezone

    from accounts.models import Invitation, Membership

    email = invitation_email_clean(email=email)
    if role not in Membership.Role.values:
        raise InvalidRequest("Unknown role.", param="role", code="invalid_value")
    token = secrets.token_urlsafe(32)
    invitation = Invitation.objects.create(
        tenant=tenant,
        email=email,
        role=role if tenant is not None else Membership.Role.OWNER,
        token_hash=_token_hash(token),
        invited_by=invited_by,
        expires_at=timezone.now() + timedelta(days=settings.INVITATION_DAYS),
    )
    link = f"{base_url.rstrip('/')}/dashboard/invite/{token}/"
    where = f"the team {tenant.name}" if tenant is not None else "the Image API"
    transaction.on_commit(
        lambda: send_mail(
            f"{settings.ACCOUNT_EMAIL_SUBJECT_PREFIX}You are invited to {where}",
            f"{invited_by or 'The operator'} invited you to {where}.\n\nSign up with this email address "
            f"({email}) here:\n{link}\n\nThe invitation expires in {settings.INVITATION_DAYS} days.\n",
            None,
            [email],
        )
    )
    return invitation, token


def _unique_tenant_name(base: str) -> str:
    import secrets

    base = (base or "team").strip()[:80] or "team"
    name = base
    while Tenant.objects.filter(name=name).exists():
        name = f"{base}-{secrets.token_hex(3)}"
    return name


def mailbox_key(*, email: str) -> str:
    """The mailbox an address delivers to, for the one-trial rule: Unicode NFKC and case
    folded; a quoted local part unquoted (`"sam"@` is `sam@`, RFC 5321); the domain in
    its ASCII (IDNA) form (`exämple.com` is `xn--exmple-cua.com`, full-width letters are
    ASCII ones); the "+tag" of the local part dropped, and its dots dropped at the
    domains in TRIAL_DOT_INSENSITIVE_DOMAINS (Gmail delivers s.a.m@ to sam@;
    googlemail.com is gmail.com). Other providers' sub-addressing (a "-tag" at Yahoo,
    Fastmail's `anything@sam.fastmail.com`) is not folded: the sign-up limits per
    address and network bound those. `Sam+1@Example.com` -> `sam@example.com`."""
    import re
    import unicodedata

    local, _, domain = unicodedata.normalize("NFKC", (email or "").strip()).casefold().rpartition("@")
    if len(local) >= 2 and local[0] == local[-1] == '"':
        local = re.sub(r"\\(.)", r"\1", local[1:-1])
    try:
        domain = domain.rstrip(".").encode("idna").decode("ascii")
    except UnicodeError:  # (a label too long or empty: not an address Django accepts anyway)
        pass
    domain = "gmail.com" if domain == "googlemail.com" else domain
    local = local.split("+", 1)[0]
    dotless = {d.strip().lower() for d in settings.TRIAL_DOT_INSENSITIVE_DOMAINS}
    if domain in dotless:
        local = local.replace(".", "")
    return f"{local}@{domain}"


def tenant_create_for_signup(*, user, email: str) -> Tenant:
    """A new customer's tenant: the user as owner, the operator's default moderation
    level and limits. Then sends `accounts.signals.tenant_signed_up`, on which billing
    grants the trial credits when the mailbox has not had a trial yet
    (billing.trials.trial_grant; accounts imports no billing code)."""
    from accounts.models import Membership
    from accounts.signals import tenant_signed_up

    tenant = Tenant.objects.create(
        name=_unique_tenant_name(email.split("@")[0]),
        moderation_level=settings.SIGNUP_MODERATION_LEVEL,
        rpm_limit=settings.SIGNUP_RPM_LIMIT or None,
        max_concurrent_jobs=settings.SIGNUP_MAX_CONCURRENT_JOBS or None,
        output_moderation=settings.SIGNUP_OUTPUT_MODERATION,
    )
    Membership.objects.create(tenant=tenant, user=user, role=Membership.Role.OWNER)
    tenant_signed_up.send(sender=Tenant, tenant=tenant, user=user, email=email)
    return tenant


@transaction.atomic
def signup_complete(*, user, email: str):
    """Called once a sign-up's email is verified. The open invitation this account
    claimed by following its link (`invitation_claim`), for exactly the address just
    verified, makes the user a member of the inviting tenant (or, from the operator,
    the owner of a new one). Nothing else joins an existing tenant: an invitation that
    merely names the address is not accepted by a sign-up that did not follow its link.
    Otherwise, when SIGNUP_MODE is open, the user gets a new tenant (with the trial
    credits if the mailbox has not had a trial). Idempotent: a user who already belongs
    to a tenant keeps it. Returns the membership, or None (sign-ups closed, no
    invitation)."""
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from accounts.models import Invitation, Membership

    # Serialise completions of one user (a double-clicked confirmation link).
    get_user_model().objects.select_for_update().filter(pk=user.pk).first()
    existing = Membership.objects.filter(user=user).order_by("tenant_id").first()
    if existing is not None:
        return existing
    email = email.strip().lower()
    invitation = (
        Invitation.objects.select_for_update()
        .filter(claimed_by=user, email=email, accepted_at__isnull=True, expires_at__gt=timezone.now())
        .order_by("-created_at")
        .first()
    )
    if invitation is not None:
        if invitation.tenant is not None:
            membership = Membership.objects.create(tenant=invitation.tenant, user=user, role=invitation.role)
        else:
            tenant = tenant_create_for_signup(user=user, email=email)
            membership = Membership.objects.get(tenant=tenant, user=user)
        invitation.accepted_at = timezone.now()
        invitation.accepted_by = user
        invitation.save(update_fields=["accepted_at", "accepted_by"])
        return membership
    if settings.SIGNUP_MODE != "open":
        return None
    tenant = tenant_create_for_signup(user=user, email=email)
    return Membership.objects.get(tenant=tenant, user=user)


# ---- Members ----


@transaction.atomic
def membership_remove(*, membership) -> list[APIKey]:
    """Remove a person from a tenant, and revoke every key of that tenant they made
    (and the keys those keys made, as `api_key_revoke` always does): a key never
    outlives its maker's access. The tenant's last owner cannot be removed (400
    `last_owner`): someone must be able to manage it. Returns the keys revoked."""
    from accounts.models import Membership

    # Serialise removals in one tenant (two owners removing each other at once).
    list(Membership.objects.select_for_update().filter(tenant_id=membership.tenant_id).values_list("pk", flat=True))
    owners = Membership.objects.filter(tenant_id=membership.tenant_id, role=Membership.Role.OWNER)
    if membership.role == Membership.Role.OWNER and not owners.exclude(pk=membership.pk).exists():
        raise InvalidRequest("The tenant's last owner cannot be removed.", param="member", code="last_owner")
    keys = user_keys_revoke(user_id=membership.user_id, tenant_id=membership.tenant_id)
    Membership.objects.filter(pk=membership.pk).delete()
    return keys


@transaction.atomic
def user_keys_revoke(*, user_id: int, tenant_id: int | None = None) -> list[APIKey]:
    """Revoke the active keys a person made (in one tenant, or everywhere: before the
    user is deleted, the admin's user deletion calls this), each with its subtree."""
    keys = APIKey.objects.filter(created_by_user_id=user_id, revoked=False)
    if tenant_id is not None:
        keys = keys.filter(tenant_id=tenant_id)
    keys = list(keys)
    for key in keys:
        api_key_revoke(key=key)
    return keys
