"""First use of the backend is safe from any number of threads at once.

A worker's first job, the warm-up thread, the heartbeat (its device label) and the
token counter all reach the local backend at start-up. Python's imports hand a second
thread a *partially initialised* module while a first one is still running the
package's imports ("cannot import name 'select_device' from partially initialized
module 'images.backends.local.device'": the job failed, the caller got a 502). Only a
fresh interpreter shows it, so each run starts one; the live test starts the embedded
server with warm-up on and sends concurrent first requests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed

import pytest

from tools import ROOT

pytest.importorskip("torch")

# How many fresh interpreters (each ~10 s of CPU to import torch and diffusers); raise it
# when changing how the backend is imported: FIRST_USE_RUNS=20.
RUNS = int(os.environ.get("FIRST_USE_RUNS", "4"))
# Fresh embedded servers for the live test (each ~40 s here); FIRST_USE_SERVERS=3 or more
# when changing start-up.
SERVERS = int(os.environ.get("FIRST_USE_SERVERS", "1"))
THREADS = 8

# Each of the THREADS threads waits at a barrier, then makes one of the project's first
# uses: a job or the warm-up (get_backend), the heartbeat's device label, runworker's
# sizing. Odd threads start once another thread is inside the package's imports, the
# order of the reported failure (the warm-up thread first, the heartbeat a moment later).
SCRIPT = r"""
import json, os, sys, threading, time, traceback
sys.path.append(os.path.join(os.getcwd(), "platform"))
os.environ["DJANGO_SETTINGS_MODULE"] = "settings"
import django
django.setup()
from images import backends, middleware
from images.management.commands import runworker

THREADS = int(sys.argv[1])
barrier = threading.Barrier(THREADS)
errors = []

def first_use(i):
    barrier.wait()
    try:
        if i % 2:
            deadline = time.monotonic() + 60
            while "images.backends.local" not in sys.modules and time.monotonic() < deadline:
                time.sleep(0.0005)
        kind = i % 3
        if kind == 0:
            info = backends.get_backend().device_info()
            assert info["device"], info
        elif kind == 1:
            label = middleware._device_label()
            assert label != "unknown", "the heartbeat could not read the device"
        else:
            assert runworker.auto_threads(1) >= 2
    except BaseException:
        errors.append(traceback.format_exc(limit=4))

threads = [threading.Thread(target=first_use, args=(i,)) for i in range(THREADS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"errors": errors}))
"""


def _fresh_interpreter() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(THREADS)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_concurrent_first_use_in_fresh_interpreters_never_fails():
    failures = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for future in as_completed([pool.submit(_fresh_interpreter) for _ in range(RUNS)]):
            failures += future.result()["errors"]
    assert failures == [], f"{len(failures)} first use(s) of {RUNS * THREADS} failed:\n" + "\n".join(failures[:3])


@pytest.mark.live
def test_concurrent_first_requests_to_a_fresh_embedded_server_all_succeed(tmp_path):
    """Warm-up on (the default), the first requests sent together as soon as the server
    answers; SERVERS fresh servers."""
    import openai

    from tests.live import start_live_server

    for attempt in range(SERVERS):
        run_dir = tmp_path / f"run{attempt}"
        run_dir.mkdir()
        server = start_live_server(run_dir, {"WARM_UP_MODELS": "true"})
        try:
            client = openai.OpenAI(api_key=server.tenant(), base_url=server.url + "/v1", max_retries=0, timeout=180)

            def generate(i: int, client=client):
                try:
                    result = client.images.generate(
                        model="dall-e-2", prompt=f"a lighthouse {i}", size="256x256", response_format="b64_json"
                    )
                    return 200 if result.data and result.data[0].b64_json else "empty"
                except openai.APIStatusError as exc:
                    return f"{exc.status_code}: {exc.message}"

            with ThreadPoolExecutor(max_workers=4) as pool:
                statuses = list(pool.map(generate, range(4)))
            assert statuses == [200] * 4, f"fresh server {attempt}: {statuses}\n{server.log_text()[-3000:]}"
        finally:
            server.stop()
