"""The official `openai` SDK against a live server (gunicorn + the worker), as a
customer would use it: base_url pointed at us, nothing else changed."""

from __future__ import annotations

import base64
import io
import urllib.request

import openai
import pytest
from PIL import Image

from tests.live import start_live_server

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    server = start_live_server(tmp_path_factory.mktemp("live"))
    yield server
    server.stop()
    print("---- live server logs (tail) ----\n" + server.log_text()[-6000:])  # shown when a test failed


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(api_key=live.tenant(), base_url=live.url + "/v1", max_retries=0, timeout=120)


def test_dalle2_b64_json_is_a_png_of_the_requested_size(client):
    result = client.images.generate(
        model="dall-e-2", prompt="a lighthouse at dusk", size="256x256", response_format="b64_json", n=2
    )
    assert len(result.data) == 2
    for item in result.data:
        image = Image.open(io.BytesIO(base64.b64decode(item.b64_json)))
        assert image.format == "PNG" and image.size == (256, 256)
    assert result.usage is None  # DALL·E responses carry created + data only


def test_default_url_is_fetchable_without_the_key(client):
    result = client.images.generate(model="dall-e-2", prompt="a lighthouse", size="512x512")
    url = result.data[0].url
    with urllib.request.urlopen(url, timeout=30) as response:  # no Authorization header
        assert response.headers["Content-Type"] == "image/png"
        image = Image.open(io.BytesIO(response.read()))
    assert image.size == (512, 512)


def test_gpt_image_has_usage_and_passes_strict_validation(live):
    strict = openai.OpenAI(
        api_key=live.tenant(), base_url=live.url + "/v1", max_retries=0, _strict_response_validation=True
    )
    result = strict.images.generate(model="gpt-image-1", prompt="a red fox", quality="low")
    assert result.usage.output_tokens == 272 and result.usage.input_tokens > 0
    assert result.size == "1024x1024" and result.quality == "low" and result.output_format == "png"
    image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))
    assert image.size == (1024, 1024)


def test_wrong_key_raises_authentication_error(live):
    bad = openai.OpenAI(api_key="wrong.key", base_url=live.url + "/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.images.generate(model="dall-e-2", prompt="x")
    assert caught.value.code == "invalid_api_key"
    assert caught.value.request_id.startswith("req_")


def test_n_11_raises_bad_request(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(model="dall-e-2", prompt="x", n=11)
    assert caught.value.param == "n"


def test_unknown_model_raises_bad_request_naming_the_model(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(model="dall-e-9", prompt="x")
    assert caught.value.param == "model"


def test_models_list(client):
    ids = {m.id for m in client.models.list()}
    assert {"dall-e-2", "dall-e-3", "gpt-image-1", "imagen-3", "alphaedge-vision-3-1-2505"} <= ids


def test_insufficient_credits_raises_and_is_not_retried(live):
    poor = openai.OpenAI(api_key=live.tenant(credits=1), base_url=live.url + "/v1")
    with pytest.raises(openai.APIStatusError) as caught:
        poor.images.generate(model="dall-e-2", prompt="x", size="256x256")
    assert caught.value.status_code == 402 and caught.value.code == "insufficient_quota"


def test_keys_never_appear_in_server_logs(live, client):
    client.images.generate(model="dall-e-2", prompt="log check", size="256x256", response_format="b64_json")
    assert client.api_key not in live.log_text()
    assert client.api_key.split(".")[1] not in live.log_text()


def _png(width=256, height=256, alpha_left=False) -> bytes:
    image = Image.new(
        "RGBA" if alpha_left else "RGB", (width, height), (90, 120, 200, 255) if alpha_left else (90, 120, 200)
    )
    if alpha_left:
        image.paste((0, 0, 0, 0), (0, 0, width // 2, height))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_sdk_edit_single_image_list_and_mask(client):
    single = client.images.edit(
        model="dall-e-2",
        image=("a.png", _png(), "image/png"),
        prompt="add a moon",
        size="256x256",
        response_format="b64_json",
    )
    assert Image.open(io.BytesIO(base64.b64decode(single.data[0].b64_json))).size == (256, 256)
    several = client.images.edit(
        model="gpt-image-1",
        image=[("a.png", _png(), "image/png"), ("b.png", _png(), "image/png")],
        prompt="merge them",
        quality="low",
    )
    assert several.usage is not None and len(several.data) == 1
    masked = client.images.edit(
        model="dall-e-2",
        image=("a.png", _png(), "image/png"),
        mask=("m.png", _png(alpha_left=True), "image/png"),
        prompt="sky",
        size="256x256",
    )
    assert masked.data[0].url.startswith("http://127.0.0.1")


def test_sdk_create_variation(client):
    result = client.images.create_variation(
        image=("a.png", _png(), "image/png"), n=2, size="256x256", response_format="b64_json"
    )
    assert len(result.data) == 2


def test_sdk_stream_with_partial_images(client):
    events = list(
        client.images.generate(
            model="gpt-image-1", prompt="a lighthouse", quality="high", stream=True, partial_images=2
        )
    )
    kinds = [event.type for event in events]
    assert kinds[-1] == "image_generation.completed"
    assert 1 <= kinds.count("image_generation.partial_image") <= 2
    assert events[-1].usage.output_tokens == 4160
    image = Image.open(io.BytesIO(base64.b64decode(events[-1].b64_json)))
    assert image.size == (1024, 1024)


def test_sdk_stream_edit(client):
    events = list(
        client.images.edit(
            model="gpt-image-1",
            image=("a.png", _png(), "image/png"),
            prompt="x",
            quality="high",
            stream=True,
            partial_images=1,
        )
    )
    assert events[-1].type == "image_edit.completed"


def test_sdk_idempotency_key_charges_once(live):
    key = live.tenant(credits=1000)
    sdk = openai.OpenAI(api_key=key, base_url=live.url + "/v1", max_retries=0)
    for _ in range(2):
        sdk.images.generate(
            model="dall-e-2",
            prompt="once",
            size="256x256",
            response_format="b64_json",
            extra_headers={"Idempotency-Key": "sdk-order-1"},
        )
    import json as _json

    with urllib.request.urlopen(
        urllib.request.Request(live.url + "/v1/balance", headers={"Authorization": f"Bearer {key}"})
    ) as response:
        assert _json.load(response)["balance"] == 1000 - 16


def test_the_demo_model_draws_what_the_sdk_asks(client):
    """Issue 22's check: prompts from the demo model's vocabulary through the SDK at
    256x256 (dall-e-2's default steps), judged by pixels (tools/demo_model/judge.py); the
    same prompt and seed give the same pixels twice."""
    from tools.demo_model.judge import judge

    def draw(prompt: str, seed: int) -> Image.Image:
        result = client.images.generate(
            model="dall-e-2", prompt=prompt, size="256x256", response_format="b64_json", extra_body={"seed": seed}
        )
        return Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json))).convert("RGB")

    cases = [
        ("a green circle on a blue background", ("green", "circle", "blue")),
        ("a black square on a yellow background", ("black", "square", "yellow")),
        ("a purple triangle", ("purple", "triangle", "white")),
        ("a white square on a red background", ("white", "square", "red")),
        ("an orange circle on a black background", ("orange", "circle", "black")),
        ("a blue triangle on a green background", ("blue", "triangle", "green")),
    ]
    seen = []
    for i, (prompt, _) in enumerate(cases):
        verdict = judge(draw(prompt, 9000 + i))
        seen.append((verdict.colour, verdict.shape, verdict.background))
    right = sum(got == want for got, (_, want) in zip(seen, cases, strict=True))
    assert right >= 5, list(zip([c[0] for c in cases], seen, strict=True))
    first, again = draw(cases[0][0], 31), draw(cases[0][0], 31)
    assert first.tobytes() == again.tobytes()
