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

    public_id = models.CharField(max_length=100, unique=True)
    profile = models.CharField(max_length=16, choices=Profile.choices)
    # A local folder (absolute, or relative to MODEL_DIR) or a hub id such as
    # "stabilityai/stable-diffusion-xl-base-1.0"; loaded with from_pretrained.
    source = models.CharField(max_length=500)
    dtype = models.CharField(max_length=16, default="auto")  # auto|float16|bfloat16|float32
    queue = models.CharField(max_length=64, default="gpu")
    # Denoising steps per quality value, e.g. {"low": 2, "medium": 3, "high": 4, "standard": 4, "hd": 6}.
    steps_by_quality = models.JSONField(default=dict)
    guidance = models.FloatField(default=5.0)  # classifier-free guidance scale (not money)
    supports_alpha = models.BooleanField(default=False)
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
