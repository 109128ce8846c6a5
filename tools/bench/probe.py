"""What the benchmark reads and sets inside a deployment, run in that deployment's
environment (its own DATABASE_URL) as `python -m tools.bench.probe ACTION ...`: each
action prints one JSON line. Typed functions, one entry point; no Python kept as strings.

    python -m tools.bench.probe model dall-e-2 [--quality standard --steps 4 --source DIR]
    python -m tools.bench.probe jobs "bench "
    python -m tools.bench.probe tenants "webbench-"
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from tools import ROOT


def model_configure(
    *, public_id: str, quality: str, steps: int | None = None, source: str | None = None
) -> dict[str, Any]:
    """The model row's pipeline source (as the worker resolves it), steps per quality and
    guidance; with `steps`, first make `quality` run that many steps; with `source`, first
    serve that folder under the same public id."""
    from images.models import ImageModel
    from images.worker import pipeline_source

    model = ImageModel.objects.get(public_id=public_id)
    if steps is not None:
        model.steps_by_quality = {**model.steps_by_quality, quality: steps}
        model.save(update_fields=["steps_by_quality"])
    if source is not None:
        model.source = source
        model.save(update_fields=["source"])
    return {
        "source": pipeline_source(model).source,
        "steps_by_quality": model.steps_by_quality,
        "guidance": model.guidance,
    }


def job_timings(*, prompt_prefix: str) -> dict[str, dict[str, Any]]:
    """prompt -> the job's and its usage record's timings (epoch seconds, milliseconds)."""
    from images.models import Job

    rows = {}
    for job in Job.objects.filter(prompt__startswith=prompt_prefix).select_related("usage"):
        usage = getattr(job, "usage", None)
        rows[job.prompt] = {
            "gpu_ms": job.gpu_ms,
            "created": job.created_at.timestamp(),
            "started": job.started_at.timestamp() if job.started_at else None,
            "finished": job.finished_at.timestamp() if job.finished_at else None,
            "queue_wait_ms": usage.queue_wait_ms if usage else None,
            "latency_ms": usage.latency_ms if usage else None,
        }
    return rows


def tenant_money(*, name_prefix: str) -> dict[str, dict[str, Any]]:
    """tenant name -> its credits (balance and held, in credits), its jobs and holds
    counted by status, the credits its holds captured and its usage records charged:
    what the web phase reads to tell whether abandoned requests were charged."""
    from django.db.models import Count, Sum

    from accounts.models import Tenant
    from billing.models import CreditAccount, Hold, UsageRecord
    from images.models import Job

    out = {}
    for tenant in Tenant.objects.filter(name__startswith=name_prefix):
        account = CreditAccount.objects.filter(tenant=tenant).first()
        holds = Hold.objects.filter(tenant=tenant)
        out[tenant.name] = {
            "balance": account.balance if account else 0,
            "held": account.held if account else 0,
            "jobs": dict(Job.objects.filter(tenant=tenant).order_by().values_list("status").annotate(n=Count("id"))),
            "holds": dict(holds.order_by().values_list("status").annotate(n=Count("id"))),
            "captured": holds.aggregate(total=Sum("captured"))["total"] or 0,
            "usage_charged": UsageRecord.objects.filter(tenant=tenant).aggregate(total=Sum("credits_charged"))["total"]
            or 0,
        }
    return out


def _django_setup() -> None:
    """As manage.py does: platform/ appended to the path (never inserted), then the settings."""
    platform_dir = str(ROOT / "platform")
    if platform_dir not in sys.path:
        sys.path.append(platform_dir)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
    import django

    django.setup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.probe", description=__doc__.splitlines()[0])
    actions = parser.add_subparsers(dest="action", required=True)
    model = actions.add_parser("model", help="read (and optionally set) a model row")
    model.add_argument("public_id")
    model.add_argument("--quality", default="standard")
    model.add_argument("--steps", type=int, default=None)
    model.add_argument("--source", default=None)
    jobs = actions.add_parser("jobs", help="the timings of the jobs whose prompt starts with PREFIX")
    jobs.add_argument("prefix")
    tenants = actions.add_parser("tenants", help="the credits, jobs and holds of the tenants named PREFIX...")
    tenants.add_argument("prefix")
    args = parser.parse_args(argv)
    _django_setup()
    if args.action == "model":
        from images.models import ImageModel

        try:
            out: Any = model_configure(
                public_id=args.public_id, quality=args.quality, steps=args.steps, source=args.source
            )
        except ImageModel.DoesNotExist:
            parser.exit(1, f"no model {args.public_id!r} in the deployment's registry\n")
    elif args.action == "tenants":
        out = tenant_money(name_prefix=args.prefix)
    else:
        out = job_timings(prompt_prefix=args.prefix)
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
