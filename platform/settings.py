"""Settings, read from the environment with django-environ.

Two ways to run, one code path:
- embedded (nothing set): SQLite in var/, an in-process Dramatiq broker and worker,
  local-memory cache, local file storage, the demo model;
- production (DATABASE_URL, BROKER_URL, CACHE_URL set): PostgreSQL, Redis or RabbitMQ,
  separate `make worker` processes, shared storage.
Every variable is documented in docs/configuration.md.
"""

from __future__ import annotations

import os
import re
import secrets
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

import broker_setup

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env")

# Local state: the embedded secret key, the SQLite database, images, model folders.
VAR_DIR = Path(env.str("VAR_DIR", default=str(BASE_DIR / "var"))).resolve()

EMBEDDED = not env.str("DATABASE_URL", default="")

# Off unless asked for, embedded or not: the debug pages show settings, paths and URLs.
DEBUG = env.bool("DEBUG", default=False)


def _private_var_dir() -> None:
    """var/ holds the secret key (which signs image links and sessions), the SQLite
    database and every tenant's images: readable by its owner only (0700). Created
    that way in the embedded mode, and an existing one of ours is tightened."""
    path = VAR_DIR
    try:
        if EMBEDDED:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.is_dir() and path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o077:
            path.chmod(0o700)
    except OSError:  # a read-only or foreign folder: leave it to the operator
        pass


_private_var_dir()


def _embedded_secret() -> str:
    """A random key kept in var/secret_key (0600) so sessions and signed links survive
    restarts of an embedded install."""
    path = VAR_DIR / "secret_key"
    if not path.exists():
        # O_EXCL: two processes starting at once cannot both write (one reads the other's).
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(50))
    if path.stat().st_mode & 0o077 and path.stat().st_uid == os.getuid():
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not EMBEDDED:
        raise ImproperlyConfigured("SECRET_KEY must be set when DATABASE_URL is (production).")
    SECRET_KEY = _embedded_secret()

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]", "testserver"])
PORT = env.int("PORT", default=8000)
# Absolute base for signed image links; defaults to the address the request came in on.
PUBLIC_BASE_URL = env.str("PUBLIC_BASE_URL", default="").rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "axes",
    "rest_framework",
    "rest_framework_api_key",
    "django_dramatiq",
    "core",
    "accounts",
    "billing",
    "images",
    # HTML and session surfaces; before allauth so its templates restyle allauth's pages.
    "dashboard",
]

MIDDLEWARE = [
    "core.middleware.RequestIdMiddleware",
    "core.middleware.BodySizeLimitMiddleware",
    "core.middleware.NullByteGuardMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Static files (admin, /docs/, dashboard) from the app folders, DEBUG or not, no CDN.
    # (whitenoise's middleware with an async path: core/middleware.py.)
    "core.middleware.StaticFilesMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a locked-out login into its lockout answer.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "urls"
WSGI_APPLICATION = "wsgi.application"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets readers run while the in-process worker writes (switched on, with retries,
    # by core.db_locks.sqlite_wal_enable as each connection opens); IMMEDIATE takes the
    # write lock at BEGIN so two writers queue instead of failing to upgrade a lock.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA synchronous=NORMAL;",
    }
    if DATABASES["default"]["NAME"] != ":memory:":
        Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # Tests use a file too: the in-process worker's threads need to see the test data
    # through their own connections (a shared-cache memory DB locks whole tables).
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
        "connect_timeout", env.int("DB_CONNECT_TIMEOUT", default=3)
    )

CACHES = {"default": env.cache("CACHE_URL", default="locmemcache://")}
# Seconds an API key row (with its tenant) is served from the cache instead of the database;
# a change to a key or tenant drops it at once (accounts/key_cache.py). 0: read every time.
API_KEY_CACHE_SECONDS = env.int("API_KEY_CACHE_SECONDS", default=10)
# A short poll of a queued or running task answered on the event loop, before Django, when
# the answer is certain to be Django's (images/task_poll.py; ASGI server only).
TASK_POLL_FAST = env.bool("TASK_POLL_FAST", default=True)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
WHITENOISE_USE_FINDERS = True  # serve straight from the apps' static folders: no collectstatic step
STATIC_ROOT = env.path("STATIC_ROOT", default=VAR_DIR / "static")
try:  # whitenoise warns at every start while it is missing (empty until collectstatic)
    Path(STATIC_ROOT).mkdir(parents=True, exist_ok=True)
except OSError:  # a read-only image: the operator runs collectstatic at build time
    pass
MEDIA_ROOT = env.path("MEDIA_ROOT", default=VAR_DIR / "media")
MEDIA_URL = "media/"

# ---- Object storage (docs/deploy.md) ----
# Generated images and stored edit inputs go through Django's storage API: local files
# under MEDIA_ROOT by default (the embedded mode, one machine), or any S3-compatible store
# (AWS S3, MinIO, Cloudflare R2, Backblaze B2...) through django-storages when
# AWS_STORAGE_BUCKET_NAME is set: then nothing is kept on the local disk, and the web tier
# and every GPU worker share only the database, the broker and the bucket.
AWS_STORAGE_BUCKET_NAME = env.str("AWS_STORAGE_BUCKET_NAME", default="")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
if AWS_STORAGE_BUCKET_NAME:
    from botocore.config import Config as _BotoConfig

    STORAGES["default"] = {"BACKEND": "storages.backends.s3.S3Storage"}
    AWS_S3_ENDPOINT_URL = env.str("AWS_S3_ENDPOINT_URL", default="") or None  # None: AWS itself
    AWS_ACCESS_KEY_ID = env.str("AWS_ACCESS_KEY_ID", default="") or None  # None: boto3's own chain (roles)
    AWS_SECRET_ACCESS_KEY = env.str("AWS_SECRET_ACCESS_KEY", default="") or None
    AWS_S3_REGION_NAME = env.str("AWS_S3_REGION_NAME", default="") or None
    AWS_LOCATION = env.str("AWS_LOCATION", default="")  # a key prefix inside the bucket
    AWS_S3_ADDRESSING_STYLE = env.str("AWS_S3_ADDRESSING_STYLE", default="") or None  # "path" for some stores
    AWS_S3_SIGNATURE_VERSION = "s3v4"
    AWS_DEFAULT_ACL = None  # the bucket stays private: objects are read through presigned URLs
    AWS_QUERYSTRING_AUTH = True
    AWS_S3_FILE_OVERWRITE = True  # our names are unique per job: save without a HEAD first
    # Fail fast when the store is away (a job fails and is released; the caller hears 502/503)
    # instead of botocore's 60 s connect timeout and its legacy retries.
    # (A client config replaces django-storages' own: signature and addressing style go in it.)
    AWS_S3_CLIENT_CONFIG = _BotoConfig(
        signature_version="s3v4",
        s3={"addressing_style": AWS_S3_ADDRESSING_STYLE} if AWS_S3_ADDRESSING_STYLE else {},
        connect_timeout=env.float("S3_CONNECT_TIMEOUT", default=5.0),
        read_timeout=env.float("S3_READ_TIMEOUT", default=30.0),
        retries={"max_attempts": env.int("S3_MAX_ATTEMPTS", default=3), "mode": "standard"},
    )
# The store's address as clients see it, for presigned links, when it differs from the
# one the platform uses (e.g. http://minio:9000 inside a compose network).
S3_PUBLIC_ENDPOINT_URL = env.str("S3_PUBLIC_ENDPOINT_URL", default="").rstrip("/")
# /v1/files/<token> on an object store: redirect to a presigned URL (true; bytes never pass
# through the web tier) or stream the object through the web tier (false: the store is not
# reachable from clients at all).
S3_PRESIGNED_REDIRECT = env.bool("S3_PRESIGNED_REDIRECT", default=True)

# ---- Retention (images_purge; the workers' periodic sweep) ----
# Days generated images and edit inputs are kept (0: forever); idempotency records,
# expired sessions, old login records and silent worker heartbeats are pruned on the
# same schedule.
RETENTION_DAYS = env.int("RETENTION_DAYS", default=30)
# How often each worker runs the retention sweep (seconds; 0: never, rely on the command).
RETENTION_SWEEP_SECONDS = env.int("RETENTION_SWEEP_SECONDS", default=3600)

# ---- Observability ----
# /metrics answers only `Authorization: Bearer $METRICS_TOKEN`; unset: /metrics is a 404.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
# How long the platform's database-derived metrics are reused between scrapes (seconds).
METRICS_CACHE_SECONDS = env.float("METRICS_CACHE_SECONDS", default=5.0)
# Workers write a heartbeat this often (seconds); one silent for WORKER_QUIET_SECONDS is "quiet".
WORKER_HEARTBEAT_SECONDS = env.int("WORKER_HEARTBEAT_SECONDS", default=15)
WORKER_QUIET_SECONDS = env.int("WORKER_QUIET_SECONDS", default=60)
# Log lines: "json" (one object per line; the production default) or "plain".
LOG_FORMAT = env.str("LOG_FORMAT", default="plain" if EMBEDDED else "json")
# Prompts are never logged unless the operator turns this on.
LOG_PROMPTS = env.bool("LOG_PROMPTS", default=False)
# Where built or downloaded model folders live (the demo model is built here).
MODEL_DIR = env.path("MODEL_DIR", default=VAR_DIR / "models")
# LoRA adapters (issue 23): relative adapter paths are under LORA_DIR; a request names
# at most LORA_MAX_PER_REQUEST adapters in `loras` (docs/models.md, "LoRA adapters").
LORA_DIR = env.path("LORA_DIR", default=VAR_DIR / "loras")
LORA_MAX_PER_REQUEST = env.int("LORA_MAX_PER_REQUEST", default=3)
# Tenants' own adapters (POST /v1/loras): off (default), granted (only tenants with a
# LoRA upload grant in the admin) or all; files up to LORA_UPLOAD_MAX_BYTES, at most
# LORA_UPLOAD_MAX_PER_TENANT per tenant (a grant may say otherwise).
_lora_uploads = env.str("LORA_TENANT_UPLOADS", default="off").strip().lower()
LORA_TENANT_UPLOADS = {"false": "off", "0": "off", "no": "off", "true": "all", "1": "all", "yes": "all"}.get(
    _lora_uploads, _lora_uploads
)
if LORA_TENANT_UPLOADS not in ("off", "granted", "all"):
    raise ImproperlyConfigured("LORA_TENANT_UPLOADS must be off, granted or all")
LORA_UPLOAD_MAX_BYTES = env.int("LORA_UPLOAD_MAX_BYTES", default=256 * 1024 * 1024)
LORA_UPLOAD_MAX_PER_TENANT = env.int("LORA_UPLOAD_MAX_PER_TENANT", default=20)

# The Midjourney-proxy shape (/mj/..., issue 26 item 3; docs/configuration.md): the model
# that serves it (a profile making 4 images a request: dall-e-2 or gpt-image), the cell
# size --ar 1:1 picks ("" = the profile's default), how many times U1-U4 enlarge a cell
# (1-4, Lanczos resize) and the img2img strength of V1-V4 (0-1; not money).
MJ_MODEL = env.str("MJ_MODEL", default="dall-e-2")
MJ_BASE_SIZE = env.str("MJ_BASE_SIZE", default="")
MJ_UPSCALE_FACTOR = env.int("MJ_UPSCALE_FACTOR", default=2)
if not 1 <= MJ_UPSCALE_FACTOR <= 4:
    raise ImproperlyConfigured("MJ_UPSCALE_FACTOR must be 1 to 4")
MJ_VARIATION_STRENGTH = env.float("MJ_VARIATION_STRENGTH", default=0.6)
if not 0 < MJ_VARIATION_STRENGTH <= 1:
    raise ImproperlyConfigured("MJ_VARIATION_STRENGTH must be above 0 and at most 1")

# 64 MB: the largest multipart edit (several gpt-image inputs) must fit.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=64 * 1024 * 1024)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["accounts.authentication.APIKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "rest_framework.parsers.JSONParser",
        "rest_framework.parsers.MultiPartParser",
        "rest_framework.parsers.FormParser",
    ],
    "EXCEPTION_HANDLER": "core.errors.exception_handler",
    "DEFAULT_THROTTLE_CLASSES": ["accounts.ratelimit.RequestRateThrottle"],
    "UNAUTHENTICATED_USER": None,
    # `?format=` is ours (CSV exports), not DRF's renderer override.
    "URL_FORMAT_OVERRIDE": None,
}

# ---- Dramatiq -------------------------------------------------------------------
BROKER_URL = env.str("BROKER_URL", default="")
# Queues this installation knows; each model row names one of them.
GPU_QUEUES = env.list("GPU_QUEUES", default=["gpu"])
# Redis key prefix for the broker's queues (lets several installations share one Redis).
BROKER_NAMESPACE = env.str("BROKER_NAMESPACE", default="dramatiq")
# A Redis worker silent this long is presumed dead and its unacknowledged jobs requeued.
BROKER_HEARTBEAT_TIMEOUT_MS = env.int("BROKER_HEARTBEAT_TIMEOUT_MS", default=20_000)
BROKER_MAINTENANCE_CHANCE = env.int("BROKER_MAINTENANCE_CHANCE", default=100_000)
DRAMATIQ_BROKER = broker_setup.broker_settings(
    BROKER_URL,
    BROKER_NAMESPACE,
    heartbeat_timeout_ms=BROKER_HEARTBEAT_TIMEOUT_MS,
    maintenance_chance=BROKER_MAINTENANCE_CHANCE,
)
DRAMATIQ_AUTODISCOVER_MODULES = ["actors"]
# How long (ms) a job waits for compatible company before its pipeline call, when
# batching is on (a model's max batch > 1); 0 = never wait.
BATCH_WINDOW_MS = env.float("BATCH_WINDOW_MS", default=15.0)
# Longest wait (ms) of an idle worker between fetches. On Redis a published wake-up
# makes pickup immediate (broker_setup.WakingRedisBroker); this bounds the delay when
# one is missed. Dramatiq's worker timeout, so also how often idle threads check in.
WORKER_POLL_MS = env.int("WORKER_POLL_MS", default=1000)
# Threads of the in-process worker (embedded) that pick up jobs.
EMBEDDED_WORKER_THREADS = env.int("EMBEDDED_WORKER_THREADS", default=4)

# ---- Limits (a tenant's or key's own value wins; 0 = no limit) ----
DEFAULT_TENANT_RPM = env.int("DEFAULT_TENANT_RPM", default=600)
DEFAULT_KEY_RPM = env.int("DEFAULT_KEY_RPM", default=0)
# A signed-in dashboard member's own limit (the playground); the tenant's limit applies too.
DEFAULT_MEMBER_RPM = env.int("DEFAULT_MEMBER_RPM", default=30)
DEFAULT_MAX_CONCURRENT_JOBS = env.int("DEFAULT_MAX_CONCURRENT_JOBS", default=16)
# Optional "module:function" taking a prompt and returning moderation category ids.
MODERATION_CLASSIFIER = env.str("MODERATION_CLASSIFIER", default="")
# What a classifier that raises means: "closed" refuses the request (503, x-should-retry:
# false) unless the term lists already block it; "open" lets the term lists decide alone.
# Closed by default: an operator who installs a classifier relies on it for what the
# term lists miss, and failing open would pass exactly that whenever it is down (or
# whenever a prompt is crafted to crash it).
MODERATION_CLASSIFIER_FAILURE = env.str("MODERATION_CLASSIFIER_FAILURE", default="closed")
if MODERATION_CLASSIFIER_FAILURE not in ("open", "closed"):
    raise ImproperlyConfigured(
        f"MODERATION_CLASSIFIER_FAILURE must be 'open' or 'closed', not {MODERATION_CLASSIFIER_FAILURE!r}"
    )

# ---- Output safety and provenance (issue 25; docs/configuration.md) ----
# A transformers image-classification model folder (e.g. Falconsai/nsfw_image_detection,
# downloaded); every generated image (and stream preview) is classified on the worker,
# on the pipeline's device. "" = no output check (tenants' actions then do nothing).
OUTPUT_MODERATION_MODEL = env.str("OUTPUT_MODERATION_MODEL", default="")
# The model's labels that count as unsafe, and the score (0..1) at or above which an
# image is unsafe, per moderation level (the tenant's, or the request's `moderation`).
OUTPUT_MODERATION_UNSAFE_LABELS = env.list("OUTPUT_MODERATION_UNSAFE_LABELS", default=["nsfw"])
OUTPUT_MODERATION_THRESHOLDS = {
    level: float(value)
    for level, value in env.dict(
        "OUTPUT_MODERATION_THRESHOLDS", default={"strict": "0.3", "standard": "0.5", "low": "0.8"}
    ).items()
}
if set(OUTPUT_MODERATION_THRESHOLDS) != {"strict", "standard", "low"} or not all(
    0.0 <= value <= 1.0 for value in OUTPUT_MODERATION_THRESHOLDS.values()
):
    raise ImproperlyConfigured("OUTPUT_MODERATION_THRESHOLDS must set strict, standard and low, each within 0..1")
# The action a self-service sign-up's tenant gets: block, blur, flag or off.
SIGNUP_OUTPUT_MODERATION = env.str("SIGNUP_OUTPUT_MODERATION", default="block")
if SIGNUP_OUTPUT_MODERATION not in ("block", "blur", "flag", "off"):
    raise ImproperlyConfigured(
        f"SIGNUP_OUTPUT_MODERATION must be block, blur, flag or off, not {SIGNUP_OUTPUT_MODERATION!r}"
    )
# An invisible watermark (invisible-watermark's dwtDct, as SDXL uses) on every delivered
# image of at least 256x256: OUTPUT_WATERMARK_TEXT, 1..16 ASCII bytes (short payloads
# decode more reliably). Off with OUTPUT_WATERMARK=false.
OUTPUT_WATERMARK = env.bool("OUTPUT_WATERMARK", default=True)
OUTPUT_WATERMARK_TEXT = env.str("OUTPUT_WATERMARK_TEXT", default="AIGC")
if not (OUTPUT_WATERMARK_TEXT.isascii() and 1 <= len(OUTPUT_WATERMARK_TEXT) <= 16):
    raise ImproperlyConfigured("OUTPUT_WATERMARK_TEXT must be 1 to 16 ASCII characters")
# A C2PA manifest (c2pa-python) on every delivered image when both are set: PEM files of
# the signing certificate chain (signer first) and its private key (`manage.py
# c2pa_dev_cert` makes a development pair). "" = no manifest.
OUTPUT_C2PA_CERT = env.str("OUTPUT_C2PA_CERT", default="")
OUTPUT_C2PA_KEY = env.str("OUTPUT_C2PA_KEY", default="")
if bool(OUTPUT_C2PA_CERT) != bool(OUTPUT_C2PA_KEY):
    raise ImproperlyConfigured("OUTPUT_C2PA_CERT and OUTPUT_C2PA_KEY are set together (or neither)")

# ---- Generation -------------------------------------------------------------------
# How long a synchronous request waits for its job before answering with the job id.
JOB_WAIT_SECONDS = env.float("JOB_WAIT_SECONDS", default=300.0)
# gunicorn threads per web process (serve.py), and how many of them may wait for a job
# (synchronous generations and streams; core/waiting.py): past it a waiting request is a
# 503 `server_busy` at once. 0: WEB_THREADS - min(8, WEB_THREADS // 2), so that balance,
# task and model requests always find a free thread. Must stay below WEB_THREADS.
WEB_THREADS = env.int("WEB_THREADS", default=32)
WEB_MAX_WAITING = env.int("WEB_MAX_WAITING", default=0)
# A job not finished this long after it was queued is failed and its hold released.
JOB_DEADLINE_SECONDS = env.int("JOB_DEADLINE_SECONDS", default=900)
# How often each worker fails jobs past their deadline and releases their holds (0: never).
JOB_SWEEP_SECONDS = env.int("JOB_SWEEP_SECONDS", default=30)
# Dramatiq time limit for one generation message (ms).
JOB_TIME_LIMIT_MS = env.int("JOB_TIME_LIMIT_MS", default=600_000)
JOB_MAX_RETRIES = env.int("JOB_MAX_RETRIES", default=3)
# Signed image links live this long (seconds); OpenAI's last one hour.
IMAGE_URL_TTL_SECONDS = env.int("IMAGE_URL_TTL_SECONDS", default=3600)
# Image URLs in requests (seed 002's `image`): private/loopback hosts refused unless allowed.
IMAGE_FETCH_ALLOW_PRIVATE = env.bool("IMAGE_FETCH_ALLOW_PRIVATE", default=False)
# Decoded pixels one edit or variation may send in all (images and mask); past it, 400
# `input_too_large` before anything is decoded. 64 Mi pixels = sixteen 2048x2048 images.
INPUT_PIXEL_BUDGET = env.int("INPUT_PIXEL_BUDGET", default=64 * 1024 * 1024)
IMAGE_FETCH_TIMEOUT_SECONDS = env.float("IMAGE_FETCH_TIMEOUT_SECONDS", default=10.0)
# Webhooks (issue 24; docs/operations.md "Webhooks"). Targets on private, loopback or
# link-local addresses are refused unless allowed (tests, private networks).
WEBHOOK_ALLOW_PRIVATE_TARGETS = env.bool("WEBHOOK_ALLOW_PRIVATE_TARGETS", default=False)
# Retries: attempt k+1 waits BASE * 2**(k-1) seconds (capped at MAX, +-20% jitter); with
# the defaults 16 attempts span about 23 hours.
WEBHOOK_RETRY_BASE_SECONDS = env.float("WEBHOOK_RETRY_BASE_SECONDS", default=5.0)
WEBHOOK_RETRY_MAX_SECONDS = env.float("WEBHOOK_RETRY_MAX_SECONDS", default=21_600.0)
WEBHOOK_MAX_ATTEMPTS = env.int("WEBHOOK_MAX_ATTEMPTS", default=16)
# One attempt's deadline (resolve, connect, TLS, send, answer), seconds.
WEBHOOK_TIMEOUT_SECONDS = env.float("WEBHOOK_TIMEOUT_SECONDS", default=10.0)
# An endpoint whose attempts have all failed for this long is disabled, its owners emailed.
WEBHOOK_DISABLE_AFTER_SECONDS = env.int("WEBHOOK_DISABLE_AFTER_SECONDS", default=86_400)
# After a secret rotation the previous secret still signs (a second signature) this long.
WEBHOOK_SECRET_GRACE_SECONDS = env.int("WEBHOOK_SECRET_GRACE_SECONDS", default=86_400)
# Allow hub downloads for models whose source is a hub id (off: air-gapped hosts).
MODEL_ALLOW_DOWNLOADS = env.bool("MODEL_ALLOW_DOWNLOADS", default=False)

# Load the enabled models' pipelines when a worker starts (not on the first request).
WARM_UP_MODELS = env.bool("WARM_UP_MODELS", default=True)
# Pipelines kept loaded per worker process (least recently used evicted).
PIPELINE_CACHE_SIZE = env.int("PIPELINE_CACHE_SIZE", default=2)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "core.logging.JSONFormatter"},
    },  # structlog; core/logging.py
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "json" if LOG_FORMAT == "json" else "plain"}
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    # axes.apps: django-axes' start-up banner, printed by every manage.py command otherwise.
    "loggers": {"django.server": {"level": "WARNING"}, "axes.apps": {"level": "WARNING"}},
}

if not DEBUG:
    # Production hardening; `manage.py check --deploy` is clean with the values in
    # docs/configuration.md (TLS is usually terminated by the proxy in front). The
    # embedded mode serves plain http on this machine: secure cookies would never come back.
    SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not EMBEDDED)
    CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not EMBEDDED)
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
    SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
    if env.bool("BEHIND_TLS_PROXY", default=False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# ---- Logins (admin and dashboard; API keys are not logins and are never locked) ----
AUTHENTICATION_BACKENDS = [
    # django-axes: refuses a username+address pair past AXES_FAILURE_LIMIT failures.
    "accounts.backends.LoginLockoutBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
# Minutes a locked-out pair waits; each failure during the lockout starts it again.
AXES_COOLOFF_TIME = timedelta(minutes=env.float("AXES_COOLOFF_MINUTES", default=15))
# Both together: a guesser from one address cannot lock a user out everywhere.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# The lockout answer: django-axes' plain text message with 429 (no template, no redirect).
AXES_HTTP_RESPONSE_CODE = 429
# Login records (the log lines and AccessLog rows) name the URL pattern, never the path:
# a path can carry a secret (an email-confirmation key signs in).
AXES_HANDLER = "accounts.backends.LoginRecordHandler"
# Reverse proxies in front of the server that are the operator's own (0: none, the
# connection's address is the client's). With N, the client is the N-th X-Forwarded-For
# entry from the right; the one function every address-keyed limit uses
# (core/client_address.py): axes' lockouts, allauth's and the sign-up limits.
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0)
if TRUSTED_PROXY_COUNT < 0:
    raise ImproperlyConfigured("TRUSTED_PROXY_COUNT must be 0 or more")
AXES_CLIENT_IP_CALLABLE = "core.client_address.client_address"
# DRF's own address (`get_ident`, used by its address throttles) follows the same rule;
# DRF's default (None) would trust the whole client-supplied header.
REST_FRAMEWORK["NUM_PROXIES"] = TRUSTED_PROXY_COUNT

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},  # 8 characters
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# ---- Self-service: sign-up (django-allauth), email, card payments, vouchers ----
INSTALLED_APPS += ["allauth", "allauth.account", "allauth.mfa"]
# Social logins are settings only: SOCIAL_PROVIDERS=google,github adds allauth's provider
# apps; their client ids and secrets go in SOCIALACCOUNT_PROVIDERS_JSON (allauth's format).
SOCIAL_PROVIDERS = env.list("SOCIAL_PROVIDERS", default=[])
if SOCIAL_PROVIDERS:
    INSTALLED_APPS += [
        "allauth.socialaccount",
        *[f"allauth.socialaccount.providers.{name}" for name in SOCIAL_PROVIDERS],
    ]
    SOCIALACCOUNT_PROVIDERS = env.json("SOCIALACCOUNT_PROVIDERS_JSON", default={})
# Before axes' middleware, which stays last.
MIDDLEWARE.insert(
    MIDDLEWARE.index("django.contrib.auth.middleware.AuthenticationMiddleware") + 1,
    "allauth.account.middleware.AccountMiddleware",
)
# allauth signs in by email; the lockout backend stays first, so its lockout covers
# /accounts/login/ too (the identity is the username or the email: accounts.backends).
AUTHENTICATION_BACKENDS += ["allauth.account.auth_backends.AuthenticationBackend"]
AXES_USERNAME_CALLABLE = "accounts.backends.login_identity"
LOGIN_URL = "/dashboard/login/"
LOGIN_REDIRECT_URL = "/dashboard/"
ACCOUNT_LOGOUT_REDIRECT_URL = "/dashboard/login/"
ACCOUNT_ADAPTER = "accounts.adapters.AccountAdapter"
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_EMAIL_VERIFICATION = "mandatory"
ACCOUNT_CONFIRM_EMAIL_ON_GET = False
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_EMAIL_SUBJECT_PREFIX = env.str("ACCOUNT_EMAIL_SUBJECT_PREFIX", default="[Image API] ")
# Every authentication step is rate limited (allauth's format "count/period/per", per =
# ip, key or user, several joined by commas; an answer past a limit is a 429). Failed
# passwords are django-axes' (its 429 at AXES_FAILURE_LIMIT per username and address on
# every login form; accounts.adapters). login_failed is the second-factor step's limit
# (TOTP and recovery codes): by default as many wrong codes per user as axes allows wrong
# passwords, in the same cool-off; a fresh password buys no fresh guesses. ACCOUNT_RATE_LIMITS_JSON
# replaces any of them ({"reset_password": "10/m/ip,2/h/key"}); accounts.checks refuses
# a rate that does not parse and warns when login_failed is off.
_COOLOFF_SECONDS = int(AXES_COOLOFF_TIME.total_seconds())
ACCOUNT_RATE_LIMITS = {
    "login": "30/m/ip",  # login form posts, any account (also /dashboard/login/)
    "login_failed": f"20/m/ip,{AXES_FAILURE_LIMIT}/{_COOLOFF_SECONDS}s/key",
    "reset_password": "20/m/ip,3/15m/key",  # reset emails, per address asked for
    "reset_password_from_key": "20/m/ip",  # the emailed link's page
    "confirm_email": "1/3m/key",  # verification emails (re)sent to one address
    "reauthenticate": "10/m/user",
    "change_password": "5/m/user",
    "manage_email": "10/m/user",
    **env.json("ACCOUNT_RATE_LIMITS_JSON", default={}),
}
# The emailed reset link sets a password and never signs in (a session needs the second factor).
ACCOUNT_LOGIN_ON_PASSWORD_RESET = False
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes"]
# open: anyone may sign up; invite: only people invited by an owner or the operator;
# closed: nobody (members are made with manage.py member_create or the admin).
SIGNUP_MODE = env.str("SIGNUP_MODE", default="open" if EMBEDDED else "closed")
if SIGNUP_MODE not in ("open", "invite", "closed"):
    raise ImproperlyConfigured(f"SIGNUP_MODE must be open, invite or closed, not {SIGNUP_MODE!r}")
SIGNUP_TRIAL_CREDITS = env.int("SIGNUP_TRIAL_CREDITS", default=1000)  # credits, granted at verification
SIGNUP_MODERATION_LEVEL = env.str("SIGNUP_MODERATION_LEVEL", default="standard")
SIGNUP_RPM_LIMIT = env.int("SIGNUP_RPM_LIMIT", default=0)  # 0 = the installation default
SIGNUP_MAX_CONCURRENT_JOBS = env.int("SIGNUP_MAX_CONCURRENT_JOBS", default=0)  # 0 = the installation default
INVITATION_DAYS = env.int("INVITATION_DAYS", default=14)
# One trial per mailbox (accounts.services.mailbox_key): lower case, "+tag" dropped, and
# dots dropped at these domains, whose mail service ignores them (googlemail.com = gmail.com).
TRIAL_DOT_INSENSITIVE_DOMAINS = env.list("TRIAL_DOT_INSENSITIVE_DOMAINS", default=["gmail.com", "googlemail.com"])
# Sign-up attempts (sign-up form posts) per client address and per network (/24 IPv4,
# /64 IPv6), "<count>/<period>" with period s, m, h or d (allauth's rate syntax); "" = none.
SIGNUP_RATE_LIMIT_PER_ADDRESS = env.str("SIGNUP_RATE_LIMIT_PER_ADDRESS", default="10/h")
SIGNUP_RATE_LIMIT_PER_NETWORK = env.str("SIGNUP_RATE_LIMIT_PER_NETWORK", default="30/h")
for _name, _rate in (
    ("SIGNUP_RATE_LIMIT_PER_ADDRESS", SIGNUP_RATE_LIMIT_PER_ADDRESS),
    ("SIGNUP_RATE_LIMIT_PER_NETWORK", SIGNUP_RATE_LIMIT_PER_NETWORK),
):
    if _rate and not re.fullmatch(r"[1-9][0-9]*/[0-9]*[smhd]", _rate):
        raise ImproperlyConfigured(f"{_name} must look like 10/h (count/period, period s, m, h or d), not {_rate!r}")
# allauth counts them (its cache, keyed on core.client_address); "signup_network" is
# consumed by accounts.adapters.AccountAdapter.is_open_for_signup. ACCOUNT_RATE_LIMITS_JSON
# naming "signup" or "signup_network" wins.
ACCOUNT_RATE_LIMITS.setdefault(
    "signup", f"{SIGNUP_RATE_LIMIT_PER_ADDRESS}/ip" if SIGNUP_RATE_LIMIT_PER_ADDRESS else None
)
ACCOUNT_RATE_LIMITS.setdefault(
    "signup_network", f"{SIGNUP_RATE_LIMIT_PER_NETWORK}/key" if SIGNUP_RATE_LIMIT_PER_NETWORK else None
)
# Email through Django's API: the console backend (the server's output) unless EMAIL_URL
# names SMTP (smtp+tls://user:password@host:587) or another django-environ email URL.
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Image API <noreply@localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
# Stripe (PaymentIntents): card payments are on when the secret key is set. STRIPE_API_BASE
# points the SDK elsewhere (localstripe in tests); STRIPE_JS_URL is where the page loads Stripe.js.
STRIPE_SECRET_KEY = env.str("STRIPE_SECRET_KEY", default="")
STRIPE_PUBLISHABLE_KEY = env.str("STRIPE_PUBLISHABLE_KEY", default="")
STRIPE_WEBHOOK_SECRET = env.str("STRIPE_WEBHOOK_SECRET", default="")
STRIPE_API_BASE = env.str("STRIPE_API_BASE", default="")
STRIPE_JS_URL = env.str("STRIPE_JS_URL", default="https://js.stripe.com/v3/")
# Empty: Stripe offers the methods turned on in its dashboard (cards, Alipay, WeChat Pay...)
# through the Payment Element; e.g. "card" restricts the PaymentIntents to cards.
STRIPE_PAYMENT_METHOD_TYPES = env.list("STRIPE_PAYMENT_METHOD_TYPES", default=[])
VOUCHERS_ENABLED = env.bool("VOUCHERS_ENABLED", default=True)
# What one credit is worth, for showing prices as money (GET /v1/models `pricing`, the
# dashboard's prices page): a decimal in whole units of CREDIT_CURRENCY; "" shows credits
# only. Display only: balances and prices stay integer credits.
CREDIT_VALUE = env.str("CREDIT_VALUE", default="0.001")
CREDIT_CURRENCY = env.str("CREDIT_CURRENCY", default="usd").strip().lower()
if CREDIT_VALUE and not re.fullmatch(r"\d+(\.\d+)?", CREDIT_VALUE.strip()):
    raise ImproperlyConfigured(f"CREDIT_VALUE must be a decimal number such as 0.001 (got {CREDIT_VALUE!r})")
# Wrong voucher codes allowed per key or dashboard member, and per tenant (all its keys
# and members together), in the window; then 429. 0 = no limit.
VOUCHER_FAILURE_LIMIT = env.int("VOUCHER_FAILURE_LIMIT", default=10)
VOUCHER_FAILURE_TENANT_LIMIT = env.int("VOUCHER_FAILURE_TENANT_LIMIT", default=30)
VOUCHER_FAILURE_WINDOW_SECONDS = env.int("VOUCHER_FAILURE_WINDOW_SECONDS", default=900)
# Where a 402 sends the customer; "" = the dashboard's billing page while payments or vouchers are on.
TOP_UP_URL = env.str("TOP_UP_URL", default="") or (
    "/dashboard/billing/" if (STRIPE_SECRET_KEY or VOUCHERS_ENABLED) else ""
)

# ---- API schema (drf-spectacular) ----
# OpenAPI 3 at /v1/openapi.json and Swagger UI at /docs/ (assets from the sidecar
# package, served by this installation: no CDN). Annotations: platform/api_schema.py.
INSTALLED_APPS += ["drf_spectacular", "drf_spectacular_sidecar"]
REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"] = "drf_spectacular.openapi.AutoSchema"
SPECTACULAR_SETTINGS = {
    "TITLE": "Image generation API",
    "DESCRIPTION": "OpenAI-compatible Images API plus vendor-shaped endpoints. Every error answers "
    '`{"error": {"message", "type", "param", "code"}}`. Amounts are integer credits.',
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {},
    "DISABLE_ERRORS_AND_WARNINGS": True,
    # OpenAI's endpoints first, vendor shapes last (platform/api_schema.py).
    "SORT_OPERATIONS": "api_schema.operation_order",
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "api_schema.tags_ordered"],
}

# ---- Metrics (core/metrics.py: GET /metrics with METRICS_TOKEN) ----
# django-prometheus: requests by view and status, latencies, response sizes; with several
# gunicorn processes, PROMETHEUS_MULTIPROC_DIR (an empty folder per host) makes every
# process's counters add up in one scrape. With metrics on, database queries, errors and
# connection counts too, through its wrapping database engine (same driver underneath).
INSTALLED_APPS += ["django_prometheus"]
# Several gunicorn processes each count their own requests, and a scrape reaches one of
# them: the totals would jump between processes and go backwards. prometheus_client's
# multiprocess mode adds every process's files in PROMETHEUS_MULTIPROC_DIR up instead.
# With metrics on (METRICS_TOKEN) and WEB_CONCURRENCY > 1 and no folder named, it is
# VAR_DIR/prometheus. The variable must be in the environment before prometheus_client
# is first imported (settings load first), and the folder must exist before any metric
# is made (every command, `migrate` included, makes django-prometheus' metrics): it is
# created here. `serve --workers N` without it is refused (serve.py).
WEB_CONCURRENCY = env.int("WEB_CONCURRENCY", default=1)
PROMETHEUS_MULTIPROC_DIR = env.str("PROMETHEUS_MULTIPROC_DIR", default="")
if METRICS_TOKEN and WEB_CONCURRENCY > 1 and not PROMETHEUS_MULTIPROC_DIR:
    PROMETHEUS_MULTIPROC_DIR = str(VAR_DIR / "prometheus")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = PROMETHEUS_MULTIPROC_DIR
if PROMETHEUS_MULTIPROC_DIR:
    try:
        Path(PROMETHEUS_MULTIPROC_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImproperlyConfigured(
            f"PROMETHEUS_MULTIPROC_DIR={PROMETHEUS_MULTIPROC_DIR} cannot be created: {exc}"
        ) from None
# Scrape-time collectors of the platform's own numbers (from the database; images/metrics.py).
METRICS_COLLECTORS = ["images.metrics.PlatformCollector"]
MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    *MIDDLEWARE[:-1],
    "django_prometheus.middleware.PrometheusAfterMiddleware",
    MIDDLEWARE[-1],
]  # axes stays last (of the middleware that looks at requests; below it, only:)
# The ASGI waits (core/waiting.py): innermost, so that the answer it makes after a wait
# passes through every middleware above. Every entry must be async-capable
# (tests/test_middleware_async.py).
MIDDLEWARE.append("core.middleware.WaitingMiddleware")
if METRICS_TOKEN and DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["ENGINE"] = "django_prometheus.db.backends.sqlite3"
# PostgreSQL: Django's backend (django-prometheus's with METRICS_TOKEN) with the health
# check's grace: no `SELECT 1` on a connection that worked less than
# DB_HEALTH_CHECK_GRACE_SECONDS ago (core/db/__init__.py, issue 20).
DB_HEALTH_CHECK_GRACE_SECONDS = env.float("DB_HEALTH_CHECK_GRACE_SECONDS", default=1.0)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"]["ENGINE"] = "core.db.prometheus_postgresql" if METRICS_TOKEN else "core.db.postgresql"
