"""Every image reports the seed it was made with (`seed`, our extension, on each
`data[]` item, on the task and in stream `completed` events), and sending that seed back
with n=1 makes the same image, byte for byte, whether the first request named a seed or
not."""

from __future__ import annotations

import base64

from images.models import GeneratedImage, Job
from images.validation import MAX_SEED
from tests.conftest import post_json
from tests.images.test_tasks_and_streaming import parse_sse

URL = "/v1/images/generations"
SMALL = {"model": "dall-e-2", "prompt": "a red kite", "size": "256x256", "response_format": "b64_json"}


def _generate(api, tenant, **fields) -> dict:
    response = post_json(api, URL, {**SMALL, **fields}, tenant)
    assert response.status_code == 200, response.content
    return response.json()


def test_request_without_seed_learns_each_images_seed_and_reproduces_it(api, worker, tenant):
    first = _generate(api, tenant, n=2)
    seeds = [item["seed"] for item in first["data"]]
    assert len(set(seeds)) == 2 and all(isinstance(s, int) and 0 <= s <= MAX_SEED for s in seeds)
    job = Job.objects.get(tenant=tenant.tenant)
    assert list(GeneratedImage.objects.filter(job=job).values_list("seed", flat=True)) == seeds
    task = api.get(f"/v1/images/tasks/{job.pk}", **tenant.auth).json()
    assert task["seeds"] == seeds and [item["seed"] for item in task["result"]["data"]] == seeds
    again = _generate(api, tenant, seed=seeds[1])  # the second image, alone
    assert again["data"][0]["seed"] == seeds[1]
    assert base64.b64decode(again["data"][0]["b64_json"]) == base64.b64decode(first["data"][1]["b64_json"])


def test_given_seed_is_image_i_plus_i_and_wraps_to_a_seed_that_can_be_sent_back(api, worker, tenant):
    body = _generate(api, tenant, n=2, seed=123)
    assert [item["seed"] for item in body["data"]] == [123, 124]
    top = _generate(api, tenant, n=2, seed=MAX_SEED)
    assert [item["seed"] for item in top["data"]] == [MAX_SEED, 0]  # every reported seed is a valid `seed`
    again = _generate(api, tenant, seed=0)
    assert base64.b64decode(again["data"][0]["b64_json"]) == base64.b64decode(top["data"][1]["b64_json"])


def test_queued_task_shows_the_seeds_it_will_use(api, parked, tenant):
    task = post_json(api, URL, {**SMALL, "n": 3, "seed": 7}, tenant, HTTP_PREFER="respond-async").json()
    assert task["seeds"] == [7, 8, 9] and task["result"] is None
    assert api.get(f"/v1/images/tasks/{task['id']}", **tenant.auth).json()["seeds"] == [7, 8, 9]


def test_stream_completed_events_and_openai_shaped_vendor_items_carry_the_seed(api, worker, tenant):
    body = {"model": "gpt-image-1", "prompt": "a kite", "quality": "low", "n": 2, "seed": 40, "stream": True}
    response = post_json(api, URL, body, tenant)
    events = parse_sse(b"".join(response.streaming_content))
    completed = [data for name, data in events if name == "image_generation.completed"]
    assert [data["seed"] for data in completed] == [40, 41]
    vision = post_json(api, "/v1/vision/generate", {"prompt": "a kite", "seed": 5}, tenant).json()
    assert set(vision["data"][0]) == {"url", "b64_json"}  # seed 000's item shape, exactly
    task = api.get(f"/v1/images/tasks/{vision['id'].removeprefix('img-')}", **tenant.auth).json()
    assert task["seeds"] == [5]  # its seeds are on the task
    aigne = post_json(api, "/api/images/generations", {**SMALL, "seed": 9, "n": 2}, tenant).json()
    assert [item["seed"] for item in aigne["data"]] == [9, 10]
