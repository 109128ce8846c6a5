"""The Midjourney-proxy shape (issue 26 item 3), driven over HTTP as the proxy's clients
call it, on the session's real worker and the demo model (dall-e-2 profile, 256x256
cells): imagine -> a 2x2 grid with U1-U4/🔄/V1-V4, U2 -> cell 2 enlarged, V1 -> a new
grid, fetch, list-by-condition, notifyHook on a loopback receiver, refusals in the
proxy's envelope, the money path (prices per action, 402, refunds) and a clean ledger."""

from __future__ import annotations

import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO

import pytest
from django.core.management import call_command
from PIL import Image

from billing.models import CreditAccount, Price, UsageRecord
from images.models import ImageModel, Job, MidjourneyTask
from images.services import midjourney as mj
from images.services.jobs import job_cancel
from tests.conftest import post_json

pytestmark = pytest.mark.usefixtures("transactional_db")


@pytest.fixture(autouse=True)
def _mj_settings(settings):
    settings.MJ_MODEL = "dall-e-2"
    settings.MJ_BASE_SIZE = "256x256"
    settings.MJ_UPSCALE_FACTOR = 2


def balance(tenant) -> int:
    return CreditAccount.objects.get(tenant=tenant.tenant).balance


def submit(api, tenant, path: str, body: dict, **headers):
    response = post_json(api, f"/mj/submit/{path}", body, tenant, **headers)
    assert response.status_code == 200, response.content
    return response.json()


def fetch(api, tenant, task_id: str) -> dict:
    response = api.get(f"/mj/task/{task_id}/fetch", **tenant.auth)
    assert response.status_code == 200, response.content
    return response.json()


def wait_done(api, tenant, task_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = fetch(api, tenant, task_id)
        if task["status"] in ("SUCCESS", "FAILURE"):
            return task
        assert task["status"] in ("SUBMITTED", "IN_PROGRESS")
        assert task["progress"].endswith("%")
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} did not finish: {task}")


def download(api, url: str) -> Image.Image:
    path = url.split("://", 1)[1].split("/", 1)[1]
    response = api.get("/" + path)  # signed link: no key
    assert response.status_code == 200, response.content
    data = b"".join(response.streaming_content) if response.streaming else response.content
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def mean_diff(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference per channel value (0-255) of two same-sized RGB images."""
    assert a.size == b.size
    pairs = zip(a.convert("RGB").tobytes(), b.convert("RGB").tobytes(), strict=True)
    return sum(abs(x - y) for x, y in pairs) / (a.width * a.height * 3)


def imagine(api, tenant, prompt: str = "a red fox in the snow", **extra) -> dict:
    answer = submit(api, tenant, "imagine", {"prompt": prompt, **extra})
    assert answer["code"] in (1, 22), answer
    assert set(answer) == {"code", "description", "result", "properties"}
    assert answer["result"].isdigit() and len(answer["result"]) >= 16  # the proxy's id form
    return answer


def test_imagine_grid_then_u2_v1_reroll_fetch_and_list(api, worker, tenant):
    Price.objects.create(model=ImageModel.objects.get(public_id="dall-e-2"), kind="mj_imagine", credits_per_image=5)
    before = balance(tenant)
    answer = imagine(api, tenant, "a red fox in the snow --ar 1:1 --seed 42 --no blur --v 6")
    task = wait_done(api, tenant, answer["result"])

    assert task["status"] == "SUCCESS" and task["progress"] == "100%" and task["failReason"] is None
    assert task["action"] == "IMAGINE" and task["id"] == answer["result"]
    assert task["prompt"] == "a red fox in the snow --ar 1:1 --seed 42 --no blur --v 6"
    assert task["description"] == "/imagine " + task["prompt"]
    assert task["submitTime"] <= task["startTime"] <= task["finishTime"]
    assert task["properties"]["finalPrompt"] == "a red fox in the snow"
    assert task["properties"]["ignoredParameters"] == ["--v 6"]
    job = Job.objects.get(midjourney_task__pk=task["id"])
    assert (job.n, job.seed, job.params["negative_prompt"]) == (4, 42, "blur")
    # Four cells stored, delivered as one grid twice as wide and as high as a cell.
    cells = list(job.images.all())
    assert len(cells) == 4 and {(c.width, c.height) for c in cells} == {(256, 256)}
    grid = download(api, task["imageUrl"])
    assert grid.size == (512, 512)
    labels = [b["label"] or b["emoji"] for b in task["buttons"]]
    assert labels == ["U1", "U2", "U3", "U4", "🔄", "V1", "V2", "V3", "V4"]
    assert task["buttons"][1]["customId"] == f"MJ::JOB::upsample::2::{job.pk}"
    assert task["buttons"][4]["customId"] == f"MJ::JOB::reroll::0::{job.pk}::SOLO"
    # Priced by the operator's mj_imagine row: 5 credits x 4 images.
    assert before - balance(tenant) == 20 and task["properties"]["creditsCharged"] == 20

    # U2 (simple-change): cell 2 (the grid's top right), enlarged twice; priced as an edit (16).
    before = balance(tenant)
    upscale = submit(api, tenant, "simple-change", {"content": f"{task['id']} U2"})
    assert upscale["code"] in (1, 22), upscale
    done = wait_done(api, tenant, upscale["result"])
    assert done["status"] == "SUCCESS" and done["action"] == "UPSCALE" and done["buttons"] == []
    assert done["description"] == f"/up {task['id']} U2"
    image = download(api, done["imageUrl"]).convert("RGB")
    assert image.size == (512, 512)
    cell = grid.convert("RGB").crop((256, 0, 512, 256))
    # The cell enlarged with Lanczos (not byte for byte: every delivered image carries the
    # invisible provenance watermark, images/worker.py _encode_and_store).
    assert mean_diff(image, cell.resize((512, 512), Image.Resampling.LANCZOS)) < 1.0
    assert mean_diff(image.resize((256, 256), Image.Resampling.LANCZOS), cell) < 1.0
    assert mean_diff(image, grid.convert("RGB").crop((0, 0, 256, 256)).resize((512, 512))) > 1.0  # not cell 1
    assert before - balance(tenant) == 16

    # V1 by its button (/mj/submit/action): a new grid of variations of cell 1.
    v1 = next(b["customId"] for b in task["buttons"] if b["label"] == "V1")
    variation = submit(api, tenant, "action", {"taskId": task["id"], "customId": v1, "chooseSameChannel": True})
    assert variation["code"] in (1, 22), variation
    varied = wait_done(api, tenant, variation["result"])
    assert varied["status"] == "SUCCESS" and varied["action"] == "VARIATION"
    assert download(api, varied["imageUrl"]).size == (512, 512)
    assert len(varied["buttons"]) == 9
    vjob = Job.objects.get(midjourney_task__pk=varied["id"])
    assert vjob.kind == "edit" and vjob.n == 4 and vjob.params["extra"]["strength"] == 0.6

    # REROLL (/mj/submit/change): the prompt again, a new seed.
    reroll = submit(api, tenant, "change", {"taskId": task["id"], "action": "REROLL"})
    rerolled = wait_done(api, tenant, reroll["result"])
    assert rerolled["status"] == "SUCCESS" and rerolled["action"] == "REROLL"
    assert rerolled["description"] == f"/up {task['id']} R"
    assert Job.objects.get(midjourney_task__pk=rerolled["id"]).seed != 42

    found = api.post(
        "/mj/task/list-by-condition",
        {"ids": [task["id"], done["id"], "1234567890123456", varied["id"]]},
        format="json",
        **tenant.auth,
    )
    assert found.status_code == 200
    assert [t["id"] for t in found.json()] == [task["id"], done["id"], varied["id"]]
    assert api.post("/mj/task/list-by-condition", {}, format="json", **tenant.auth).json() == []

    out = StringIO()
    call_command("billing_reconcile", stdout=out)
    assert out.getvalue().startswith("OK:")
    assert UsageRecord.objects.filter(tenant=tenant.tenant, outcome="succeeded").count() == 4


class Receiver:
    """A loopback notifyHook target recording every JSON body it is sent."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._cond:
                    receiver.bodies.append(json.loads(body))
                    receiver.headers.append(dict(self.headers.items()))
                    receiver._cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/mj-hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, predicate, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [b for b in self.bodies if predicate(b)]
                if found:
                    return found[-1]
                left = deadline - time.monotonic()
                assert left > 0, f"no matching notification in {self.bodies}"
                self._cond.wait(left)


def test_notify_hook_receives_the_task_on_each_change(api, worker, tenant, settings):
    settings.WEBHOOK_ALLOW_PRIVATE_TARGETS = True
    receiver = Receiver()
    try:
        answer = imagine(api, tenant, "a lighthouse at dusk", notifyHook=receiver.url, state="order-7")
        final = receiver.wait_for(lambda b: b.get("status") == "SUCCESS")
        assert final["id"] == answer["result"] and final["action"] == "IMAGINE" and final["progress"] == "100%"
        assert final["state"] == "order-7" and final["imageUrl"] and len(final["buttons"]) == 9
        statuses = [b["status"] for b in receiver.bodies if b["id"] == answer["result"]]
        assert "SUCCESS" in statuses and len(statuses) >= 2  # SUBMITTED / IN_PROGRESS before it
        assert all(h.get("webhook-signature", "").startswith("v1,") for h in receiver.headers)
        assert fetch(api, tenant, answer["result"])["imageUrl"]
    finally:
        receiver.server.shutdown()


def test_refusals_come_in_the_proxy_envelope(api, registry, make_tenant):
    broke = make_tenant(credits=0)
    response = post_json(api, "/mj/submit/imagine", {"prompt": "a cat"}, broke)
    assert response.status_code == 402
    body = response.json()
    assert set(body) == {"code", "description", "result", "properties"}
    assert body["code"] == 4 and body["result"] is None and "credits" in body["description"].lower()
    assert body["properties"]["code"] == "insufficient_quota" and body["properties"]["available"] == 0
    assert not Job.objects.exists() and not MidjourneyTask.objects.exists()

    rich = make_tenant()
    empty = post_json(api, "/mj/submit/imagine", {"prompt": "  "}, rich)
    assert empty.status_code == 200 and empty.json()["code"] == 4 and empty.json()["description"] == "prompt不能为空"
    banned = post_json(api, "/mj/submit/imagine", {"prompt": "nsfw pornography"}, rich)
    assert banned.status_code == 200 and banned.json()["code"] == 24
    assert banned.json()["properties"]["promptEn"] == "nsfw pornography"
    bad_ar = post_json(api, "/mj/submit/imagine", {"prompt": "x --ar wide"}, rich)
    assert bad_ar.json()["code"] == 4
    unknown = post_json(
        api, "/mj/submit/change", {"taskId": "17000000000000001", "action": "UPSCALE", "index": 1}, rich
    )
    assert unknown.status_code == 200 and unknown.json()["code"] == 3
    assert post_json(api, "/mj/submit/simple-change", {"content": "123 U9"}, rich).json()["code"] == 4
    assert (
        post_json(api, "/mj/submit/action", {"taskId": "1", "customId": "MJ::Outpaint::50::1::x"}, rich).json()["code"]
        == 4
    )
    missing = api.get("/mj/task/17000000000000001/fetch", **rich.auth)
    assert missing.status_code == 404 and missing.json()["code"] == 3
    assert api.get("/mj/task/1/fetch").status_code == 401
    assert api.get("/mj/task/1/fetch", HTTP_MJ_API_SECRET="sk-wrong.key").status_code == 401


def test_mj_api_secret_header_carries_the_key_and_a_cancel_refunds(api, parked, tenant, make_tenant):
    before = balance(tenant)
    response = api.post(
        "/mj/submit/imagine", {"prompt": "a quiet harbour"}, format="json", HTTP_MJ_API_SECRET=tenant.raw
    )
    assert response.status_code == 200 and response.json()["code"] in (1, 22), response.content
    task_id = response.json()["result"]
    task = api.get(f"/mj/task/{task_id}/fetch", HTTP_MJ_API_SECRET=tenant.raw).json()
    assert (task["status"], task["progress"], task["imageUrl"], task["buttons"]) == ("SUBMITTED", "0%", None, [])
    assert balance(tenant) == before  # held, not spent
    job = Job.objects.get(midjourney_task__pk=task_id)
    assert CreditAccount.objects.get(tenant=tenant.tenant).held == job.quote == 4 * 16  # 4 x dall-e-2 256x256
    job_cancel(job=job)
    task = fetch(api, tenant, task_id)
    assert task["status"] == "FAILURE" and task["progress"] == "" and task["failReason"]
    assert balance(tenant) == before and CreditAccount.objects.get(tenant=tenant.tenant).held == 0
    # Another tenant's id is not found, to fetch or to change.
    other = make_tenant()
    assert api.get(f"/mj/task/{task_id}/fetch", **other.auth).status_code == 404
    change = post_json(api, "/mj/submit/simple-change", {"content": f"{task_id} U1"}, other)
    assert change.json()["code"] == 3
    # A failed task cannot be changed.
    change = post_json(api, "/mj/submit/simple-change", {"content": f"{task_id} U1"}, tenant)
    assert change.json()["code"] == 4 and change.json()["description"] == "关联任务状态错误"


def test_prompt_parsing_and_sizes(registry):
    parsed = mj.mj_prompt_parse("https://example.com/a.png a castle --ar 16:9 --seed 7 --no fog, rain --stylize 250")
    assert (parsed.text, parsed.aspect, parsed.seed, parsed.no) == ("a castle", (16, 9), 7, "fog, rain")
    assert parsed.urls == ["https://example.com/a.png"] and parsed.ignored == ["--stylize 250"]
    gpt = ImageModel.objects.get(public_id="gpt-image-1")
    assert mj.mj_size(model=gpt, aspect=(16, 9)) == "1536x1024"
    assert mj.mj_size(model=gpt, aspect=(2, 3)) == "1024x1536"
    assert mj.mj_size(model=gpt, aspect=None) == "1024x1024"
    assert mj.mj_custom_id_parse("MJ::JOB::upsample::3::3dbbd469-36af-4a0f-8f02-df6c579e7011") == (
        "UPSCALE",
        3,
        "3dbbd469-36af-4a0f-8f02-df6c579e7011",
    )


def png_data_url(color: tuple[int, int, int], size=(300, 200)) -> str:
    import base64

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_blend_makes_a_grid_of_the_mixed_images(api, worker, tenant):
    body = {"base64Array": [png_data_url((255, 0, 0)), png_data_url((0, 0, 255))], "dimensions": "LANDSCAPE"}
    answer = submit(api, tenant, "blend", body)
    assert answer["code"] in (1, 22), answer
    task = wait_done(api, tenant, answer["result"])
    assert task["status"] == "SUCCESS" and task["action"] == "BLEND" and len(task["buttons"]) == 9
    assert task["description"] == f"/blend {task['id']} 2"
    assert download(api, task["imageUrl"]).size == (512, 512)  # dall-e-2 cells are square: 2x 256
    job = Job.objects.get(midjourney_task__pk=task["id"])
    assert job.kind == "edit" and job.n == 4
    # Its grid takes U and V; a reroll of images is refused (they are not kept).
    reroll = submit(api, tenant, "simple-change", {"content": f"{task['id']} R"})
    assert reroll["code"] == 4
    assert submit(api, tenant, "blend", {"base64Array": [png_data_url((1, 2, 3))]})["code"] == 4
    assert submit(api, tenant, "blend", {**body, "dimensions": "WIDE"})["code"] == 4
    out = StringIO()
    call_command("billing_reconcile", stdout=out)
    assert out.getvalue().startswith("OK:")


def test_idempotency_key_replays_the_submission_and_describe_is_accepted(api, parked, tenant):
    first = submit(api, tenant, "imagine", {"prompt": "a paper boat"}, HTTP_IDEMPOTENCY_KEY="mj-1")
    again = post_json(api, "/mj/submit/imagine", {"prompt": "a paper boat"}, tenant, HTTP_IDEMPOTENCY_KEY="mj-1")
    assert again.json() == first and again["Idempotent-Replayed"] == "true"
    assert Job.objects.count() == 1 and MidjourneyTask.objects.count() == 1
    # Describe runs the captioner tool model (issue 26 item 1; tests/images/test_tool_models.py).
    describe = submit(api, tenant, "describe", {"base64": png_data_url((9, 9, 9))})
    assert describe["code"] in (1, 22), describe
    assert MidjourneyTask.objects.get(pk=describe["result"]).action == "DESCRIBE"
