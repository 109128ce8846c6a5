"""The Midjourney-proxy shape on the operator's own model (issue 26 item 3): prompts,
tasks, grids, buttons and notifyHook bodies. The HTTP adapters are images/midjourney.py;
every task is one Job made by the one generation service (generation_create), so money,
moderation, limits, Idempotency-Key and refunds are the same as everywhere.

Names, codes and strings follow novicezk/midjourney-proxy (SubmitImagineDTO,
SubmitChangeDTO, SubmitSimpleChangeDTO, SubmitBlendDTO, SubmitDescribeDTO, Task,
SubmitResultVO, ReturnCode, TaskConditionDTO) and, for `buttons` and
`/mj/submit/action`, the plus edition's documented shape (`customId` such as
`MJ::JOB::upsample::2::<message hash>`).

What each action does here (MJ_* settings, docs/configuration.md):
- IMAGINE: four images of MJ_MODEL in one job (`n` = 4), delivered as one 2x2 grid
  (cell 1 top left, 2 top right, 3 bottom left, 4 bottom right), made from the stored
  cells on first render; `base64Array` reference images make it an image-to-image edit.
- UPSCALE (U1-U4): cell n, resized MJ_UPSCALE_FACTOR times with Lanczos (no model runs:
  GenerationRequest.pipeline False). A model upscaler can replace the resize later.
- VARIATION (V1-V4): four img2img images of cell n at MJ_VARIATION_STRENGTH, a new grid.
- REROLL: the task's own request again with a new seed.
- BLEND: 2-5 images averaged (each fitted to the `dimensions` ratio) into one init
  image, four img2img images of it, a grid (BLEND_PROMPT is the model's prompt).
Prices: the model's price rows of kind `mj_imagine`, `mj_upscale`, `mj_variation`,
`mj_reroll` where the operator added them, else the job kind's rows (billing.services.price_quote).
"""

from __future__ import annotations

import io
import logging
import math
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core import signing
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction

from accounts.models import Tenant
from core.errors import InvalidRequest, NotFound
from images import selectors, task_status
from images.fields import webhook_url_check
from images.files import image_read, image_url
from images.models import ImageModel, Job, MidjourneyTask
from images.profiles import PROFILES
from images.services.generation import GenerationRequest
from images.services.inputs import InputImage
from images.validation import MAX_SEED

# ReturnCode of the proxy.
CODE_SUCCESS = 1
CODE_NOT_FOUND = 3
CODE_VALIDATION_ERROR = 4
CODE_FAILURE = 9
CODE_EXISTED = 21
CODE_IN_QUEUE = 22
CODE_QUEUE_REJECTED = 23
CODE_BANNED_PROMPT = 24

# Task status strings of the proxy's TaskStatus enum, from our job statuses.
STATUS_OF_JOB = {
    Job.Status.QUEUED: "SUBMITTED",
    Job.Status.RUNNING: "IN_PROGRESS",
    Job.Status.SUCCEEDED: "SUCCESS",
    Job.Status.FAILED: "FAILURE",
    Job.Status.CANCELLED: "FAILURE",
}
GRID_ACTIONS = (
    MidjourneyTask.Action.IMAGINE,
    MidjourneyTask.Action.VARIATION,
    MidjourneyTask.Action.REROLL,
    MidjourneyTask.Action.BLEND,
)
CELLS = 4
ENDPOINT = "/mj/submit/{}"
PRICE_ACTIONS = {
    MidjourneyTask.Action.IMAGINE: "mj_imagine",
    MidjourneyTask.Action.UPSCALE: "mj_upscale",
    MidjourneyTask.Action.VARIATION: "mj_variation",
    MidjourneyTask.Action.REROLL: "mj_reroll",
    MidjourneyTask.Action.BLEND: "mj_blend",
    MidjourneyTask.Action.DESCRIBE: "mj_describe",
}
# SubmitBlendDTO's dimensions (the proxy's BlendDimensions) as aspect ratios.
BLEND_DIMENSIONS = {"PORTRAIT": (2, 3), "SQUARE": (1, 1), "LANDSCAPE": (3, 2)}
# What the model is told for a blend (it has no prompt of its own); finalPrompt shows it.
BLEND_PROMPT = "a seamless blend of the reference images"
BLEND_MAX_BYTES = 20 * 1024 * 1024  # per input image
_GRID_SALT = "images.mj-grid"
logger = logging.getLogger(__name__)


# ---- prompts -------------------------------------------------------------------------------


@dataclass
class MjPrompt:
    """A prompt split into what the model draws and the parameters we serve: `--ar W:H`
    (the nearest size the model allows), `--seed N` (0-4294967295) and `--no a, b` (the
    negative prompt). Other `--name value` parameters (`--v 6`, `--q 2`, `--stylize`...)
    are left out of the model's prompt and listed in `ignored`. Leading image URLs are
    reference images, as Midjourney reads them."""

    text: str
    aspect: tuple[int, int] | None = None
    seed: int | None = None
    no: str | None = None
    urls: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


_PARAM_START = re.compile(r"(?:^|\s)--(?=[A-Za-z])")
_URL = re.compile(r"^https?://\S+$", re.IGNORECASE)


def mj_prompt_parse(prompt: str) -> MjPrompt:
    """Parse a Midjourney prompt (see MjPrompt). 400 (`param` "prompt") for a malformed
    `--ar` or `--seed`; an empty prompt is refused by the caller, as the proxy does."""
    match = _PARAM_START.search(prompt)
    head, tail = (prompt[: match.start()], prompt[match.start() :]) if match else (prompt, "")
    words = head.split()
    urls = []
    while words and _URL.match(words[0]):
        urls.append(words.pop(0))
    parsed = MjPrompt(text=" ".join(words), urls=urls)
    for chunk in _PARAM_START.split(tail):
        chunk = chunk.strip()
        if not chunk:
            continue
        name, _, value = chunk.partition(" ")
        name, value = name.lower(), value.strip()
        if name in ("ar", "aspect"):
            found = re.fullmatch(r"(\d{1,4})\s*:\s*(\d{1,4})", value)
            if not found or not int(found[1]) or not int(found[2]):
                raise InvalidRequest(f"Invalid --ar value '{value}': expected W:H such as 16:9.", param="prompt")
            parsed.aspect = (int(found[1]), int(found[2]))
        elif name == "seed":
            if not value.isdigit() or int(value) > MAX_SEED:
                raise InvalidRequest(f"Invalid --seed value '{value}': expected 0 to {MAX_SEED}.", param="prompt")
            parsed.seed = int(value)
        elif name == "no":
            parsed.no = value or None
        else:
            parsed.ignored.append(f"--{chunk}")
    return parsed


def mj_size(*, model: ImageModel, aspect: tuple[int, int] | None) -> str:
    """The size of one cell: of the sizes the model's profile allows, the one whose
    aspect ratio is nearest `aspect` (1:1 without one), ties broken by the area nearest
    MJ_BASE_SIZE (the profile's default size when empty). Profiles with fixed sizes make
    `--ar` approximate; docs/api.md says so."""
    profile = PROFILES[model.profile]
    base = settings.MJ_BASE_SIZE if settings.MJ_BASE_SIZE in profile.sizes else profile.default_size
    base_w, base_h = (int(v) for v in base.split("x"))
    want = math.log(aspect[0] / aspect[1]) if aspect else 0.0

    def distance(size: str) -> tuple[float, float]:
        width, height = (int(v) for v in size.split("x"))
        return round(abs(math.log(width / height) - want), 6), abs(math.log((width * height) / (base_w * base_h)))

    return min(profile.sizes, key=distance)


# ---- tasks ---------------------------------------------------------------------------------


# Stands for the new task's id in a description (known only once the row is written).
TASK_ID = "\x00id\x00"


def mj_task_id_new() -> str:
    """The proxy's id form (`System.currentTimeMillis() + RandomUtil.randomNumbers(3)`),
    with six random digits instead of three: ids of one millisecond rarely meet."""
    return f"{int(time.time() * 1000)}{secrets.randbelow(10**6):06d}"


def mj_task_create(
    *,
    job: Job,
    action: str,
    prompt: str,
    prompt_en: str,
    description: str,
    state: str,
    notify_hook: str,
    spec: dict[str, Any],
    parent: MidjourneyTask | None = None,
    index: int | None = None,
) -> MidjourneyTask:
    """The task row beside its job, in the job's transaction (GenerationRequest.on_job_created).
    A clash of random ids is retried under a savepoint."""
    for attempt in range(5):
        task_id = mj_task_id_new()
        try:
            with transaction.atomic():
                return MidjourneyTask.objects.create(
                    id=task_id,
                    tenant_id=job.tenant_id,
                    job=job,
                    action=action,
                    parent=parent,
                    index=index,
                    prompt=prompt,
                    prompt_en=prompt_en,
                    description=description.replace(TASK_ID, task_id)[:2000],
                    state=state[:2000],
                    notify_hook=notify_hook,
                    spec=spec,
                )
        except IntegrityError:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def mj_task_get(*, tenant: Tenant, task_id: str) -> MidjourneyTask | None:
    """The tenant's task, or None (another tenant's task looks exactly like a missing one)."""
    return (
        MidjourneyTask.objects.select_related("job__model", "job__hold")
        .filter(pk=str(task_id)[:32], tenant=tenant)
        .first()
    )


def mj_tasks_by_ids(*, tenant: Tenant, ids: list[str]) -> list[MidjourneyTask]:
    """The tenant's tasks among `ids`, in the order asked (unknown ids left out)."""
    wanted = [str(i)[:32] for i in ids if isinstance(i, (str, int))][:1000]
    found = {
        t.pk: t
        for t in MidjourneyTask.objects.select_related("job__model", "job__hold")
        .prefetch_related("job__images")
        .filter(pk__in=wanted, tenant=tenant)
    }
    return [found[i] for i in dict.fromkeys(wanted) if i in found]


# ---- the generation requests of each action -----------------------------------------------


@dataclass
class MjSubmission:
    """What a submit endpoint asks for, before the one generation service sees it."""

    action: str
    prompt: str
    state: str = ""
    notify_hook: str = ""
    references: list[str] = field(default_factory=list)  # base64Array (data URLs or base64)
    dimensions: str = "SQUARE"  # a blend's
    parent: MidjourneyTask | None = None
    index: int | None = None


def _notify_hook_check(url: str) -> str:
    return webhook_url_check(url, param="notifyHook") if url else ""


def _model() -> ImageModel:
    model = selectors.image_model_get(public_id=settings.MJ_MODEL)
    if model is None:
        raise InvalidRequest(
            f"The Midjourney model '{settings.MJ_MODEL}' does not exist (MJ_MODEL); contact your platform operator.",
            param="model",
            code="model_not_found",
        )
    return model


def mj_generation_request(*, submission: MjSubmission) -> GenerationRequest:
    """The GenerationRequest of a submission (module docstring for what each action
    does), with the hook that writes its task row in the job's transaction."""
    action = submission.action
    notify_hook = _notify_hook_check(submission.notify_hook)
    model = _model()
    parent = submission.parent
    images: list[InputImage] = []
    strength = None
    output = None
    pipeline = True
    kind = Job.Kind.GENERATE
    if action == MidjourneyTask.Action.IMAGINE:
        parsed = mj_prompt_parse(submission.prompt)
        if not parsed.text.strip():
            raise InvalidRequest("prompt不能为空", param="prompt", code="missing_required_parameter")
        references = [*parsed.urls, *submission.references]
        spec = {
            "prompt": parsed.text,
            "size": mj_size(model=model, aspect=parsed.aspect),
            "negative_prompt": parsed.no,
            "ignored": parsed.ignored,
            "references": bool(references),
        }
        fields = {"prompt": parsed.text, "n": CELLS, "size": spec["size"], "seed": parsed.seed}
        if references:
            kind = Job.Kind.EDIT
            images = [InputImage(param="base64Array", reference=ref) for ref in references]
        prompt, prompt_en = submission.prompt, submission.prompt
        description = f"/imagine {submission.prompt}"
    elif action == MidjourneyTask.Action.BLEND:
        size = mj_size(model=model, aspect=BLEND_DIMENSIONS[submission.dimensions])
        width, height = (int(v) for v in size.split("x"))
        blended = mj_blend_image(submission.references, width=width, height=height)
        spec = {"prompt": BLEND_PROMPT, "size": size, "references": True}
        fields = {"prompt": BLEND_PROMPT, "n": CELLS, "size": size}
        kind = Job.Kind.EDIT
        images = [InputImage(param="base64Array", upload=io.BytesIO(blended))]
        prompt = prompt_en = ""
        description = f"/blend {TASK_ID} {len(submission.references)}"  # (the proxy's form)
    else:
        if parent is None:
            raise NotFound("关联任务不存在或已失效", param="taskId", code="not_found")
        if parent.action not in GRID_ACTIONS:
            raise InvalidRequest("关联任务不允许执行变化", param="taskId", code="invalid_value")
        if parent.job.status != Job.Status.SUCCEEDED:
            raise InvalidRequest("关联任务状态错误", param="taskId", code="invalid_value")
        spec = dict(parent.spec)
        prompt, prompt_en = parent.prompt, parent.prompt_en
        fields = {"prompt": spec.get("prompt") or parent.job.prompt, "size": parent.job.size}
        letter = {"UPSCALE": "U", "VARIATION": "V"}.get(action)
        description = f"/up {parent.pk} " + (f"{letter}{submission.index}" if letter else "R")
        if action == MidjourneyTask.Action.REROLL:
            if spec.get("references") or spec.get("source_task"):
                raise InvalidRequest(
                    "REROLL re-runs a text prompt; this task was made from images, which are not kept.",
                    param="taskId",
                    code="invalid_value",
                )
            fields["n"] = CELLS
        else:
            if submission.index not in (1, 2, 3, 4):
                raise InvalidRequest("index参数错误: 1-4", param="index", code="invalid_value")
            cell = mj_cell(task=parent, index=submission.index)
            kind = Job.Kind.EDIT
            images = [InputImage(param="image", upload=io.BytesIO(image_read(cell)))]
            if action == MidjourneyTask.Action.UPSCALE:
                factor = settings.MJ_UPSCALE_FACTOR
                fields["n"] = 1
                output = {"size": [cell.width * factor, cell.height * factor]}
                pipeline = False
            else:
                fields["n"] = CELLS
                strength = settings.MJ_VARIATION_STRENGTH
                spec = {**spec, "source_task": parent.pk, "source_index": submission.index}
    fields.update(model=model.public_id, webhook_url=notify_hook or None)
    if spec.get("negative_prompt"):
        fields["negative_prompt"] = spec["negative_prompt"]

    def on_job_created(job: Job) -> None:
        job._midjourney_task = mj_task_create(
            job=job,
            action=action,
            prompt=prompt,
            prompt_en=prompt_en,
            description=description,
            state=submission.state,
            notify_hook=notify_hook,
            spec=spec,
            parent=parent,
            index=submission.index if action in ("UPSCALE", "VARIATION") else None,
        )

    return GenerationRequest(
        endpoint=ENDPOINT.format(action.lower()),
        kind=kind,
        fields=fields,
        images=images,
        default_model=model.public_id,
        strength=strength,
        output=output,
        price_action=PRICE_ACTIONS[action],
        pipeline=pipeline,
        on_job_created=on_job_created,
    )


def mj_blend_image(references: list[str], *, width: int, height: int) -> bytes:
    """The init image of a blend: each image (data URL, base64 or https URL, decoded
    with the upload checks: formats, bytes, pixels) fitted (cover, centred) to
    width x height, then averaged with equal weights; a PNG."""
    from PIL import Image, ImageOps

    from images import uploads
    from images.fetch import image_bytes_from_reference

    mixed = None
    for i, reference in enumerate(references, start=1):
        data = image_bytes_from_reference(reference, param="base64Array", max_bytes=BLEND_MAX_BYTES)
        picture = uploads.image_open(
            data, param="base64Array", max_bytes=BLEND_MAX_BYTES, formats=("png", "jpeg", "webp")
        )
        fitted = ImageOps.fit(picture.convert("RGB"), (width, height), Image.Resampling.LANCZOS)
        mixed = fitted if mixed is None else Image.blend(mixed, fitted, alpha=1.0 / i)  # (a running mean)
    buffer = io.BytesIO()
    mixed.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def mj_cell(*, task: MidjourneyTask, index: int):
    """Image `index` (1-4) of a grid task's job (the cell made as image index - 1): 400
    when it has no such image (its images were deleted by retention, it made fewer, or
    the output safety check withheld that cell: issue 25)."""
    cell = next((image for image in task.job.images.all() if image.index == index - 1), None)
    if cell is None:
        if index - 1 in ((task.job.output_moderation or {}).get("withheld") or []):
            withheld = "该图片已被安全检查拦截 (withheld by the output safety check)"
            raise InvalidRequest(withheld, param="index", code="invalid_value")
        raise InvalidRequest("关联任务的图片已不存在", param="index", code="invalid_value")
    return cell


# ---- custom ids and buttons ----------------------------------------------------------------

_CUSTOM_ID = re.compile(
    r"^MJ::JOB::(?P<kind>upsample|variation|reroll)::(?P<index>\d)::(?P<hash>[0-9a-fA-F-]{32,36})(?:::SOLO)?$"
)
_ACTION_OF_KIND = {
    "upsample": MidjourneyTask.Action.UPSCALE,
    "variation": MidjourneyTask.Action.VARIATION,
    "reroll": MidjourneyTask.Action.REROLL,
}


def mj_custom_id_parse(custom_id: str) -> tuple[str, int | None, str]:
    """(action, index or None, message hash) of a button's customId; 400 for the
    buttons this server does not offer (zoom, pan, vary region, high/low variation...)."""
    found = _CUSTOM_ID.match(custom_id or "")
    if not found:
        raise InvalidRequest(f"customId not supported: '{custom_id[:100]}'.", param="customId", code="invalid_value")
    action = _ACTION_OF_KIND[found["kind"]]
    index = int(found["index"])
    if action != MidjourneyTask.Action.REROLL and index not in (1, 2, 3, 4):
        raise InvalidRequest("index参数错误: 1-4", param="customId", code="invalid_value")
    return action, (None if action == MidjourneyTask.Action.REROLL else index), found["hash"].lower()


def mj_message_hash(task: MidjourneyTask) -> str:
    """The hash in the task's customIds: its job's id (a UUID, as Discord's hashes look)."""
    return str(task.job_id)


def mj_buttons(task: MidjourneyTask) -> list[dict[str, Any]]:
    """A finished grid's buttons, in Midjourney's order: U1-U4, 🔄, V1-V4 (the plus
    proxy's fields: customId, emoji, label, type 2, style 2). Other tasks have none."""
    if task.action not in GRID_ACTIONS or task.job.status != Job.Status.SUCCEEDED:
        return []
    digest = mj_message_hash(task)

    def button(custom_id: str, label: str = "", emoji: str = "") -> dict[str, Any]:
        return {"customId": custom_id, "emoji": emoji, "label": label, "type": 2, "style": 2}

    return [
        *(button(f"MJ::JOB::upsample::{i}::{digest}", f"U{i}") for i in range(1, 5)),
        button(f"MJ::JOB::reroll::0::{digest}::SOLO", emoji="🔄"),
        *(button(f"MJ::JOB::variation::{i}::{digest}", f"V{i}") for i in range(1, 5)),
    ]


# ---- grids and links -----------------------------------------------------------------------


def mj_grid_compose(cells: list[bytes | None]) -> bytes:
    """Four images of one size as a 2x2 PNG grid, twice as wide and as high as a cell
    (1 top left, 2 top right, 3 bottom left, 4 bottom right); a None cell (withheld by
    the output safety check, issue 25) is left a flat grey."""
    from PIL import Image

    pictures = [None if data is None else Image.open(io.BytesIO(data)).convert("RGB") for data in cells]
    width, height = next(picture for picture in pictures if picture is not None).size
    grid = Image.new("RGB", (width * 2, height * 2), (128, 128, 128))
    for i, picture in enumerate(pictures[:CELLS]):
        if picture is None:
            continue
        if picture.size != (width, height):
            picture = picture.resize((width, height), Image.Resampling.LANCZOS)
        grid.paste(picture, ((i % 2) * width, (i // 2) * height))
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def mj_grid_ensure(task: MidjourneyTask) -> str | None:
    """The storage name of a finished grid task's 2x2 image, made from its stored cells
    on first use (a render, a notifyHook body) and recorded once; None when it cannot
    be made (not finished, cells gone). Two first renders at once both compose it and
    the second one's file is deleted."""
    if task.grid_file:
        return task.grid_file
    if task.action not in GRID_ACTIONS or task.job.status != Job.Status.SUCCEEDED:
        return None
    images = {image.index: image for image in task.job.images.all()}
    withheld = set((task.job.output_moderation or {}).get("withheld") or [])
    if not images or any(index not in images and index not in withheld for index in range(CELLS)):
        return None
    data = mj_grid_compose([image_read(images[i]) if i in images else None for i in range(CELLS)])
    job_id = str(task.job_id)
    name = default_storage.save(f"images/{job_id[:2]}/{job_id}-grid.png", ContentFile(data))
    won = MidjourneyTask.objects.filter(pk=task.pk, grid_file="").update(grid_file=name)
    if not won:
        default_storage.delete(name)
        task.refresh_from_db(fields=["grid_file"])
        return task.grid_file or None
    task.grid_file = name
    return name


def mj_grid_token(task: MidjourneyTask) -> str:
    """A signed, expiring token for a task's grid (like images.files.image_token)."""
    return signing.TimestampSigner(salt=_GRID_SALT).sign_object({"m": task.pk, "t": task.tenant_id}, compress=False)


def mj_grid_token_read(token: str) -> tuple[str, int, float] | None:
    """(task id, tenant id, seconds left) of a valid, unexpired grid token, else None."""
    try:
        value = signing.TimestampSigner(salt=_GRID_SALT).unsign_object(token, max_age=settings.IMAGE_URL_TTL_SECONDS)
        signed_at = float(signing.b62_decode(token.rsplit(":", 2)[-2]))
        return str(value["m"]), int(value["t"]), settings.IMAGE_URL_TTL_SECONDS - (time.time() - signed_at)
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        return None


def mj_grid_for_token(token: str) -> tuple[str, float] | None:
    """(storage name, seconds left) of the grid behind a link, or None: a bad or expired
    token, another tenant's, a suspended tenant's, or no grid."""
    from accounts.principals import tenant_is_active

    found = mj_grid_token_read(token)
    if found is None:
        return None
    task = MidjourneyTask.objects.select_related("tenant").filter(pk=found[0], tenant_id=found[1]).first()
    if task is None or not task.grid_file or not tenant_is_active(task.tenant):
        return None
    return task.grid_file, found[2]


# ---- rendering -----------------------------------------------------------------------------


def _ms(value) -> int | None:
    return int(value.timestamp() * 1000) if value else None


def _progress(job: Job) -> str:
    if job.status == Job.Status.SUCCEEDED:
        return "100%"
    if job.status in (Job.Status.FAILED, Job.Status.CANCELLED):
        return ""  # (the proxy's Task.fail() empties it)
    if job.status == Job.Status.QUEUED:
        return "0%"
    done = max(job.steps_done, task_status.task_status_steps_done(job_id=job.pk))
    return f"{min(99, done * 100 // max(1, job.steps))}%"


def _image_url(task: MidjourneyTask, *, base_url: str, strict: bool) -> str | None:
    if task.job.status != Job.Status.SUCCEEDED:
        return None
    base = settings.PUBLIC_BASE_URL or base_url.rstrip("/")
    if task.action in GRID_ACTIONS:
        try:
            made = mj_grid_ensure(task)
        except Exception:
            if strict:
                raise  # (a fetch hears 503 or 410 from image_read)
            logger.warning("the grid of midjourney task %s could not be made", task.pk, exc_info=True)
            made = None
        return f"{base}/mj/image/{mj_grid_token(task)}" if made else None
    images = list(task.job.images.all())
    return image_url(images[0], base_url=base_url) if images else None


def mj_task_body(task: MidjourneyTask, *, base_url: str, strict: bool = True) -> dict[str, Any]:
    """The proxy's Task object: id, action, status (NOT_START, SUBMITTED, IN_PROGRESS,
    FAILURE, SUCCESS), progress ("0%".."100%", "" after a failure), imageUrl (the
    grid, or the upscaled cell; signed links valid IMAGE_URL_TTL_SECONDS), buttons,
    failReason, prompt/promptEn, description, state, submitTime/startTime/finishTime
    (milliseconds), properties (finalPrompt: what the model drew; messageHash).
    `strict` False (a notifyHook body): a grid that cannot be made leaves imageUrl null
    instead of raising."""
    job = task.job
    fail_reason = None
    if job.status in (Job.Status.FAILED, Job.Status.CANCELLED):
        fail_reason = job.error_message or job.error_code or job.status
    prompt, prompt_en, final_prompt = task.prompt, task.prompt_en, job.prompt
    if task.action == MidjourneyTask.Action.DESCRIBE and job.output_text:  # (the proxy's describe success)
        prompt = prompt_en = final_prompt = mj_describe_prompt(job)
    properties: dict[str, Any] = {
        "finalPrompt": final_prompt,
        "messageHash": mj_message_hash(task),
        "model": job.model.public_id,
        "seed": job.seed,
    }
    if task.spec.get("ignored"):
        properties["ignoredParameters"] = task.spec["ignored"]
    if task.notify_hook:
        properties["notifyHook"] = task.notify_hook
    hold = getattr(job, "hold", None)
    properties["creditsCharged"] = hold.captured if hold is not None else 0
    return {
        "id": task.pk,
        "action": task.action,
        "status": STATUS_OF_JOB[job.status],
        "prompt": prompt,
        "promptEn": prompt_en,
        "description": task.description,
        "state": task.state or None,
        "submitTime": _ms(job.created_at),
        "startTime": _ms(job.started_at),
        "finishTime": _ms(job.finished_at),
        "imageUrl": _image_url(task, base_url=base_url, strict=strict),
        "progress": _progress(job),
        "failReason": fail_reason,
        "buttons": mj_buttons(task),
        "properties": properties,
    }


def mj_submit_body(*, task: MidjourneyTask) -> dict[str, Any]:
    """SubmitResultVO for an accepted task: code 1 ("提交成功"), or 22 with the number of
    jobs ahead of it in its model's queue (`numberOfQueues`), as the proxy answers."""
    from images.queue_position import queue_position

    position = queue_position(queue=task.job.model.queue, job_id=task.job_id) if task.job.status == "queued" else None
    ahead = (position or 1) - 1
    if ahead > 0:
        return {
            "code": CODE_IN_QUEUE,
            "description": f"排队中，前面还有{ahead}个任务",
            "result": task.pk,
            "properties": {"numberOfQueues": ahead},
        }
    return {"code": CODE_SUCCESS, "description": "提交成功", "result": task.pk, "properties": {}}


# ---- notifyHook ----------------------------------------------------------------------------


def _task_of_job(job_id: Any) -> MidjourneyTask | None:
    return (
        MidjourneyTask.objects.select_related("job__model", "job__hold")
        .prefetch_related("job__images")
        .filter(job_id=job_id)
        .first()
    )


def mj_notify_body(*, job_id: Any) -> dict[str, Any] | None:
    """The task object a job's notifyHook receives (links under PUBLIC_BASE_URL), or
    None when the job is no Midjourney task."""
    task = _task_of_job(job_id)
    if task is None:
        return None
    return mj_task_body(task, base_url=settings.PUBLIC_BASE_URL or "http://localhost", strict=False)


def mj_notify(*, job_id: Any, stage: str) -> None:
    """Post the task to its notifyHook for one change (`stage`: SUBMITTED, IN_PROGRESS;
    the end comes through the job's settle, images.services.webhooks), through the
    webhook deliveries: signed, retried, public targets only, once per stage."""
    from images.services.webhooks import webhook_payload_deliver

    task = _task_of_job(job_id)
    if task is None or not task.notify_hook:
        return
    body = mj_task_body(task, base_url=settings.PUBLIC_BASE_URL or "http://localhost")
    webhook_payload_deliver(
        job=task.job,
        url=task.notify_hook,
        event_type=f"midjourney.task.{stage.lower()}",
        payload=body,
        dedupe_key=f"{task.job_id}:midjourney.{stage.lower()}:request",
    )


# ---- describe (issue 26 item 1: the captioner tool model) ---------------------------------

DESCRIBE_NUMBERS = ("1\ufe0f\u20e3", "2\ufe0f\u20e3", "3\ufe0f\u20e3", "4\ufe0f\u20e3")  # 1️⃣ 2️⃣ 3️⃣ 4️⃣


def mj_describe_prompt(job: Job) -> str:
    """A describe task's prompt text as the proxy returns it (Midjourney's /describe
    embed: numbered prompts, each with the image's `--ar`, separated by blank lines):
    one per caption line of the captioner's output (images/tool_worker.py)."""
    divisor = math.gcd(job.width, job.height) or 1
    aspect = f"--ar {job.width // divisor}:{job.height // divisor}"
    captions = [line.strip() for line in job.output_text.splitlines() if line.strip()][: len(DESCRIBE_NUMBERS)]
    return "\n\n".join(f"{DESCRIBE_NUMBERS[i]} {caption} {aspect}" for i, caption in enumerate(captions))


def mj_describe_request(*, submission: MjSubmission) -> GenerationRequest:
    """SubmitDescribeDTO (`base64`: one data URL or base64 image): a `describe` job on
    the first enabled captioner model (images/tool_models.py; 400 when none is
    installed), priced by its `mj_describe` row, else its `describe` row."""
    from images.services.tools import tool_generation_request

    notify_hook = _notify_hook_check(submission.notify_hook)
    if not submission.references:
        raise InvalidRequest("base64不能为空", param="base64", code="missing_required_parameter")

    def on_job_created(job: Job) -> None:
        job._midjourney_task = mj_task_create(
            job=job,
            action=MidjourneyTask.Action.DESCRIBE,
            prompt="",
            prompt_en="",
            description=f"/describe {TASK_ID}",
            state=submission.state,
            notify_hook=notify_hook,
            spec={},
        )

    return tool_generation_request(
        endpoint=ENDPOINT.format("describe"),
        kind=Job.Kind.DESCRIBE,
        image=InputImage(param="base64", reference=submission.references[0]),
        fields={"webhook_url": notify_hook or None},
        price_action=PRICE_ACTIONS[MidjourneyTask.Action.DESCRIBE],
        on_job_created=on_job_created,
    )
