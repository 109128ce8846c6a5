"""The platform's own metrics, computed from the shared database at scrape time
(core/metrics.py says why): one scrape of the web tier covers every worker machine.

Counters here are counts of rows that are never deleted (jobs, holds, usage records),
so they only grow; Prometheus' rate() and increase() work on them as on any counter.
Histograms are cumulative over every job so far, bucketed in SQL (one query per family).
"""

from __future__ import annotations

from django.conf import settings
from django.db.models import Count, Min, Q, Sum
from django.utils import timezone
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

# Seconds.
PIPELINE_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)
# Images per call.
BATCH_BUCKETS = (1, 2, 4, 8, 16)


def _histogram(
    name: str, doc: str, rows, *, field: str, buckets, scale: float = 1.0, model: str = "model"
) -> HistogramMetricFamily:
    """rows: a queryset already filtered and grouped by `model` (.values); `field` in the
    stored unit; `scale` converts bucket bounds to it (seconds -> ms: 1000)."""
    aggregates = {
        f"le_{i}": Count("pk", filter=Q(**{f"{field}__lte": bound * scale})) for i, bound in enumerate(buckets)
    }
    family = HistogramMetricFamily(name, doc, labels=["model"])
    for row in rows.annotate(total=Count("pk"), total_sum=Sum(field), **aggregates):
        cumulative = [(str(float(b)), row[f"le_{i}"]) for i, b in enumerate(buckets)] + [("+Inf", row["total"])]
        family.add_metric([row[model] or ""], cumulative, sum_value=(row["total_sum"] or 0) / scale)
    return family


class PlatformCollector:
    """prometheus_client custom collector (registered by core.metrics)."""

    def collect(self):
        from billing.models import Hold, UsageRecord
        from core.heartbeats import worker_heartbeats
        from images.models import Job

        now = timezone.now()
        terminal = {Job.Status.SUCCEEDED, Job.Status.FAILED, Job.Status.CANCELLED}

        jobs = CounterMetricFamily("imagegen_jobs", "Finished jobs by model and outcome", labels=["model", "outcome"])
        in_flight = GaugeMetricFamily(
            "imagegen_jobs_in_flight", "Queued and running jobs by model", labels=["model", "status"]
        )
        for row in Job.objects.values("model__public_id", "status").annotate(n=Count("pk")):
            if row["status"] in terminal:
                jobs.add_metric([row["model__public_id"], row["status"]], row["n"])
            else:
                in_flight.add_metric([row["model__public_id"], row["status"]], row["n"])
        yield jobs
        yield in_flight

        failures = CounterMetricFamily(
            "imagegen_job_failures", "Failed jobs by model and error code", labels=["model", "code"]
        )
        for row in (
            Job.objects.filter(status=Job.Status.FAILED)
            .values("model__public_id", "error_code")
            .annotate(n=Count("pk"))
        ):
            failures.add_metric([row["model__public_id"], row["error_code"] or ""], row["n"])
        yield failures

        depth = GaugeMetricFamily("imagegen_queue_depth", "Jobs waiting for a worker, per queue", labels=["queue"])
        oldest = GaugeMetricFamily(
            "imagegen_queue_oldest_age_seconds",
            "Age of the oldest job waiting, per queue (0: none waiting)",
            labels=["queue"],
        )
        waiting = {
            row["model__queue"]: row
            for row in Job.objects.filter(status=Job.Status.QUEUED)
            .values("model__queue")
            .annotate(n=Count("pk"), first=Min("created_at"))
        }
        for queue in sorted(set(settings.GPU_QUEUES) | set(waiting)):
            row = waiting.get(queue)
            depth.add_metric([queue], row["n"] if row else 0)
            oldest.add_metric([queue], max(0.0, (now - row["first"]).total_seconds()) if row else 0.0)
        yield depth
        yield oldest
        yield from self._broker_messages()

        ran = Job.objects.filter(gpu_ms__isnull=False).values("model__public_id")
        yield _histogram(
            "imagegen_pipeline_seconds",
            "Pipeline time per job, by model",
            ran,
            field="gpu_ms",
            buckets=PIPELINE_BUCKETS,
            scale=1000.0,
            model="model__public_id",
        )
        yield _histogram(
            "imagegen_images_per_call",
            "Images generated per job (its batch), by model",
            ran,
            field="n",
            buckets=BATCH_BUCKETS,
            model="model__public_id",
        )
        started = UsageRecord.objects.filter(queue_wait_ms__isnull=False).values("model")
        yield _histogram(
            "imagegen_enqueue_to_start_seconds",
            "Time from enqueue to a worker starting the job",
            started,
            field="queue_wait_ms",
            buckets=WAIT_BUCKETS,
            scale=1000.0,
        )

        holds = Hold.objects.filter(status=Hold.Status.OPEN).aggregate(n=Count("pk"), credits=Sum("amount"))
        yield GaugeMetricFamily("imagegen_holds_open", "Credit holds not yet settled", value=holds["n"] or 0)
        yield GaugeMetricFamily("imagegen_credits_held", "Credits reserved by open holds", value=holds["credits"] or 0)
        captured = CounterMetricFamily(
            "imagegen_credits_captured", "Credits charged for jobs, by model", labels=["model"]
        )
        for row in (
            Hold.objects.filter(captured__gt=0).values("job__model__public_id").annotate(credits=Sum("captured"))
        ):
            captured.add_metric([row["job__model__public_id"]], row["credits"] or 0)
        yield captured
        blocks = CounterMetricFamily(
            "imagegen_moderation_blocks", "Requests refused by moderation, by model", labels=["model"]
        )
        for row in (
            UsageRecord.objects.filter(outcome=UsageRecord.Outcome.BLOCKED).values("model").annotate(n=Count("pk"))
        ):
            blocks.add_metric([row["model"]], row["n"])
        yield blocks

        labels = ["worker", "host", "device"]
        up = GaugeMetricFamily(
            "imagegen_worker_up", "1 while a worker's heartbeat is recent, 0 once quiet", labels=labels
        )
        silent = GaugeMetricFamily(
            "imagegen_worker_heartbeat_age_seconds", "Seconds since a worker's last heartbeat", labels=labels
        )
        memory = GaugeMetricFamily("imagegen_worker_memory_bytes", "Resident memory of a worker process", labels=labels)
        device_memory = GaugeMetricFamily(
            "imagegen_worker_device_memory_bytes", "Accelerator memory reserved by a worker process", labels=labels
        )
        running = GaugeMetricFamily("imagegen_worker_jobs_running", "Messages a worker is processing", labels=labels)
        done = CounterMetricFamily(
            "imagegen_worker_messages", "Messages a worker process finished since it started", labels=labels
        )
        for beat in worker_heartbeats(now=now):
            key = [beat["worker_id"], beat["host"], beat["device"]]
            up.add_metric(key, 0 if beat["quiet"] else 1)
            silent.add_metric(key, beat["silent_seconds"])
            memory.add_metric(key, beat["memory_bytes"])
            device_memory.add_metric(key, beat["device_memory_bytes"])
            running.add_metric(key, beat["jobs_running"])
            done.add_metric(key, beat["jobs_done"])
        yield from (up, silent, memory, device_memory, running, done)

    @staticmethod
    def _broker_messages():
        """Messages in the broker per queue (Redis: waiting plus unacknowledged), when
        the broker is Redis; the jobs above are the broker-independent view."""
        url = settings.BROKER_URL
        if not url.startswith(("redis", "unix")):
            return
        from core.redis import redis_client

        family = GaugeMetricFamily(
            "imagegen_broker_messages", "Messages held by the broker per queue", labels=["queue"]
        )
        try:
            client = redis_client(url, socket_timeout=2, socket_connect_timeout=2)
            pipe = client.pipeline(transaction=False)
            queues = sorted({*settings.GPU_QUEUES, "default"})
            for queue in queues:
                pipe.hlen(f"{settings.BROKER_NAMESPACE}:{queue}.msgs")
            for queue, n in zip(queues, pipe.execute(), strict=True):
                family.add_metric([queue], n)
        except Exception:  # the broker being away shows in /readyz; the rest still scrapes
            return
        yield family
