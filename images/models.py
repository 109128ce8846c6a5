from __future__ import annotations

import uuid

from django.db import models

from accounts.models import APIKey, Tenant


class ImageModel(models.Model):
    """A model the API offers: its public id, API profile, diffusers source and queue."""

    class Profile(models.TextChoices):
        DALLE2 = "dall-e-2"
        DALLE3 = "dall-e-3"
        GPT_IMAGE = "gpt-image"

    class Kind(models.TextChoices):
        """What the model does (issue 26 item 1; images/tool_models.py, docs/models.md):
        a diffusers generator, or a tool model that runs on an input image."""

        GENERATOR = "generator"
        UPSCALER = "upscaler"  # an ESRGAN-class network loaded with spandrel
        BACKGROUND_REMOVER = "background_remover"  # transformers image segmentation -> alpha
        SEGMENTER = "segmenter"  # text-prompted masks (CLIPSeg)
        CAPTIONER = "captioner"  # transformers image-to-text (describe)
        # Control tool models (Stability's control/*, images/control.py): run inside a
        # generator's job, never requested as a model of their own.
        CONTROLNET = "controlnet"  # a diffusers ControlNetModel folder
        DEPTH_ESTIMATOR = "depth_estimator"  # transformers AutoModelForDepthEstimation + processor
        IP_ADAPTER = "ip_adapter"  # ip-adapter.safetensors + image_encoder/ (CLIPVisionModelWithProjection)

    public_id = models.CharField(max_length=100, unique=True)
    # A tool model's profile is not used for its tool jobs (images/tool_models.py has
    # their rules); it only names the API shape of a generator.
    profile = models.CharField(max_length=16, choices=Profile.choices)
    kind = models.CharField(max_length=32, choices=Kind.choices, default=Kind.GENERATOR)
    # A local folder (absolute, or relative to MODEL_DIR) or a hub id such as
    # "stabilityai/stable-diffusion-xl-base-1.0"; loaded with from_pretrained.
    source = models.CharField(max_length=500)
    dtype = models.CharField(max_length=16, default="auto")  # auto|float16|bfloat16|float32
    queue = models.CharField(max_length=64, default="gpu")
    # Denoising steps per quality value, e.g. {"low": 2, "medium": 3, "high": 4, "standard": 4, "hd": 6}.
    steps_by_quality = models.JSONField(default=dict)
    guidance = models.FloatField(default=5.0)  # classifier-free guidance scale (not money)
    # Images per pipeline call when batching jobs across requests; null = the device's
    # default (PIPELINE_MAX_BATCH, else 1 on CPU, 8 on CUDA). Measure before raising.
    max_batch = models.PositiveSmallIntegerField(null=True, blank=True)
    # What the architecture can do (images/families_catalog.py `capabilities_of`): family,
    # guidance mode, negative prompts, edit modes, size multiple. Filled by `manage.py
    # model_add` or by the worker that loads the model; {} = unknown (nothing refused).
    capabilities = models.JSONField(default=dict, blank=True)
    # The `source` that `capabilities` were computed from: written with them (always
    # through images/services/models.py or the worker's correction). A row whose source
    # has changed since has stale capabilities, read as unknown (images.profiles).
    capabilities_source = models.CharField(max_length=500, blank=True, default="", editable=False)
    enabled = models.BooleanField(default=True)
    # A model without price rows is refused (fail closed) unless the operator marks it free on purpose.
    is_free = models.BooleanField(default=False, help_text="Serve without price rows, charging 0 credits.")
    owned_by = models.CharField(max_length=100, default="platform")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.public_id


class Job(models.Model):
    """One request's generation work; also readable as a task."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    class Kind(models.TextChoices):
        GENERATE = "generate"
        EDIT = "edit"
        VARIATION = "variation"
        # Tool jobs (issue 26 item 1; images/tool_models.py): one input image, run by a
        # tool model of the matching ImageModel.Kind. Short values: Price.kind is 16 wide.
        UPSCALE = "upscale"
        REMOVE_BACKGROUND = "remove_bg"
        SEGMENT = "segment"
        DESCRIBE = "describe"

    TERMINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="jobs")
    api_key = models.ForeignKey(APIKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs")
    model = models.ForeignKey(ImageModel, on_delete=models.PROTECT, related_name="jobs")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.GENERATE)
    endpoint = models.CharField(max_length=100, default="/v1/images/generations")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    # The validated request: prompt, sizes, formats... (see images.validation.GenerationParams)
    params = models.JSONField(default=dict)
    prompt = models.TextField()  # the exact prompt the model receives (revised_prompt)
    n = models.PositiveSmallIntegerField(default=1)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    steps = models.PositiveIntegerField()
    guidance = models.FloatField()
    seed = models.BigIntegerField()
    quote = models.BigIntegerField(default=0)  # credits held for this job
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)  # counted by the worker's tokenizer
    steps_done = models.PositiveIntegerField(default=0)
    attempts = models.PositiveSmallIntegerField(default=0)
    error_code = models.CharField(max_length=64, blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    deadline = models.DateTimeField(db_index=True)
    gpu_ms = models.PositiveIntegerField(null=True, blank=True)  # pipeline time attributed to this job
    # Extension (issue 24): a per-request webhook target (`webhook_url`), told of the
    # job's end like the tenant's endpoints (images.services.webhooks); "" = none.
    webhook_url = models.CharField(max_length=2000, blank=True, default="")
    # Extension (issue 25): what the output classifier did to this job's images, shown
    # on the task: {} (nothing found, or not checked), else {"action": "blocked" |
    # "blurred" | "flagged", "categories": [...], "withheld": [image indexes not
    # delivered]} (images/services/output_moderation.py).
    output_moderation = models.JSONField(default=dict, blank=True)
    # Extension (issue 26 item 1): a tool job's text result (a describe's captions), "" otherwise.
    output_text = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["tenant", "-created_at"])]

    def __str__(self) -> str:
        return f"job {self.pk} ({self.status})"

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


class GeneratedImage(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="images")
    index = models.PositiveSmallIntegerField()
    file = models.CharField(max_length=300)  # storage name
    content_type = models.CharField(max_length=32)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    bytes = models.PositiveIntegerField()
    # The seed this image was made with (images.validation.image_seed(job.seed, index));
    # sending it back as `seed` with n=1 makes the same image. Null only for rows made
    # before it was recorded (the migration fills those in from the job).
    seed = models.BigIntegerField(null=True, blank=True)
    # Extension (issue 25): {} for an image the output classifier passed (or did not
    # check), else {"action": "blurred" | "flagged", "categories": [...]}, shown on its data item.
    moderation = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["index"]
        constraints = [models.UniqueConstraint(fields=["job", "index"], name="image_job_index_unique")]

    def __str__(self) -> str:
        return f"image {self.index} of job {self.job_id}"


class ModerationTerm(models.Model):
    """A word or phrase that blocks prompts of its category (admin-editable, seeded)."""

    class Tier(models.TextChoices):
        EXPLICIT = "explicit"
        MILD = "mild"  # non-explicit nudity, gore: blocked under `strict` only

    class Category(models.TextChoices):
        SEXUAL = "sexual"
        SEXUAL_MINORS = "sexual_minors"
        VIOLENCE = "violence"
        SELF_HARM = "self_harm"
        HATE = "hate"
        ILLICIT = "illicit"

    category = models.CharField(max_length=32, choices=Category.choices, db_index=True)
    tier = models.CharField(max_length=16, choices=Tier.choices, default=Tier.EXPLICIT)
    term = models.CharField(max_length=200)
    enabled = models.BooleanField(default=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["category", "tier", "term"], name="moderation_term_unique")]

    def __str__(self) -> str:
        return f"{self.category}/{self.tier}: {self.term}"


class BlockedPrompt(models.Model):
    """A request refused by moderation, for the operator to review."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="blocked_prompts")
    api_key = models.ForeignKey(APIKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    model = models.CharField(max_length=100)
    endpoint = models.CharField(max_length=100)
    level = models.CharField(max_length=16)
    categories = models.JSONField(default=list)
    matched = models.JSONField(default=list)
    prompt = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"blocked on {self.endpoint} ({', '.join(self.categories)})"


class BlockedOutput(models.Model):
    """A generated image the output classifier withheld (a tenant on `block`; issue 25),
    for the operator's review: its scores and a small thumbnail (`thumbnail`, a storage
    name) that only staff can open, through the admin. The image itself is never stored."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="blocked_outputs")
    api_key = models.ForeignKey(APIKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="blocked_outputs")
    index = models.PositiveSmallIntegerField()  # the image's place among the job's n
    model = models.CharField(max_length=100)
    endpoint = models.CharField(max_length=100)
    level = models.CharField(max_length=16)  # the moderation level its thresholds came from
    categories = models.JSONField(default=list)  # the unsafe labels at or over the threshold
    scores = models.JSONField(default=dict)  # every label's probability (0..1)
    thumbnail = models.CharField(max_length=300, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"withheld image {self.index} of job {self.job_id} ({', '.join(self.categories)})"


WEBHOOK_EVENTS = ("image.generation.completed", "image.generation.failed", "image.generation.cancelled")


class WebhookSecretFields(models.Model):
    """A Standard Webhooks signing secret with rotation (issue 24).

    Secrets are stored as given out (`whsec_<base64 of 32 random bytes>`): HMAC signing
    needs the secret itself, so it cannot be hashed like an API key; the database is
    the trust boundary (docs/operations.md, "Webhooks"). After a rotation the previous
    secret keeps signing too (a second `v1,` signature) until `previous_secret_expires_at`."""

    secret = models.CharField(max_length=100)
    previous_secret = models.CharField(max_length=100, blank=True, default="")
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True

    def signing_secrets(self, now) -> list[str]:
        """The secrets that sign a message sent at `now`: the current one, then the
        previous one while its grace period lasts."""
        secrets = [self.secret]
        if self.previous_secret and self.previous_secret_expires_at and self.previous_secret_expires_at > now:
            secrets.append(self.previous_secret)
        return secrets


class WebhookEndpoint(WebhookSecretFields):
    """A tenant's URL told of its jobs' ends (`/v1/webhooks`, the dashboard)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="webhook_endpoints")
    url = models.CharField(max_length=2000)
    description = models.CharField(max_length=200, blank=True, default="")
    events = models.JSONField(default=list)  # names from WEBHOOK_EVENTS; [] = every event
    enabled = models.BooleanField(default=True)
    # The current run of failed attempts: since when (null = the last attempt succeeded)
    # and how many. An endpoint failing for WEBHOOK_DISABLE_AFTER_SECONDS is disabled.
    failing_since = models.DateTimeField(null=True, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    disabled_at = models.DateTimeField(null=True, blank=True)
    disabled_reason = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at"]
        indexes = [models.Index(fields=["tenant", "enabled"])]

    def __str__(self) -> str:
        return f"webhook {self.url}"

    def wants(self, event: str) -> bool:
        return self.enabled and (not self.events or event in self.events)


class TenantWebhookSecret(WebhookSecretFields):
    """The secret that signs deliveries to per-request `webhook_url`s (one per tenant,
    made on first use; shown by `POST /v1/webhooks/request_secret`, which rotates it)."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="webhook_secret")

    def __str__(self) -> str:
        return f"request webhook secret of tenant {self.tenant_id}"


class WebhookDelivery(models.Model):
    """One event for one target, with its attempts. `event_id` is the `webhook-id`
    header, the same on every attempt (receivers deduplicate by it: at-least-once)."""

    class Status(models.TextChoices):
        PENDING = "pending"  # not yet delivered; next_attempt_at says when it is tried again
        DELIVERED = "delivered"  # a 2xx answer
        FAILED = "failed"  # given up: out of attempts, or its endpoint disabled or deleted

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="webhook_deliveries")
    endpoint = models.ForeignKey(
        WebhookEndpoint, null=True, blank=True, on_delete=models.CASCADE, related_name="deliveries"
    )
    url = models.CharField(max_length=2000)  # the target (an endpoint's URL, or the request's webhook_url)
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="webhook_deliveries")
    # One delivery per (job, event, target): a redelivered actor message finds it.
    dedupe_key = models.CharField(max_length=200, unique=True)
    event_id = models.CharField(max_length=64, unique=True)  # "msg_<32 hex>"
    event_type = models.CharField(max_length=64)
    payload = models.JSONField(default=dict)  # the event body, signed as sent
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True, default="")
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["tenant", "-created_at"]),
            models.Index(fields=["endpoint", "-created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id} ({self.status})"


class LoraAdapter(models.Model):
    """A LoRA adapter the operator serves on top of a base model (issue 23; docs/models.md,
    "LoRA adapters"). Added with `manage.py lora_add` or the admin; requests name it in
    `loras` (images.services.loras). Visibility: everyone when `public`, else only the
    tenants in `tenants` (and `owner`, for a tenant's own upload). An adapter a tenant
    may not use is answered exactly like one that does not exist."""

    # The name requests use: letters, digits, '.', '_', '-' (at most 100 characters).
    name = models.CharField(max_length=100, unique=True)
    # A .safetensors file, or a folder holding one (diffusers' or kohya's format, as
    # diffusers' load_lora_weights reads them); absolute, or relative to LORA_DIR.
    path = models.CharField(max_length=500)
    # The base model it fits (its denoiser's shapes); or, when null, any model whose
    # family (ImageModel.capabilities["family"]) is `family`.
    base_model = models.ForeignKey(
        ImageModel, null=True, blank=True, on_delete=models.CASCADE, related_name="lora_adapters"
    )
    family = models.CharField(max_length=64, blank=True, default="")
    # Extra credits per image (integer credits, added to the model's price per image).
    surcharge_credits = models.PositiveIntegerField(default=0)
    trigger_words = models.CharField(max_length=500, blank=True, default="")
    public = models.BooleanField(default=True, help_text="Every tenant may use it (else only the listed tenants).")
    tenants = models.ManyToManyField(Tenant, blank=True, related_name="lora_adapters")
    # The tenant that uploaded it (a tenant's own adapter: visible to that tenant only); null = the operator's.
    owner = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.CASCADE, related_name="owned_loras")
    # A tenant's upload (POST /v1/loras): its file's name in the storage (images.lora_files;
    # `path` is then empty and the worker fetches the file); "" for the operator's adapters.
    storage_name = models.CharField(max_length=300, blank=True, default="")
    # The uploaded file's size in bytes (0 for the operator's adapters).
    size_bytes = models.PositiveBigIntegerField(default=0)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"lora {self.name}"


class LoraUploadGrant(models.Model):
    """A tenant allowed to upload its own LoRA adapters when LORA_TENANT_UPLOADS is
    `granted` (issue 23; docs/configuration.md). Added and removed in the admin."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="lora_upload_grant")
    # Adapters this tenant may keep at once; null = LORA_UPLOAD_MAX_PER_TENANT.
    max_adapters = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"LoRA uploads for {self.tenant_id}"


class StabilityRoute(models.Model):
    """Which of the operator's models serves a Stability v2beta endpoint (issue 26 item 2;
    images/stability.py, docs/api.md "Stability v2beta shape"). `service` is the path
    after /v2beta/stable-image/ (`generate/core`); `model_value` the request's `model`
    field where the endpoint takes one (`sd3.5-large` on generate/sd3), "" for the
    endpoint's default. Prices are the served model's price rows. Without a row the
    built-in defaults apply (images.stability.DEFAULT_ROUTES, seeded by `make setup`)."""

    service = models.CharField(max_length=64)
    model_value = models.CharField(max_length=100, blank=True, default="")
    image_model = models.ForeignKey(ImageModel, on_delete=models.CASCADE, related_name="stability_routes")
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["service", "model_value"]
        constraints = [
            models.UniqueConstraint(fields=["service", "model_value"], name="stability_route_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.service}{'?model=' + self.model_value if self.model_value else ''} -> {self.image_model_id}"


class MidjourneyTask(models.Model):
    """A Midjourney-proxy task (issue 26 item 3; images/midjourney.py, docs/api.md
    "Midjourney-proxy shape"): the proxy's id, action and echo fields around one Job,
    which carries everything else (status, money, images). IMAGINE, VARIATION and
    REROLL jobs make four images, delivered as one 2x2 grid (`grid_file`, made on first
    render) whose cells stay stored for U1-U4 and V1-V4; an UPSCALE job delivers one."""

    class Action(models.TextChoices):
        IMAGINE = "IMAGINE"
        UPSCALE = "UPSCALE"
        VARIATION = "VARIATION"
        REROLL = "REROLL"
        BLEND = "BLEND"
        DESCRIBE = "DESCRIBE"

    # The proxy's id form: milliseconds since the epoch then random digits (a string).
    id = models.CharField(max_length=32, primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="midjourney_tasks")
    job = models.OneToOneField(Job, on_delete=models.CASCADE, related_name="midjourney_task")
    action = models.CharField(max_length=16, choices=Action.choices)
    # The task whose cell (`index`, 1-4) an UPSCALE or VARIATION used, or that a REROLL re-ran.
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children")
    index = models.PositiveSmallIntegerField(null=True, blank=True)
    prompt = models.TextField(blank=True, default="")  # as sent, parameters included
    prompt_en = models.TextField(blank=True, default="")  # what was parsed from it (no translation)
    description = models.CharField(max_length=2000, blank=True, default="")  # "/imagine ...", "/up <id> U2"
    state = models.CharField(max_length=2000, blank=True, default="")  # the caller's `state`, echoed
    notify_hook = models.CharField(max_length=2000, blank=True, default="")
    # How to run the task again (REROLL): the generation fields and the parsed prompt.
    spec = models.JSONField(default=dict, blank=True)
    grid_file = models.CharField(max_length=300, blank=True, default="")  # storage name of the 2x2 grid
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["tenant", "-created_at"])]

    def __str__(self) -> str:
        return f"midjourney {self.action} {self.pk}"
