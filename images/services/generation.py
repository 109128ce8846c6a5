"""The one path from a parsed request to a queued, paid job: `generation_create`.

Every entry point (the OpenAI generations, edits and variations, the vendor shapes of
the seeds, the dashboard playground) parses its request into a `GenerationRequest`
and calls `generation_create` with its `Caller`; it never decides anything itself.
The checks run cheapest first, so a request that will be refused is refused before
any image is decoded or fetched, and nothing is written before everything that can
refuse has passed:

 1. the tenant's status (403 `tenant_suspended`);
 2. the model and the key's scope: model list (403 `model_not_allowed`), a monthly
    budget already used up, the key's own or one above it (402 `key_budget_exceeded`);
 3. rate limits (429, counted once per request) and, for requests with input images,
    the in-flight cap (429; a plain generation's is checked in step 11 only);
 4. the model's queue is served by this installation's workers (503, no retry);
 5. what the model can do (its profile's capabilities: 400 `unsupported_model`);
 6. input images, cheaply: counts, formats, byte and pixel limits, mask rules, read
    from headers without decoding;
 7. strict parameters for the model's profile (400), then the request's LoRA adapters
    against the catalog (images.services.loras: 400 `lora_not_found`, `lora_incompatible`);
 8. moderation at the tenant's level (400, recorded);
 9. the price (fails closed for unpriced models) against the key's budget and the
    available balance (402) — still before any fetch or decode (requests with input
    images only: a plain generation has nothing to fetch, so step 11 checks it once);
10. URL fetches and decoding of the inputs (in memory);
11. one transaction: the job, the credit hold (one conditional UPDATE that takes the
    credits and locks the account row; 402 when they are not there), the in-flight cap
    under that lock (429), the key's budgets (402), the usage record and the
    Idempotency-Key link; rolled back if the client has left meanwhile (499);
12. after commit: the inputs are stored, then the job is sent to its queue. A failure
    there fails the job and releases its hold before the caller hears 503.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import APIKey, Tenant
from accounts.principals import Caller, tenant_active_check
from accounts.ratelimit import rate_limit_check
from billing import services as billing
from billing.errors import InsufficientCredits
from billing.models import UsageRecord
from billing.selectors import account_get
from core.errors import APIError, InvalidRequest, PermissionDeniedError, RateLimited, ServiceUnavailable
from core.idempotency import idempotency_attach_job
from core.waiting import ClientDisconnected
from images import selectors
from images.dispatch import job_enqueue, queue_is_served
from images.models import ImageModel, Job
from images.profiles import PROFILES, Inputs, capabilities_check, input_image_tokens
from images.services import inputs as inputs_service
from images.services.inputs import InputImage, PreparedInputs
from images.services.loras import ResolvedLora, loras_resolve
from images.services.moderation import prompt_moderate
from images.tool_models import TOOL_JOB_KINDS, tool_inputs_rules, tool_params_resolve
from images.validation import GPT_ONLY, VARIATION_STRENGTH, GenerationParams, edit_strength, generation_params_resolve

DEFAULT_MODEL = "dall-e-2"
DEFAULT_GPT_MODEL = "gpt-image-1"


class ModelUnavailable(APIError):
    """The model's queue is not served by this installation's workers (an operator's
    configuration error): its jobs would sit until their deadline. A retry cannot
    help, so the SDK is told not to retry."""

    status_code = 503
    type = "server_error"
    code = "model_unavailable"
    should_retry = False


@dataclass
class GenerationRequest:
    """A parsed request, whatever its shape.

    endpoint: the path it came in on (usage records, moderation log);
    kind: Job.Kind (generate, edit, variation);
    fields: the serializer's validated fields (OpenAI names; null = default);
    images / mask: input images as sent (edits and variations);
    default_model: the model when `fields` names none (a vendor's default);
    json_references: the images came as JSON references (OpenAI's JSON edit body,
      which only GPT image models take);
    idempotency_record_id: links the job to its Idempotency-Key record;
    client_gone: whether the client has already left (core.waiting.ClientWatch.gone),
      asked last, inside the hold's transaction: a client that left is charged nothing."""

    endpoint: str
    kind: str = Job.Kind.GENERATE
    fields: dict[str, Any] = field(default_factory=dict)
    images: list[InputImage] = field(default_factory=list)
    mask: InputImage | None = None
    default_model: str = DEFAULT_MODEL
    json_references: bool = False
    idempotency_record_id: int | None = None
    client_gone: Callable[[], bool] | None = None
    # `Cancel-After` in seconds (images.validation.cancel_after_parse; issue 24): the job's
    # deadline is the earlier of this and JOB_DEADLINE_SECONDS. None: the default only.
    cancel_after: float | None = None
    # An edit's strength (0-1, diffusers' img2img `strength`) set by a vendor shape that
    # takes one (Stability's `strength`, images/stability.py); None: `edit_strength`'s rule.
    strength: float | None = None
    # What the worker does to each image before storing it (images/output_shape.py:
    # `keep_unmasked`, `box`, `size`), e.g. Stability's outpaint back to its exact canvas.
    output: dict[str, Any] | None = None
    # A vendor action with its own price rows (billing.services.price_quote's `action`,
    # e.g. the Midjourney proxy's `mj_upscale`); "" or no such row: the kind's price.
    price_action: str = ""
    # False: the job runs no model; its input image, shaped by `output` (its `size`), is
    # the result (Midjourney's U1-U4: a grid cell, upscaled by resizing; images/worker.py).
    pipeline: bool = True
    # Rows a vendor shape keeps beside the job (the Midjourney proxy's task), written in
    # the hold's transaction right after the job: a refusal rolls them back with it.
    on_job_created: Callable[[Job], None] | None = None
    # An edit whose mask the worker makes from text before inpainting (Stability's
    # search-and-replace and search-and-recolor, images/stability.py; images/search_mask.py):
    # {"segmenter": a segmenter model's public id, "text": what to find, "grow": pixels}.
    mask_from: dict[str, Any] | None = None
    # A text-to-image job whose input image is a control image (Stability's control/sketch
    # and control/structure) or a style reference (control/style), images/control.py:
    # control {"controlnet", "preprocessor", "depth_estimator", "scale"}; style
    # {"adapter", "scale"}. Written to the job's extra for the worker.
    control: dict[str, Any] | None = None
    style: dict[str, Any] | None = None


def model_resolve(*, fields: dict[str, Any], default: str, api_key: APIKey | None) -> ImageModel:
    """The requested model, or the default (`dall-e-2` switches to `gpt-image-1` when a
    GPT-image parameter is used, reference §2). 400 `model_not_found`; 403
    `model_not_allowed` when the key's model list excludes it."""
    public_id = fields.get("model")
    if not public_id:
        gpt_used = any(fields.get(name) not in (None, False) for name in GPT_ONLY)
        public_id = DEFAULT_GPT_MODEL if gpt_used and default == DEFAULT_MODEL else default
    model = selectors.image_model_get(public_id=public_id)
    if model is None:
        raise InvalidRequest(
            f"The model '{public_id}' does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )
    if api_key is not None and api_key.allowed_models and public_id not in api_key.allowed_models:
        raise PermissionDeniedError(
            f"This API key may not use the model '{public_id}'.", param="model", code="model_not_allowed"
        )
    return model


def _refused(
    *, caller: Caller, model: ImageModel, request: GenerationRequest, params: GenerationParams | None, error: APIError
) -> None:
    """A usage record for a request refused for money or capacity (402, 429)."""
    UsageRecord.objects.create(
        tenant=caller.tenant,
        api_key=caller.api_key,
        model=model.public_id,
        endpoint=request.endpoint,
        n=params.n if params else 1,
        size=params.size if params else "",
        quality=params.quality if params else "",
        steps=params.steps if params else 0,
        outcome=UsageRecord.Outcome.REFUSED,
        error_code=error.code or "",
    )


def _in_flight_cap(tenant: Tenant) -> int:
    return tenant.max_concurrent_jobs or settings.DEFAULT_MAX_CONCURRENT_JOBS


def _in_flight_error(cap: int) -> RateLimited:
    return RateLimited(
        f"Too many images in progress: your organization may have {cap} jobs queued or running at "
        "once. Retry when one finishes.",
        headers={"Retry-After": "2"},
    )


def _in_flight_count(tenant: Tenant) -> int:
    """The tenant's jobs queued or running: its account's open holds (one per job in
    flight, billing.models.CreditAccount.holds_open)."""
    return account_get(tenant=tenant).holds_open


def _money_precheck(*, caller: Caller, quote: int) -> None:
    """Reads, no locks and no writes: refuse now what the hold would refuse anyway (the
    key's budgets, its own and those above it; the available balance), before any fetch
    or decode. The hold re-checks under lock."""
    billing.key_budget_check(api_key=caller.api_key, amount=quote)
    account = account_get(tenant=caller.tenant)
    if account.available < quote:
        raise billing.insufficient_credits(account=account, cost=quote)


def _resolve(*, request: GenerationRequest, model: ImageModel) -> GenerationParams:
    if request.kind in TOOL_JOB_KINDS:  # (issue 26: the input's size, images/tool_models.py)
        return tool_params_resolve(request=request, model=model)
    data = dict(request.fields)
    profile = PROFILES[model.profile]
    if request.kind == Job.Kind.VARIATION:
        data["prompt"] = ""  # no prompt: the variation comes from the image alone
    if request.kind != Job.Kind.GENERATE and profile.gpt and data.get("size") in (None, "", "auto"):
        first = request.images[0]
        # size=auto for GPT image edits: the size nearest the first input's aspect
        # ratio (1024x1024 until a URL input has been fetched).
        data["size"] = _nearest_gpt_size(first.width, first.height) if first.peeked else "1024x1024"
    return generation_params_resolve(data=data, model=model, prompt_required=request.kind != Job.Kind.VARIATION)


def _nearest_gpt_size(width: int, height: int) -> str:
    ratio = width / height
    if ratio > 1.25:
        return "1536x1024"
    if ratio < 0.8:
        return "1024x1536"
    return "1024x1024"


def _quote(*, model: ImageModel, request: GenerationRequest, params: GenerationParams, surcharge: int = 0) -> int:
    """The model's price for the request, plus `surcharge` credits per image (the LoRA
    adapters' surcharges, issue 23). Integers only."""
    base = billing.price_quote(
        model=model,
        kind=request.kind,
        size=params.size,
        quality=params.quality,
        n=params.n,
        action=request.price_action,
    )
    return base + surcharge * params.n


def _job_params(params, request: GenerationRequest) -> dict[str, Any]:
    """The job's recorded parameters; with `cancel_after` (seconds) when the client's
    Cancel-After is the job's deadline, so that reaching it cancels the job by the
    cancel rules (jobs.job_deadline_reached) instead of failing it."""
    recorded = params.as_json()
    if request.cancel_after is not None and request.cancel_after < settings.JOB_DEADLINE_SECONDS:
        recorded["cancel_after"] = request.cancel_after
    return recorded


@dataclass
class _Draft:
    """What the phases of generation_create learn about one request, in order: the
    admission (model, in-flight cap, whether money and the cap are pre-checked), the
    profile's input rules, the parameters and LoRA adapters, the price (integer
    credits), the job id and the decoded inputs."""

    caller: Caller
    request: GenerationRequest
    model: ImageModel
    cap: int
    prechecked: bool
    rules: Inputs | None = None  # the profile's input rules for the request's kind (None: a plain generation)
    params: GenerationParams | None = None
    loras: list[ResolvedLora] = field(default_factory=list)
    surcharge: int = 0  # credits per image for the LoRA adapters
    quote: int = 0  # credits
    job_id: uuid.UUID = field(default_factory=uuid.uuid4)
    prepared: PreparedInputs | None = None  # the decoded init image and mask (requests with input images)


def generation_create(*, caller: Caller, request: GenerationRequest) -> Job:
    """Turn a parsed request into a queued job with its credits held (the order of the
    checks is in this module's docstring). Returns the committed, enqueued Job.
    Raises APIError subclasses: 400, 402, 403, 413, 429, 503; nothing is charged,
    stored or queued when it raises."""
    draft = _admit(caller=caller, request=request)  # steps 1-4
    _validate(draft)  # steps 5-6
    _price(draft)  # steps 7-9
    _inputs_prepare(draft)  # step 10
    return _hold(draft)  # steps 11-12


def _admit(*, caller: Caller, request: GenerationRequest) -> _Draft:
    """Steps 1-4: the tenant is active, the model and the key's scope, a key budget
    already used up, the rate limits, the in-flight cap (pre-checked for requests with
    input images only) and the model's queue being served."""
    tenant = caller.tenant
    tenant_active_check(tenant=tenant)
    model = model_resolve(fields=request.fields, default=request.default_model, api_key=caller.api_key)
    # A budget already used up (the key's own, or one above it) is refused now; the
    # request's own price is checked against them once priced (step 9).
    billing.key_budget_check(api_key=caller.api_key, amount=None)
    rate_limit_check(caller=caller)
    cap = _in_flight_cap(tenant)
    # Pre-checks (reads, no locks) only where something expensive (a fetch, a decode)
    # comes between them and the hold's transaction, which checks again under the lock;
    # a plain generation is checked once, there (issue 20: 2 statements fewer).
    prechecked = bool(request.images) or request.mask is not None
    if cap and prechecked and _in_flight_count(tenant) >= cap:
        error = _in_flight_error(cap)
        _refused(caller=caller, model=model, request=request, params=None, error=error)
        raise error
    if not queue_is_served(model.queue):
        raise ModelUnavailable(
            f"The model '{model.public_id}' is not being served right now (its queue "
            f"'{model.queue}' has no workers). Contact your platform operator.",
            param="model",
        )
    return _Draft(caller=caller, request=request, model=model, cap=cap, prechecked=prechecked)


def _validate(draft: _Draft) -> None:
    """Steps 5-6: what the model can do (its profile's kinds and capabilities), then
    the input images from their headers only (counts, formats, bytes, pixels, mask)."""
    model, request = draft.model, draft.request
    if request.kind in TOOL_JOB_KINDS or model.kind != ImageModel.Kind.GENERATOR:  # (issue 26: tool models)
        draft.rules = tool_inputs_rules(model=model, request=request)
        inputs_service.inputs_peek(request.images, request.mask, rules=draft.rules)
        return
    profile = PROFILES[model.profile]
    rules = profile.inputs_for(request.kind)
    if request.kind not in profile.kinds or (request.kind != Job.Kind.GENERATE and rules is None):
        action = {"edit": "image edits", "variation": "image variations"}.get(request.kind, "image generation")
        raise InvalidRequest(
            f"The model '{model.public_id}' does not support {action}.", param="model", code="unsupported_model"
        )
    if request.json_references and not rules.json_body:
        raise InvalidRequest(
            f"JSON edit bodies (`images: [{{image_url}}]`) are only supported for GPT image models, "
            f"not '{model.public_id}'; send the image as multipart/form-data.",
            param="images",
            code="unsupported_parameter",
        )
    capabilities_check(model=model, kind=request.kind, masked=request.mask is not None, fields=request.fields)
    if rules is not None:
        inputs_service.inputs_peek(request.images, request.mask, rules=rules)
    draft.rules = rules


def _price(draft: _Draft) -> None:
    """Steps 7-9: the parameters for the profile, the LoRA adapters, moderation, then
    the price (LoRA surcharges included) against the key's budgets and the available
    balance, for requests whose inputs are still to be fetched and decoded."""
    caller, request, model = draft.caller, draft.request, draft.model
    draft.params = params = _resolve(request=request, model=model)
    draft.loras = loras_resolve(tenant=caller.tenant, model=model, entries=request.fields.get("loras") or [])
    draft.surcharge = sum(lora.surcharge_credits for lora in draft.loras)
    if params.prompt.strip():
        prompt_moderate(
            tenant=caller.tenant,
            api_key=caller.api_key,
            model=model,
            prompt=params.prompt,
            # A body without the field resolves to "auto"; JSON edits take it as generations do.
            requested=params.moderation,
            endpoint=request.endpoint,
            request_id=caller.request_id,
        )
    draft.quote = _quote(model=model, request=request, params=params, surcharge=draft.surcharge)
    if draft.prechecked:
        try:
            _money_precheck(caller=caller, quote=draft.quote)
        except InsufficientCredits as exc:
            _refused(caller=caller, model=model, request=request, params=params, error=exc)
            raise


def _inputs_prepare(draft: _Draft) -> None:
    """Step 10 (requests with input images): URL inputs fetched, the parameters and the
    price again when the size waited for the first image (GPT `size=auto`), the init
    image and mask decoded in memory, and their file names and strength in the
    job's parameters."""
    request, model, rules = draft.request, draft.model, draft.rules
    if rules is None:
        return
    size_pending = not request.images[0].peeked
    inputs_service.inputs_fetch(request.images, request.mask, rules=rules)
    if size_pending:
        draft.params = _resolve(request=request, model=model)
        draft.quote = _quote(model=model, request=request, params=draft.params, surcharge=draft.surcharge)
    params = draft.params
    prepared = inputs_service.inputs_prepare(
        request.images, request.mask, rules=rules, width=params.width, height=params.height
    )
    if prepared.mask is not None:  # (a dall-e-2 image's transparent pixels are a mask too)
        capabilities_check(model=model, kind=request.kind, masked=True, fields={})
    init_name, mask_name = inputs_service.input_names(draft.job_id)
    params.extra = {
        **params.extra,  # (what the resolver set: a prompted upscale's settings, images/tool_models.py)
        "init_file": init_name,
        "mask_file": mask_name if prepared.mask is not None else None,
        "strength": VARIATION_STRENGTH
        if request.kind == Job.Kind.VARIATION
        else request.strength
        if request.strength is not None
        else edit_strength(data=request.fields, model=model),
        "inputs": len(request.images),
        "image_tokens": sum(input_image_tokens(i.width, i.height) for i in request.images)
        if PROFILES[model.profile].gpt
        else 0,
    }
    draft.prepared = prepared


def _hold(draft: _Draft) -> Job:
    """Step 11: one transaction for the job, the credit hold (the in-flight cap and the
    key's budgets under its locks), the usage record and the Idempotency-Key link,
    rolled back when the client has left. Step 12 (`_enqueue`) runs once it commits.
    A 402 or 429 leaves a refused usage record."""
    caller, request, model, params = draft.caller, draft.request, draft.model, draft.params
    tenant, key, cap = caller.tenant, caller.api_key, draft.cap
    params.loras = [lora.as_json() for lora in draft.loras]
    if request.output and "output" not in params.extra:
        params.extra = {**params.extra, "output": request.output}
    if not request.pipeline:  # (Midjourney's U1-U4: images/worker.py `_deliver_input`)
        params.extra = {**params.extra, "pipeline": False}
    if request.mask_from:  # (the worker makes the mask: images/search_mask.py)
        params.extra = {**params.extra, "mask_from": request.mask_from}
    if request.control:  # (the input is the control image: images/control.py)
        params.extra = {**params.extra, "control": request.control}
    if request.style:  # (the input is the IP-Adapter's reference: images/control.py)
        params.extra = {**params.extra, "style": request.style}
    try:
        with transaction.atomic():
            # The job first (the hold refers to it), then the hold: it takes the credits
            # with one conditional UPDATE that locks the account row, and under that lock
            # counts the tenant's jobs in flight (this one included) for the cap.
            job = Job.objects.create(
                id=draft.job_id,
                tenant=tenant,
                api_key=key,
                model=model,
                kind=request.kind,
                endpoint=request.endpoint,
                params=_job_params(params, request),
                prompt=params.model_prompt,
                n=params.n,
                width=params.width,
                height=params.height,
                steps=params.steps,
                guidance=params.guidance,
                seed=params.seed,
                quote=draft.quote,
                deadline=timezone.now()
                + timedelta(seconds=min(settings.JOB_DEADLINE_SECONDS, request.cancel_after or math.inf)),
                webhook_url=request.fields.get("webhook_url") or "",
            )
            billing.credits_hold(
                tenant=tenant,
                api_key=key,
                job=job,
                amount=draft.quote,
                locked_check=partial(_in_flight_locked_check, cap=cap) if cap else None,
            )
            UsageRecord.objects.create(
                tenant=tenant,
                api_key=key,
                job=job,
                model=model.public_id,
                endpoint=request.endpoint,
                n=params.n,
                size=params.size,
                quality=params.quality,
                steps=params.steps,
            )
            if request.idempotency_record_id is not None:
                idempotency_attach_job(record_id=request.idempotency_record_id, job_id=job.pk)
            if request.on_job_created is not None:
                request.on_job_created(job)
            if request.client_gone is not None and request.client_gone():
                # Gave up while queued in the server or while its inputs were fetched:
                # nobody would receive the images (issue 20). Rolled back, nothing held.
                raise ClientDisconnected("The client disconnected before its job was created; nothing was charged.")
            transaction.on_commit(lambda: _enqueue(job=job, prepared=draft.prepared))
    except (InsufficientCredits, RateLimited) as exc:
        _refused(caller=caller, model=model, request=request, params=params, error=exc)
        raise
    return job


def _enqueue(*, job: Job, prepared: PreparedInputs | None) -> None:
    """Step 12, after the hold's commit: the inputs stored under the job's names, then
    the job sent to its model's queue. A storage failure fails the job (releasing its
    hold) and answers 503; job_enqueue does the same for a broker failure."""
    if prepared is not None:
        try:
            inputs_service.inputs_store(prepared, job_id=job.pk)
        except Exception as exc:
            from images.services.jobs import job_fail

            job_fail(job_id=job.pk, code="storage_failed", message="The job's input images could not be stored.")
            raise ServiceUnavailable(
                "Storing the input images failed; nothing was charged. Retry shortly.", headers={"Retry-After": "5"}
            ) from exc
    job_enqueue(job=job)


def _in_flight_locked_check(in_flight: int, *, cap: int) -> None:
    """The authoritative in-flight cap, run by credits_hold under the account row lock
    (which serialises the tenant's submissions, so two requests cannot both take the
    last slot) with the tenant's jobs in flight counted by the account's open holds,
    this request's own included: more than `cap` refuses (429)."""
    if in_flight > cap:
        raise _in_flight_error(cap)
