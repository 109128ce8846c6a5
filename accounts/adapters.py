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
        link (/dashboard/invite/<token>/); closed: nobody."""
        if settings.SIGNUP_MODE == "open":
            return True
        if settings.SIGNUP_MODE == "invite":
            return _session_invitation(request) is not None
        return False

    def clean_email(self, email: str) -> str:
        """In invite mode the address must be the invited one (the invitation is matched
        by address when the email is verified)."""
        email = super().clean_email(email)
        if settings.SIGNUP_MODE == "invite" and getattr(self, "request", None) is not None:
            invitation = _session_invitation(self.request)
            if invitation is not None and invitation.email.lower() != email.strip().lower():
                raise _email_error(invitation.email)
        return email


def _email_error(expected: str):
    from django import forms

    return forms.ValidationError(f"This invitation is for {expected}; sign up with that address.")


@receiver(email_confirmed, dispatch_uid="accounts.signup_complete")
def _on_email_confirmed(sender, request, email_address, **kwargs) -> None:
    """allauth is the source of the event; the rule lives in the service."""
    from accounts.services import signup_complete

    signup_complete(user=email_address.user, email=email_address.email)
