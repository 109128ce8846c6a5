"""What a model can do follows its source (images/services/models.py, images.worker).

A row pointed at another folder (the admin's form, `model_add --update`, code) gets the
new family's capabilities at once, so what the new family cannot do is refused with a
400 before any credit is held. A row changed behind the services' back (a bulk UPDATE,
a folder replaced in place) is corrected by the worker that runs it: that job is a 400
with its hold released (never a retryable 502), and the next request is refused before
any hold.

Families are recognised from model_index.json alone (torch-free), so each family here is
a folder with only that file: the refusals happen before any weights are loaded.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.urls import reverse
from PIL import Image

from billing.models import CreditAccount
from images.families_catalog import FAMILIES
from images.models import ImageModel, Job
from images.selectors import image_model_cache_clear
from images.services.models import model_source_set

INPAINTING = next(spec for spec in FAMILIES if "inpaint" in spec.edit_modes and spec.name == "sdxl")
CANNOT_INPAINT = [spec for spec in FAMILIES if "inpaint" not in spec.edit_modes]


def _folder(root: Path, spec) -> Path:
    folder = root / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": spec.pipelines[0]}))
    return folder


def _png(mode="RGB", *, transparent_left=False) -> SimpleUploadedFile:
    image = Image.new("RGBA" if transparent_left else mode, (256, 256), (200, 40, 40, 255))
    if transparent_left:
        image.paste((0, 0, 0, 0), (0, 0, 128, 256))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return SimpleUploadedFile("mask.png" if transparent_left else "a.png", buffer.getvalue(), content_type="image/png")


def _inpaint(api, tenant, public_id):
    data = {
        "model": public_id,
        "prompt": "add a moon",
        "size": "256x256",
        "response_format": "b64_json",
        "image": _png(),
        "mask": _png(transparent_left=True),
    }
    return api.post("/v1/images/edits", data, format="multipart", **tenant.auth)


def _balance(tenant) -> int:
    return CreditAccount.objects.get(tenant=tenant.tenant).balance


def _add(public_id: str, folder: Path, *extra: str) -> ImageModel:
    call_command(
        "model_add", public_id, str(folder), "--profile", "dall-e-2", "--price-template", "dall-e-2", *extra,
        stdout=io.StringIO(),
    )  # fmt: skip
    return ImageModel.objects.get(public_id=public_id)


def _admin_repoint(client, model: ImageModel, source: str) -> None:
    """The operator edits the row's source in the admin's change form (the README's way)."""
    user = get_user_model().objects.create_superuser("operator", "op@example.com", "a-long-password-9")
    client.force_login(user)
    data = {
        "public_id": model.public_id,
        "profile": model.profile,
        "kind": model.kind,
        "source": source,
        "dtype": model.dtype,
        "queue": model.queue,
        "steps_by_quality": json.dumps(model.steps_by_quality),
        "guidance": model.guidance,
        "max_batch": "",
        "capabilities": json.dumps(model.capabilities),  # the old source's, as the form shows them
        "enabled": "on",
        "owned_by": model.owned_by,
        "prices-TOTAL_FORMS": "0",
        "prices-INITIAL_FORMS": "0",
        "prices-MIN_NUM_FORMS": "0",
        "prices-MAX_NUM_FORMS": "1000",
    }
    response = client.post(reverse("admin:images_imagemodel_change", args=[model.pk]), data)
    assert response.status_code == 302, response.content.decode()[:3000]


@pytest.mark.parametrize("how", ["admin", "command", "code"])
@pytest.mark.parametrize("target", CANNOT_INPAINT, ids=[spec.name for spec in CANNOT_INPAINT])
def test_repointed_model_refuses_inpainting_before_any_hold(how, target, tmp_path, registry, api, tenant, client):
    model = _add("repointed", _folder(tmp_path, INPAINTING))
    assert model.capabilities["family"] == INPAINTING.name
    new_source = str(_folder(tmp_path, target))

    if how == "admin":
        _admin_repoint(client, model, new_source)
    elif how == "command":
        _add("repointed", Path(new_source), "--update")
    else:
        model_source_set(model=model, source=new_source)

    model.refresh_from_db()
    assert model.source == new_source and model.capabilities_source == new_source
    assert model.capabilities["family"] == target.name
    before, jobs = _balance(tenant), Job.objects.count()
    response = _inpaint(api, tenant, "repointed")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "unsupported_parameter"
    assert _balance(tenant) == before and Job.objects.count() == jobs  # nothing held, no job


def test_admin_copy_of_a_row_with_another_source_gets_that_source_capabilities(tmp_path, registry, client):
    """A new row saved in the admin (a copy of another, its capabilities pasted along)."""
    original = _add("original", _folder(tmp_path, INPAINTING))
    target = CANNOT_INPAINT[0]
    copy = ImageModel.objects.create(
        public_id="copy",
        profile=original.profile,
        source=original.source,
        steps_by_quality=original.steps_by_quality,
        capabilities=original.capabilities,
    )  # a row written by hand: capabilities of no recorded source
    _admin_repoint(client, copy, str(_folder(tmp_path, target)))
    copy.refresh_from_db()
    assert copy.capabilities["family"] == target.name


def test_capabilities_typed_in_the_admin_do_not_replace_the_sources(tmp_path, registry, client):
    """The operator edits the family in the admin's capabilities field, the source
    unchanged: the row keeps what its folder says (capabilities are computed, never typed)."""
    target = CANNOT_INPAINT[0]
    model = _add("typed", _folder(tmp_path, target))
    assert model.capabilities["family"] == target.name
    model.capabilities = {**model.capabilities, "family": INPAINTING.name, "edit_modes": list(INPAINTING.edit_modes)}
    _admin_repoint(client, model, model.source)  # the form posts the typed capabilities
    model.refresh_from_db()
    assert model.capabilities["family"] == target.name and "inpaint" not in model.capabilities.get("edit_modes", [])


@pytest.mark.parametrize("drift", ["bulk_update", "folder_replaced"])
def test_worker_corrects_a_row_that_disagrees_with_its_source(drift, tmp_path, worker, api, tenant, settings):
    settings.JOB_WAIT_SECONDS = 60
    target = next(spec for spec in CANNOT_INPAINT if spec.name == "sana")
    model = _add("drifted", _folder(tmp_path, INPAINTING))
    if drift == "bulk_update":  # behind the services' back
        ImageModel.objects.filter(pk=model.pk).update(source=str(_folder(tmp_path, target)))
        image_model_cache_clear()  # (a bulk update sends no signal)
    else:  # the same path now holds another family's checkpoint
        (Path(model.source) / "model_index.json").write_text(json.dumps({"_class_name": target.pipelines[0]}))

    before = _balance(tenant)
    response = _inpaint(api, tenant, "drifted")
    assert response.status_code == 400, response.content  # not a retryable 502
    assert response.json()["error"]["code"] == "unsupported_parameter"
    assert _balance(tenant) == before  # the hold was released
    model.refresh_from_db()
    assert model.capabilities["family"] == target.name and model.capabilities_source == model.source

    jobs = Job.objects.count()
    response = _inpaint(api, tenant, "drifted")
    assert response.status_code == 400 and response.json()["error"]["param"] in ("mask", "image")
    assert Job.objects.count() == jobs and _balance(tenant) == before  # refused before any hold
