"""The tenant dashboard (/dashboard/); the operator overview is dashboard/overview.py.

Thin HTML adapters over the same services and selectors as the API: a signed-in user
sees the tenant of their first membership and nothing else (another tenant's job is a
404); a suspended tenant's members see only a "suspended" page (the API refuses the
same tenant with 403); creating and revoking keys needs the owner or admin role. The
playground page posts to /dashboard/api/generations (dashboard/playground.py PlaygroundViewSet),
which runs the same generation service, with the same rules, as the API. Reads go
through the apps' selectors.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import date, timedelta
from functools import wraps
from typing import Any

from allauth.decorators import rate_limit
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.views.decorators.http import require_GET, require_POST

from accounts import selectors as account_selectors
from accounts import services as account_services
from accounts.errors import TenantSuspended
from accounts.models import Membership, Tenant
from accounts.principals import caller_for_member, tenant_active_check
from core.charts import bar_chart

LOGIN_URL = "/dashboard/login/"
PLAYGROUND_ENDPOINT = "/dashboard/playground"
MANAGER_ROLES = (Membership.Role.OWNER, Membership.Role.ADMIN)
USAGE_DAYS = 30


def membership_for(user) -> Membership | None:
    """The membership the dashboard shows: the user's first (lowest tenant id)."""
    caller = caller_for_member(user=user)
    return caller.member if caller else None


def member_required(view: Callable) -> Callable:
    """Signed in and a member of a tenant; sets request.membership and request.tenant."""

    @login_required(login_url=LOGIN_URL)
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any):
        membership = membership_for(request.user)
        if membership is None:
            return render(request, "dashboard/no_tenant.html", status=403)
        try:
            tenant_active_check(tenant=membership.tenant)
        except TenantSuspended:  # (the pages answer in HTML; the dashboard's API in the envelope)
            return render(request, "dashboard/suspended.html", {"tenant": membership.tenant}, status=403)
        request.membership, request.tenant = membership, membership.tenant
        return view(request, *args, **kwargs)

    return wrapper


def _can_manage(request: HttpRequest) -> bool:
    return request.membership.role in MANAGER_ROLES


def _base_url(request: HttpRequest) -> str:
    return request.build_absolute_uri("/")


KEY_PLACEHOLDER = "$IMAGE_API_KEY"  # samples never carry a stored key: the reader exports their own
DOCS_URL = "/docs/"


def api_base_url(request: HttpRequest) -> str:
    """The OpenAI-compatible base URL of this installation as the browser reached it
    (scheme and host from the request, so behind a proxy it needs USE_X_FORWARDED_HOST /
    SECURE_PROXY_SSL_HEADER like every absolute link): `https://host/v1`."""
    return request.build_absolute_uri("/v1").rstrip("/")


def quickstart_samples(*, base_url: str, model: str, size: str) -> dict[str, str]:
    """Ready-to-paste calls of POST /v1/images/generations: {"curl", "python", "node"}.
    The key is always the IMAGE_API_KEY environment variable (KEY_PLACEHOLDER), never a
    stored key. Python and Node use the official `openai` SDKs with `base_url`."""
    key = KEY_PLACEHOLDER
    py_key = 'os.environ["IMAGE_API_KEY"]'
    node_key = "process.env.IMAGE_API_KEY"
    return {
        "curl": (
            f"curl {base_url}/images/generations \\\n"
            f'  -H "Authorization: Bearer {key}" \\\n'
            '  -H "Content-Type: application/json" \\\n'
            f'  -d \'{{"model": "{model}", "prompt": "a lighthouse at dusk", "size": "{size}"}}\''
        ),
        "python": (
            "# pip install openai\n"
            "import os\n\nfrom openai import OpenAI\n\n"
            f'client = OpenAI(base_url="{base_url}", api_key={py_key})\n'
            f'image = client.images.generate(model="{model}", prompt="a lighthouse at dusk", size="{size}")\n'
            "print(image.data[0].url)"
        ),
        "node": (
            "// npm install openai\n"
            'import OpenAI from "openai";\n\n'
            f'const client = new OpenAI({{ baseURL: "{base_url}", apiKey: {node_key} }});\n'
            "const image = await client.images.generate(\n"
            f'  {{ model: "{model}", prompt: "a lighthouse at dusk", size: "{size}" }},\n'
            ");\n"
            "console.log(image.data[0].url);"
        ),
    }


def _sample_model() -> tuple[str, str]:
    """The model and size the samples use: dall-e-2 256x256 when offered (the cheapest
    seeded one), else the first enabled model at its profile's default size."""
    from images import selectors as image_selectors
    from images.models import ImageModel
    from images.profiles import PROFILES

    models = image_selectors.image_model_list(kind=ImageModel.Kind.GENERATOR)  # (not the tool models)
    chosen = next((m for m in models if m.public_id == "dall-e-2"), models[0] if models else None)
    if chosen is None:
        return "dall-e-2", "1024x1024"
    profile = PROFILES[chosen.profile]
    return chosen.public_id, "256x256" if "256x256" in profile.sizes else profile.default_size


def login_email_verification(user) -> str:
    """allauth's email-verification mode for a sign-in: ACCOUNT_EMAIL_VERIFICATION for
    an account that has an address (signed up or invited: "mandatory" means it cannot
    sign in before the address is verified); "none" for one without any, which the
    operator made (manage.py member_create, createsuperuser) and vouches for."""
    from allauth.account import app_settings as account_settings
    from allauth.account.models import EmailAddress

    if EmailAddress.objects.filter(user=user).exists():
        return account_settings.EMAIL_VERIFICATION
    return account_settings.EmailVerificationMethod.NONE


@method_decorator(rate_limit(action="login"), name="dispatch")
class LoginView(auth_views.LoginView):
    """The username + password form (members made by the operator may have no email;
    /admin/login/ sends staff here too). The password is checked here, where django-axes
    counts the failures; the session is then opened by allauth, through the same login
    stages as /accounts/login/: the verified email and the second factor (an account
    with TOTP goes on to /accounts/2fa/authenticate/). Posts count against allauth's
    `login` rate like its own form's."""

    template_name = "dashboard/login.html"
    redirect_authenticated_user = True
    next_page = "/dashboard/"

    def form_valid(self, form) -> HttpResponse:
        from allauth.account.utils import perform_login

        user = form.get_user()
        return perform_login(
            self.request,
            user,
            email_verification=login_email_verification(user),
            redirect_url=self.get_success_url(),
        )


logout_view = auth_views.LogoutView.as_view(next_page=LOGIN_URL)


@member_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    from billing.selectors import account_get
    from images.selectors import jobs_in_flight_count

    account = account_get(tenant=request.tenant)
    in_flight = jobs_in_flight_count(tenant=request.tenant)
    base_url = api_base_url(request)
    model, size = _sample_model()
    return render(
        request,
        "dashboard/home.html",
        {
            "account": account,
            "in_flight": in_flight,
            "nav": "home",
            "base_url": base_url,
            "samples": quickstart_samples(base_url=base_url, model=model, size=size),
            "docs_url": DOCS_URL,
            "can_manage": _can_manage(request),
        },
    )


@member_required
def keys(request: HttpRequest) -> HttpResponse:
    """GET lists the tenant's keys; POST creates one and shows the raw key once."""
    if request.method == "POST":
        if not _can_manage(request):
            return render(request, "dashboard/forbidden.html", status=403)
        name = (request.POST.get("name") or "").strip()[:50] or "default"
        key, raw = account_services.api_key_create(
            tenant=request.tenant, name=name, created_by=request.user.get_username(), created_by_user=request.user
        )
        # Rendered, not redirected: the raw key exists in this response only.
        base_url = api_base_url(request)
        model, size = _sample_model()
        return render(
            request,
            "dashboard/key_created.html",
            {
                "key": key,
                "raw": raw,
                "nav": "keys",
                "base_url": base_url,
                "sample": quickstart_samples(base_url=base_url, model=model, size=size)["curl"],
                "docs_url": DOCS_URL,
            },
        )
    return render(
        request,
        "dashboard/keys.html",
        {"keys": account_selectors.key_list(tenant=request.tenant), "can_manage": _can_manage(request), "nav": "keys"},
    )


@member_required
@require_POST
def key_revoke(request: HttpRequest, prefix: str) -> HttpResponse:
    if not _can_manage(request):
        return render(request, "dashboard/forbidden.html", status=403)
    key = account_selectors.key_get(tenant=request.tenant, prefix=prefix)
    if key is None:
        raise Http404("No such key.")
    account_services.api_key_revoke(key=key)
    messages.success(request, f"Key {key.prefix}… revoked.")
    return redirect("dashboard:keys")


def _usage_rows(request: HttpRequest) -> tuple[date, date, list[dict]]:
    from billing.selectors import usage_summary

    end = timezone.now().date()
    start = end - timedelta(days=USAGE_DAYS - 1)
    rows = usage_summary(tenant=request.tenant, start=start, end=end, group_by="day")
    return start, end, rows


@member_required
@require_GET
def usage(request: HttpRequest) -> HttpResponse:
    from billing.selectors import usage_totals

    start, end, rows = _usage_rows(request)
    charts = [bar_chart(rows, start=start, days=USAGE_DAYS, field=field) for field in ("images", "credits")]
    totals = usage_totals(rows)
    return render(
        request,
        "dashboard/usage.html",
        {"rows": rows, "charts": charts, "totals": totals, "start": start, "end": end, "nav": "usage"},
    )


@member_required
@require_GET
def usage_csv(request: HttpRequest) -> HttpResponse:
    from billing.selectors import USAGE_COLUMNS

    start, end, rows = _usage_rows(request)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["day", *USAGE_COLUMNS])
    writer.writeheader()
    writer.writerows(rows)
    response = HttpResponse(buffer.getvalue(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="usage-{start}-{end}-day.csv"'
    return response


@member_required
@require_GET
def jobs(request: HttpRequest) -> HttpResponse:
    from django.urls import reverse

    from images.files import job_images_expired
    from images.selectors import job_list_recent

    recent = job_list_recent(tenant=request.tenant, limit=50)
    items = [
        {
            "job": job,
            # a small WebP (job_image_thumbnail), not the full image
            "thumb": reverse("dashboard:job_image_thumbnail", args=[job.pk, job.images.all()[0].index])
            if job.images.all() and not job_images_expired(job)
            else None,
        }
        for job in recent
    ]
    return render(request, "dashboard/jobs.html", {"items": items, "nav": "jobs"})


@member_required
@require_GET
def job_detail(request: HttpRequest, job_id: str) -> HttpResponse:
    from images import selectors as image_selectors

    job = image_selectors.job_get(tenant=request.tenant, job_id=job_id)
    if job is None:
        raise Http404("No such job.")  # another tenant's job looks exactly like a missing one
    credits_label, credits = job_credits(job)
    return render(
        request,
        "dashboard/job_detail.html",
        {
            "job": job,
            "images": _job_images(request=request, job=job),
            "credits_label": credits_label,
            "credits": credits,
            "nav": "jobs",
        },
    )


def playground_models(*, tenant: Tenant | None = None) -> list[dict[str, Any]]:
    """What the playground offers for each enabled model, read from its API profile
    (images/profiles.py: sizes, qualities, n, GPT-only output formats, dall-e-3's styles)
    and its family's capabilities (negative prompts; unknown capabilities offer it, as
    the API accepts it then), plus the LoRA adapters `tenant` may use with it (issue 23:
    images.services.loras.loras_by_model; none without a tenant). The page renders its
    controls from this list only: [{"id", "profile", "sizes", "default_size",
    "qualities", "default_quality", "n_max", "formats", "styles", "negative_prompt",
    "prompt_max", "loras": [{"id", "trigger", "surcharge_credits"}], "loras_max"}]."""
    from django.conf import settings

    from images import selectors as image_selectors
    from images.models import ImageModel
    from images.profiles import PROFILES, STYLE_TEMPLATES, model_capabilities
    from images.services.loras import loras_by_model

    models = image_selectors.image_model_list(kind=ImageModel.Kind.GENERATOR)  # (tool models: their own endpoints)
    adapters = loras_by_model(tenant=tenant, models=models) if tenant is not None else {}
    options = []
    for model in models:
        profile = PROFILES[model.profile]
        capabilities = model_capabilities(model)
        options.append(
            {
                "id": model.public_id,
                "profile": profile.name,
                "sizes": list(profile.sizes),
                "default_size": profile.default_size,
                "qualities": list(profile.qualities),
                "default_quality": profile.auto_quality,
                "n_max": profile.n_max,
                "formats": ["png", "jpeg", "webp"] if profile.gpt else [],
                "styles": list(STYLE_TEMPLATES) if profile.style else [],
                "negative_prompt": bool(capabilities.get("negative_prompt", True)),
                "prompt_max": profile.prompt_max,
                "loras": [
                    {key: lora[key] for key in ("id", "trigger", "surcharge_credits")}
                    for lora in adapters.get(model.public_id, [])
                ],
                "loras_max": settings.LORA_MAX_PER_REQUEST,
            }
        )
    return options


@member_required
@require_GET
def playground(request: HttpRequest) -> HttpResponse:
    models = playground_models(tenant=request.tenant)
    default = next((m["id"] for m in models if m["id"] == "dall-e-2"), models[0]["id"] if models else "")
    return render(
        request,
        "dashboard/playground.html",
        {"models": models, "default_model": default, "nav": "playground"},
    )


# ---- Billing: balance, packs, vouchers, receipts, low-balance alert (owners pay) ----


def _is_owner(request: HttpRequest) -> bool:
    return request.membership.role == Membership.Role.OWNER


def _billing_context(request: HttpRequest) -> dict[str, Any]:
    from billing import selectors as billing_selectors
    from billing.models import BalanceAlert, CreditPack, VoucherRedemption
    from billing.payments.gateway import payments_enabled
    from billing.payments.services import payments_for
    from billing.services import account_for

    alert = BalanceAlert.objects.filter(tenant=request.tenant).first()
    return {
        "account": account_for(tenant=request.tenant),
        "nav": "billing",
        "is_owner": _is_owner(request),
        "payments_on": payments_enabled(),
        "vouchers_on": billing_selectors.vouchers_enabled(),
        "packs": list(CreditPack.objects.filter(active=True)) if payments_enabled() else [],
        "payments": payments_for(tenant=request.tenant),
        "redemptions": list(VoucherRedemption.objects.filter(tenant=request.tenant).select_related("voucher")[:50]),
        "threshold": alert.threshold if alert else 0,
    }


@member_required
@require_GET
def billing(request: HttpRequest) -> HttpResponse:
    return render(request, "dashboard/billing.html", _billing_context(request))


@member_required
@require_POST
def billing_redeem(request: HttpRequest) -> HttpResponse:
    from billing.vouchers import voucher_redeem
    from core.errors import APIError

    try:
        done = voucher_redeem(
            tenant=request.tenant,
            code=request.POST.get("code", ""),
            actor=f"member:{request.user.pk}",
        )
    except APIError as exc:
        messages.error(request, exc.message)
        return render(
            request, "dashboard/billing.html", _billing_context(request), status=429 if exc.status_code == 429 else 400
        )
    messages.success(request, f"+{done.redemption.credits} credits; your balance is now {done.balance}.")
    return redirect("dashboard:billing")


@member_required
@require_POST
def billing_alert(request: HttpRequest) -> HttpResponse:
    from billing.alerts import balance_alert_set

    if not _can_manage(request):
        return render(request, "dashboard/forbidden.html", status=403)
    from core.errors import APIError

    try:
        threshold = int(request.POST.get("threshold", "0") or 0)
        balance_alert_set(tenant=request.tenant, threshold=threshold)
    except (ValueError, APIError) as exc:
        messages.error(request, getattr(exc, "message", "The threshold must be a whole number of credits."))
        return redirect("dashboard:billing")
    messages.success(
        request, f"Low-balance alert set at {threshold} credits." if threshold else "Low-balance alert turned off."
    )
    return redirect("dashboard:billing")


@member_required
@require_POST
def billing_pay(request: HttpRequest) -> HttpResponse:
    """An owner picks a pack: a PaymentIntent is created and the page confirms it with
    Stripe.js. Credits arrive only with Stripe's signed webhook."""
    from django.conf import settings

    from billing.payments.services import payment_start
    from core.errors import APIError

    if not _is_owner(request):
        return render(request, "dashboard/forbidden.html", status=403)
    try:
        payment, client_secret = payment_start(
            tenant=request.tenant,
            pack_id=int(request.POST.get("pack", "0") or 0),
            created_by=request.user.get_username(),
        )
    except (ValueError, APIError) as exc:
        messages.error(request, getattr(exc, "message", "Pick a credit pack."))
        return redirect("dashboard:billing")
    return render(
        request,
        "dashboard/pay.html",
        {
            "payment": payment,
            "client_secret": client_secret,
            "publishable_key": settings.STRIPE_PUBLISHABLE_KEY,
            "stripe_js": settings.STRIPE_JS_URL,
            "nav": "billing",
            "return_url": request.build_absolute_uri(f"/dashboard/billing/?paid={payment.external_id}"),
        },
    )


# ---- Members and invitations (owners) ----


def _members_page(request: HttpRequest, status: int = 200) -> HttpResponse:
    from accounts.models import APIKey, Invitation

    members = list(Membership.objects.filter(tenant=request.tenant).select_related("user").order_by("id"))
    keys: dict[int, list[APIKey]] = {}
    for key in APIKey.objects.filter(tenant=request.tenant, revoked=False, created_by_user__isnull=False):
        keys.setdefault(key.created_by_user_id, []).append(key)
    return render(
        request,
        "dashboard/members.html",
        {
            # Each member with the active keys they made: removing them revokes those.
            "members": [(m, keys.get(m.user_id, [])) for m in members],
            "invitations": Invitation.objects.filter(tenant=request.tenant, accepted_at__isnull=True).order_by("-id"),
            "is_owner": _is_owner(request),
            "roles": Membership.Role.values,
            "nav": "members",
        },
        status=status,
    )


@member_required
def members(request: HttpRequest) -> HttpResponse:
    from core.errors import APIError

    if request.method == "POST":
        if not _is_owner(request):
            return render(request, "dashboard/forbidden.html", status=403)
        try:
            invitation, _ = account_services.invitation_create(
                email=request.POST.get("email", ""),
                tenant=request.tenant,
                role=request.POST.get("role", "member"),
                invited_by=request.user.get_username(),
                base_url=_base_url(request),
            )
        except APIError as exc:
            messages.error(request, exc.message)
            return _members_page(request, status=exc.status_code)
        messages.success(request, f"Invitation sent to {invitation.email}.")
        return redirect("dashboard:members")
    return _members_page(request)


@member_required
@require_POST
def member_remove(request: HttpRequest, membership_id: int) -> HttpResponse:
    """An owner removes a member; the keys that member made are revoked with them."""
    from core.errors import APIError

    if not _is_owner(request):
        return render(request, "dashboard/forbidden.html", status=403)
    membership = Membership.objects.filter(tenant=request.tenant, pk=membership_id).select_related("user").first()
    if membership is None:
        raise Http404("No such member.")
    try:
        revoked = account_services.membership_remove(membership=membership)
    except APIError as exc:
        messages.error(request, exc.message)
        return _members_page(request, status=exc.status_code)
    messages.success(
        request,
        f"{membership.user.get_username()} removed; {len(revoked)} key(s) they made revoked"
        + (f": {', '.join(k.prefix + '…' for k in revoked)}." if revoked else "."),
    )
    if membership.user_id == request.user.pk:
        return redirect("dashboard:home")
    return redirect("dashboard:members")


@require_GET
def invitation_accept(request: HttpRequest, token: str) -> HttpResponse:
    """The emailed link: remembers the invitation in the session (it opens sign-up in
    `invite` mode) and goes on to allauth's sign-up page."""
    from accounts.adapters import INVITATION_SESSION_KEY

    invitation = account_services.invitation_find(token=token)
    if invitation is None:
        return render(request, "dashboard/invitation_invalid.html", status=404)
    from urllib.parse import urlencode

    request.session[INVITATION_SESSION_KEY] = token
    return redirect(f"/accounts/signup/?{urlencode({'email': invitation.email})}")


# ---- Prices and job thumbnails (issue 21) ----


def _job_images(*, request: HttpRequest, job) -> list[dict[str, Any]]:
    """The job page's images: a thumbnail served by `job_image_thumbnail` (same tenant
    check as the page), the original's signed link and a download file name."""
    from django.urls import reverse

    from images.files import image_url, job_images_expired

    if job_images_expired(job):
        return []
    base = _base_url(request)
    return [
        {
            "index": image.index,
            "thumb": reverse("dashboard:job_image_thumbnail", args=[job.pk, image.index]),
            "url": image_url(image, base_url=base),
            "download_name": f"{job.pk}-{image.index}.{image.file.rsplit('.', 1)[-1]}",
            "width": image.width,
            "height": image.height,
        }
        for image in job.images.all()
    ]


def job_credits(job) -> tuple[str, int]:
    """What the job page says about credits: ("Credits charged", captured) once the job
    has finished (0 for a failed or cancelled one, whose hold was released), else
    ("Credits held", the quote held while it runs)."""
    hold = getattr(job, "hold", None)
    if job.status in job.TERMINAL:
        return "Credits charged", hold.captured if hold is not None else 0
    return "Credits held", hold.amount if hold is not None else job.quote


@member_required
@require_GET
def job_image_thumbnail(request: HttpRequest, job_id: str, index: int) -> HttpResponse:
    """A small WebP of one of the tenant's images (images.files.image_thumbnail, made
    once and cached). Another tenant's job, a missing index or a purged image: 404."""
    from images import selectors as image_selectors
    from images.files import ImagesExpired, StorageUnavailable, image_thumbnail, job_images_expired

    job = image_selectors.job_get(tenant=request.tenant, job_id=job_id)
    image = job.images.filter(index=index).first() if job is not None and not job_images_expired(job) else None
    if image is None:
        raise Http404("No such image.")
    try:
        data = image_thumbnail(image)
    except ImagesExpired as exc:
        raise Http404("The image is no longer stored.") from exc
    except StorageUnavailable:
        return HttpResponse("The image store is unavailable; retry shortly.", status=503, headers={"Retry-After": "5"})
    return HttpResponse(data, content_type="image/webp", headers={"Cache-Control": "private, max-age=86400"})


def price_table() -> list[dict[str, Any]]:
    """Every enabled model's prices for the prices page: [{"model": public id, "profile",
    "lines": [{"kind", "size", "quality", "credits", "money": "$0.016" or ""}]}], the same
    lines as the `pricing` of GET /v1/models (images.selectors.model_pricing), money in
    the active language (billing.currencies, Babel)."""
    from billing.currencies import decimal_money_format
    from images import selectors as image_selectors

    table = []
    for model in image_selectors.image_model_list():
        lines = [
            {
                "kind": line.kind,
                "size": line.size,
                "quality": line.quality,
                "credits": line.credits,
                "money": decimal_money_format(line.amount, line.currency) if line.amount is not None else "",
            }
            for line in image_selectors.model_pricing(model)
        ]
        table.append({"model": model.public_id, "profile": model.profile, "lines": lines})
    return table


@member_required
@require_GET
def prices(request: HttpRequest) -> HttpResponse:
    """/dashboard/prices/: the price of one image per model, kind, size and quality."""
    from billing.currencies import decimal_money_format
    from billing.selectors import credits_money

    one = credits_money(1)  # what one credit is worth (CREDIT_VALUE), None when unset
    credit = decimal_money_format(*one) if one else ""
    return render(request, "dashboard/prices.html", {"models": price_table(), "credit_value": credit, "nav": "prices"})


@require_GET
def favicon(request: HttpRequest) -> HttpResponse:
    """/favicon.ico (browsers ask for it on every page, the API's docs and the admin
    included): the dashboard's icon from its static files, 200, cached a day."""
    from django.contrib.staticfiles import finders
    from django.http import FileResponse

    path = finders.find("dashboard/favicon.ico")
    if path is None:
        raise Http404("No icon.")
    response = FileResponse(open(path, "rb"), content_type="image/x-icon")  # noqa: SIM115 (closed by Django)
    response["Cache-Control"] = "public, max-age=86400"
    return response
