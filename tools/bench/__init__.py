"""`make bench`: how fast the platform turns requests into images, against diffusers alone.

One invocation, three sequential phases (never two at once, so they do not share the CPU):

1. direct   - the model in a plain diffusers loop (AutoPipelineForText2Image.from_pretrained,
              one call per image, PNG-encoded as images/files.py does): the ceiling.
              tools/bench/direct.py.
2. platform - a real deployment (tools/deployment.py: gunicorn `manage.py serve` plus, with
              BROKER_URL, one separate `manage.py runworker` process) on a fresh database,
              driven over HTTP by N JSON requests at concurrency C (response_format
              b64_json); then the same N at concurrency 1, where latency minus the job's own
              pipeline time is the platform's own cost per request (at C>1 it also includes
              waiting for the other jobs, since one worker runs one pipeline call at a time).
              tools/bench/load.py; the job timings are read from the deployment's database by
              tools/bench/probe.py.
3. api      - requests/second and latency of a 402 (a tenant with no credits) and of
              GET /v1/balance. tools/bench/load.py.

The deployment uses PostgreSQL + Redis when DATABASE_URL / BROKER_URL / CACHE_URL say so
(a fresh database named after DATABASE_URL's, dropped afterwards; its own broker
namespace), else SQLite and the in-process worker. tools/bench/run.py runs the phases,
tools/bench/report.py renders them: a table on stdout and JSON in --out. `manage.py bench`
only parses the arguments. See docs/benchmarks.md.

`manage.py bench --phase web` runs tools/bench/web.py instead: one web process and no
worker under waiting requests, streams, pollers and clients that leave (issue 20).
"""

from __future__ import annotations

PROMPT = "a lighthouse at dusk, oil painting"
