"""django-allauth's hooks: who may sign up (SIGNUP_MODE), and what a verified sign-up
becomes (accounts.services.signup_complete: a tenant with trial credits, or the
inviting tenant's membership)."""

from __future__ import annotations

from allauth.account.adapter import DefaultAccountAdapter
from allauth.account.signals import email_confirmed
from django.conf import settings
from django.dispatch import receiver
from django.http import HttpRequest

INVITATION_SESSION_KEY = "invitation_token"


def _session_invitation(request: HttpRequest | None):
    from accounts.services import invitation_find

    token = request.session.get(INVITATION_SESSION_KEY, "") if request is not None else ""
    return invitation_find(token=token) if token else None


class AccountAdapter(DefaultAccountAdapter):
    def is_open_for_signup(self, request: HttpRequest) -> bool:
        """open: everyone; invite: only a browser that followed an open invitation
        link (/dashboard/invite/<token>/); closed: nobody. An open sign-up post also
        counts against the client network's limit (SIGNUP_RATE_LIMIT_PER_NETWORK, a 429
        past it; the per-address limit is allauth's own `signup` rate)."""
        if settings.SIGNUP_MODE == "open":
            is_open = True
        elif settings.SIGNUP_MODE == "invite":
            is_open = _session_invitation(request) is not None
        else:
            is_open = False
        if is_open:
            _signup_network_consume(request)
        return is_open

    def get_client_ip(self, request: HttpRequest) -> str:
        """allauth's rate limits key on the project's one client address."""
        from django.core.exceptions import PermissionDenied

        from core.client_address import client_address

        address = client_address(request)
        if not address:
            raise PermissionDenied("Unable to determine the client's address.")
        return address

    def save_user(self, request: HttpRequest, user, form, commit: bool = True):
        """A sign-up through an invitation's link with the invited address claims that
        invitation for this account; it is accepted once the address is verified."""
        user = super().save_user(request, user, form, commit=commit)
        invitation = _session_invitation(request)
        if commit and invitation is not None:
            from accounts.services import invitation_claim

            invitation_claim(invitation=invitation, user=user, email=user.email)
        return user

    def pre_authenticate(self, request: HttpRequest, **credentials) -> None:
        """Failed passwords are django-axes' on every form, counted per username and
        client address (a guesser elsewhere cannot lock the owner out); allauth's
        login_failed count, per account alone, is left to the second-factor step."""

    def validation_error(self, code, *args):
        """allauth's "too many attempts" refusals (a password past login_failed, the
        second-factor step past its count, a login-code request) answer with its 429 page,
        as django-axes' lockout and allauth's other limits do, not with a form error."""
        if code == "too_many_login_attempts":
            from allauth.core import context, ratelimit
            from allauth.core.exceptions import ImmediateHttpResponse

            raise ImmediateHttpResponse(ratelimit.respond_429(self.request or context.request))
        return super().validation_error(code, *args)

    def clean_email(self, email: str) -> str:
        """In invite mode the address must be the invited one (the invitation is matched
        by address when the email is verified)."""
        email = super().clean_email(email)
        if settings.SIGNUP_MODE == "invite" and getattr(self, "request", None) is not None:
            invitation = _session_invitation(self.request)
            if invitation is not None and invitation.email.lower() != email.strip().lower():
                raise _email_error(invitation.email)
        return email


def _signup_network_consume(request: HttpRequest) -> None:
    """One sign-up attempt from the client's network (/24, /64); allauth's rate limiter
    keeps the count, and its 429 page answers past the limit (a POST only)."""
    from allauth.core import ratelimit
    from allauth.core.exceptions import ImmediateHttpResponse

    from core.client_address import client_address, client_network

    if request is None or request.method != "POST":
        return
    network = client_network(client_address(request)) or "-"
    if not ratelimit.consume(request, action="signup_network", key=network):
        raise ImmediateHttpResponse(ratelimit.respond_429(request))


def _email_error(expected: str):
    from django import forms

    return forms.ValidationError(f"This invitation is for {expected}; sign up with that address.")


@receiver(email_confirmed, dispatch_uid="accounts.signup_complete")
def _on_email_confirmed(sender, request, email_address, **kwargs) -> None:
    """allauth is the source of the event; the rule lives in the service. A new tenant
    whose mailbox already had its trial is told why it starts without credits."""
    from accounts.models import Membership, TrialGrant
    from accounts.services import signup_complete

    membership = signup_complete(user=email_address.user, email=email_address.email)
    if (
        request is not None
        and membership is not None
        and settings.SIGNUP_TRIAL_CREDITS > 0
        and not TrialGrant.objects.filter(tenant_id=membership.tenant_id).exists()
        and not Membership.objects.filter(tenant_id=membership.tenant_id).exclude(pk=membership.pk).exists()
    ):
        from django.contrib import messages

        messages.info(
            request,
            "This mailbox has already had its free trial, so this account starts without trial "
            "credits. Top up on the billing page.",
        )
