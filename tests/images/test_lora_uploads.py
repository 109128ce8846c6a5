"""Tenants' own LoRA adapters (issue 23): POST /v1/loras (off by default, an admin key,
checked without torch, size-limited, stored like images), visible to that tenant only,
used by its requests (the worker fetches the file from the storage) and deleted by it.

The adapters that run are random low-rank pairs built for the demo model's denoiser
(tools/loras.py); the refused files are written byte by byte in the safetensors layout."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import struct
from pathlib import Path

import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from accounts.services import api_key_create
from billing.models import CreditAccount
from images.lora_files import LoraFileError, lora_header_check
from images.models import ImageModel, Job, LoraAdapter, LoraUploadGrant
from tests.conftest import post_json
from tools.loras import build_lora

URL = "/v1/loras"


def safetensors(tensors: dict[str, tuple[str, list[int]]], *, metadata=None, cut: int = 0, extra: int = 0) -> bytes:
    """A .safetensors file of zeros: {name: (dtype, shape)}; `cut` bytes short or `extra` long."""
    sizes = {"F32": 4, "F16": 2, "BF16": 2}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        count = 1
        for dim in shape:
            count *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + count * sizes[dtype]]}
        offset += count * sizes[dtype]
    if metadata is not None:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    data = struct.pack("<Q", len(raw)) + raw + bytes(offset + extra)
    return data[: len(data) - cut] if cut else data


PEFT = {
    "unet.down_blocks.0.attentions.0.to_q.lora_A.weight": ("F32", [4, 32]),
    "unet.down_blocks.0.attentions.0.to_q.lora_B.weight": ("F32", [32, 4]),
}
KOHYA = {
    "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": ("F16", [8, 320]),
    "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": ("F16", [320, 8]),
    "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": ("F16", []),
}


def check(data: bytes) -> dict:
    return lora_header_check(io.BytesIO(data), size=len(data))


def test_the_header_check_reads_peft_and_kohya_keys():
    assert check(safetensors(PEFT, metadata={"format": "pt"})) | {"metadata": None} == {
        "tensors": 2,
        "keys_format": "peft",
        "rank": 4,
        "metadata": None,
    }
    assert check(safetensors(KOHYA))["keys_format"] == "kohya"
    assert check(safetensors(KOHYA))["rank"] == 8


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "too short"),
        (struct.pack("<Q", 10**12) + b"{}", "header length"),
        (struct.pack("<Q", 4) + b"nope", "not JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        (safetensors({}), "no tensors"),
        (safetensors(PEFT, cut=4), "tensors take"),
        (safetensors(PEFT, extra=4), "tensors take"),
        (safetensors({**PEFT, "unet.conv_in.weight": ("F32", [4, 4])}), "not low-rank pairs"),
        (safetensors({"text_model.embeddings.weight": ("F32", [8, 8])}), "not low-rank pairs"),
        (safetensors({"x.lora_A.weight": ("F32", [4, 8])}), "no low-rank"),
        (safetensors(PEFT, metadata={"a": 1}), "__metadata__"),
    ],
)
def test_the_header_check_refuses_what_is_not_a_lora(data, says):
    with pytest.raises(LoraFileError, match=says) as refused:
        check(data)
    assert (refused.value.status_code, refused.value.param, refused.value.code) == (400, "file", "invalid_lora")


def test_a_bad_offset_or_dtype_is_refused():
    good = safetensors(PEFT)
    (length,) = struct.unpack("<Q", good[:8])
    header = json.loads(good[8 : 8 + length])
    for broken in (
        {"data_offsets": [0, 7]},
        {"dtype": "F128"},
        {"shape": [4, -32]},
        {"data_offsets": [0]},
    ):
        name = next(iter(PEFT))
        changed = {**header, name: {**header[name], **broken}}
        raw = json.dumps(changed).encode()
        with pytest.raises(LoraFileError):
            check(struct.pack("<Q", len(raw)) + raw + good[8 + length :])


# ---- the API -----------------------------------------------------------------------------------


def admin_key(tenant_key):
    """An admin key of the same tenant (uploads are managed like keys and webhooks)."""
    key, raw = api_key_create(tenant=tenant_key.tenant, name="admin", created_by="test", is_admin=True)
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def upload(api, auth, data: bytes, *, name="style", base="dall-e-2", **extra):
    form = {"file": SimpleUploadedFile("a.safetensors", data), "name": name, "base": base, **extra}
    return api.post(URL, form, format="multipart", **auth)


def stored_files() -> list[str]:
    try:
        tenants, _ = default_storage.listdir("loras")
    except FileNotFoundError:
        return []
    return [f"loras/{t}/{f}" for t in tenants for f in default_storage.listdir(f"loras/{t}")[1]]


@pytest.fixture
def uploads_on(settings, tmp_path):
    settings.LORA_TENANT_UPLOADS = "all"
    settings.MEDIA_ROOT = str(tmp_path / "media")
    settings.LORA_DIR = str(tmp_path / "loras")


def error_of(response) -> tuple[int, str | None, str | None]:
    error = response.json()["error"]
    return response.status_code, error["param"], error["code"]


def test_uploads_are_off_by_default(api, registry, make_tenant, settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")
    assert settings.LORA_TENANT_UPLOADS == "off"
    refused = upload(api, admin_key(make_tenant()), safetensors(PEFT))
    assert error_of(refused) == (403, None, "lora_uploads_disabled")
    assert not LoraAdapter.objects.exists() and stored_files() == []


def test_granted_mode_lets_only_granted_tenants_upload(
    api, registry, make_tenant, uploads_on, settings, django_capture_on_commit_callbacks
):
    settings.LORA_TENANT_UPLOADS = "granted"
    granted, other = make_tenant(), make_tenant()
    LoraUploadGrant.objects.create(tenant=granted.tenant, max_adapters=1)
    assert upload(api, admin_key(other), safetensors(PEFT)).status_code == 403
    first = upload(api, admin_key(granted), safetensors(PEFT))
    assert first.status_code == 201, first.content
    assert first.json()["id"] == f"t{granted.tenant.pk}:style"
    assert first.json()["owned_by"] == "organization" and first.json()["base_model"] == "dall-e-2"
    # The grant's own limit (1), not LORA_UPLOAD_MAX_PER_TENANT; replacing by name is not a new one.
    assert error_of(upload(api, admin_key(granted), safetensors(PEFT), name="second")) == (
        400,
        "file",
        "too_many_loras",
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert upload(api, admin_key(granted), safetensors(KOHYA)).status_code == 201
    assert len(stored_files()) == 1  # the replaced file went with the old row


def test_only_an_admin_key_may_upload(api, registry, make_tenant, uploads_on):
    caller = make_tenant()
    assert error_of(upload(api, caller.auth, safetensors(PEFT))) == (403, None, "insufficient_permissions")
    assert error_of(upload(api, {}, safetensors(PEFT)))[0] == 401


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ({"name": "bad name"}, (400, "name", "invalid_value")),
        ({"name": "x" * 65}, (400, "name", "invalid_value")),
        ({"base": "no-such-model"}, (404, "base", "model_not_found")),
        ({"trigger": "x"}, (400, "trigger", "unknown_parameter")),
        ({"data": b"not a safetensors file"}, (400, "file", "invalid_lora")),
        ({"data": safetensors({"unet.conv_in.weight": ("F32", [4, 4])})}, (400, "file", "invalid_lora")),
    ],
)
def test_bad_uploads_are_refused_and_nothing_is_stored(api, registry, make_tenant, uploads_on, form, expected):
    data = form.pop("data", safetensors(PEFT))
    assert error_of(upload(api, admin_key(make_tenant()), data, **form)) == expected
    assert not LoraAdapter.objects.exists() and stored_files() == []


def test_an_owners_session_may_upload_and_a_members_may_not(registry, tenant, uploads_on):
    from django.contrib.auth.models import User
    from django.test import Client

    from accounts.models import Membership

    def session(name, role):
        user = User.objects.create_user(name, f"{name}@example.com", "pw-correct-horse-9")
        Membership.objects.create(user=user, tenant=tenant.tenant, role=role)
        client = Client()
        client.force_login(user)
        return client

    form = {"file": SimpleUploadedFile("a.safetensors", safetensors(PEFT)), "name": "s", "base": "dall-e-2"}
    member = session("mia", Membership.Role.MEMBER).post(URL, form)
    assert error_of(member) == (403, None, "insufficient_permissions")
    form["file"].seek(0)
    owner = session("olga", Membership.Role.OWNER).post(URL, form)
    assert owner.status_code == 201, owner.content
    assert LoraAdapter.objects.get().owner == tenant.tenant


def test_a_missing_field_is_named(api, registry, make_tenant, uploads_on):
    auth = admin_key(make_tenant())
    refused = api.post(URL, {"name": "x", "base": "dall-e-2"}, format="multipart", **auth)
    assert error_of(refused) == (400, "file", "missing_required_parameter")


def test_a_file_over_the_limit_is_a_413_envelope(api, registry, make_tenant, uploads_on, settings):
    data = safetensors(PEFT)
    settings.LORA_UPLOAD_MAX_BYTES = len(data) - 1
    assert error_of(upload(api, admin_key(make_tenant()), data)) == (413, "file", "file_too_large")
    # A body far over the limit is refused before it is read (core.middleware), also as an envelope.
    settings.LORA_UPLOAD_MAX_BYTES = 10
    huge = api.post(URL, b"x", content_type="application/octet-stream", CONTENT_LENGTH=str(3 * 1024 * 1024))
    assert huge.status_code == 413 and huge.json()["error"]["type"] == "invalid_request_error"
    assert stored_files() == []


def test_an_upload_may_exceed_the_json_body_limit(api, registry, make_tenant, uploads_on, settings):
    data = safetensors(PEFT)
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = len(data) // 2  # (JSON bodies; the edit endpoints' limit)
    assert upload(api, admin_key(make_tenant()), data).status_code == 201


# ---- with the worker: the owner's requests use it, nobody else sees it --------------------------


@pytest.fixture
def demo_lora_file(worker, tmp_path) -> bytes:
    from images.worker import pipeline_source

    model = ImageModel.objects.get(public_id="dall-e-2")
    folder = build_lora(Path(pipeline_source(model).source), tmp_path / "built")
    return (folder / "pytorch_lora_weights.safetensors").read_bytes()


def generate(api, tenant, **extra):
    body = {"model": "dall-e-2", "prompt": "a red fox", "size": "256x256", "response_format": "b64_json", "seed": 5}
    return post_json(api, "/v1/images/generations", {**body, **extra}, tenant)


def b64_digest(response) -> str:
    assert response.status_code == 200, response.content
    data = base64.b64decode(response.json()["data"][0]["b64_json"])
    return hashlib.sha256(Image.open(io.BytesIO(data)).convert("RGB").tobytes()).hexdigest()


def test_an_upload_is_used_by_its_owner_only_and_deleted_by_it(api, demo_lora_file, make_tenant, uploads_on):
    owner, other = make_tenant(), make_tenant()
    created = upload(api, admin_key(owner), demo_lora_file, name="fox")
    assert created.status_code == 201, created.content
    lora_id = created.json()["id"]
    [stored] = stored_files()
    assert default_storage.open(stored).read() == demo_lora_file

    def listed(tenant):
        return [item["id"] for item in api.get(URL + "?model=dall-e-2", **tenant.auth).json()["data"]]

    assert listed(owner) == [lora_id] and listed(other) == []
    base = b64_digest(generate(api, owner))
    styled = generate(api, owner, loras=[{"name": lora_id, "scale": 1.0}])
    assert b64_digest(styled) != base
    assert styled["x-credits-charged"] == "16"  # an upload carries no surcharge
    assert b64_digest(generate(api, other)) == base  # after it ran: the base model's bytes
    refused = generate(api, other, loras=[{"name": lora_id}])
    assert error_of(refused) == (400, "loras", "lora_not_found")
    assert str(owner.tenant.pk) not in refused.json()["error"]["message"].replace(lora_id, "")

    assert error_of(api.delete(f"{URL}/{lora_id}", **admin_key(other))) == (404, "id", "lora_not_found")
    assert api.delete(f"{URL}/{lora_id}", **owner.auth).status_code == 403  # not an admin key
    deleted = api.delete(f"{URL}/{lora_id}", **admin_key(owner))
    assert deleted.status_code == 200 and deleted.json() == {"id": lora_id, "object": "lora", "deleted": True}
    assert stored_files() == [] and listed(owner) == []
    assert error_of(generate(api, owner, loras=[{"name": lora_id}])) == (400, "loras", "lora_not_found")
    assert error_of(api.delete(f"{URL}/{lora_id}", **admin_key(owner)))[0] == 404


def test_a_job_whose_upload_was_deleted_fails_and_is_not_charged(
    api, parked, make_tenant, uploads_on, django_capture_on_commit_callbacks
):
    from images.worker import job_run

    owner = make_tenant()
    lora_id = upload(api, admin_key(owner), safetensors(PEFT)).json()["id"]
    body = {"prompt": "x", "model": "dall-e-2", "size": "256x256", "loras": [{"name": lora_id}]}
    queued = post_json(api, "/v1/images/generations", body, owner, HTTP_PREFER="respond-async")
    assert queued.status_code == 202, queued.content
    job = Job.objects.get(tenant=owner.tenant)
    assert job.params["loras"][0]["storage"]
    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"{URL}/{lora_id}", **admin_key(owner)).status_code == 200
    assert stored_files() == []
    job_run(job_id=str(job.pk))
    job.refresh_from_db()
    assert (job.status, job.error_code) == ("failed", "lora_missing")
    account = CreditAccount.objects.get(tenant=owner.tenant)
    assert (account.balance, account.held) == (10_000, 0)


# ---- in an object store ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from tests.s3 import MotoS3

    server = MotoS3(tmp_path_factory.mktemp("moto")).start()
    yield server
    server.stop()


def test_in_an_object_store_the_worker_fetches_the_upload_once(
    api, demo_lora_file, make_tenant, uploads_on, settings, store, tmp_path
):
    from tests.s3 import use_s3

    store.clear()
    use_s3(settings, store)
    owner = make_tenant()
    lora_id = upload(api, admin_key(owner), demo_lora_file, name="fox").json()["id"]
    [key] = store.keys("loras/")
    assert key.startswith(f"loras/{owner.tenant.pk}/") and key.endswith(".safetensors")
    base = b64_digest(generate(api, owner))
    styled = b64_digest(generate(api, owner, loras=[{"name": lora_id}]))
    assert styled != base
    cached = list((Path(settings.LORA_DIR) / "store-cache").rglob("*.safetensors"))
    assert [p.read_bytes() for p in cached] == [demo_lora_file]
    assert b64_digest(generate(api, owner, loras=[{"name": lora_id}])) == styled  # the cached copy
    assert not (tmp_path / "media").exists() or not any((tmp_path / "media").rglob("*"))
    assert api.delete(f"{URL}/{lora_id}", **admin_key(owner)).status_code == 200
    assert store.keys("loras/") == []
