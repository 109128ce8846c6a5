"""`manage.py model_add <public_id> <folder> --profile gpt-image`: offer a model in one step.

Recognises the family from the folder's model_index.json (torch-free, see
images/families_catalog.py), records its capabilities on the row, fills the family's
recommended steps per quality, guidance and dtype, and copies the prices of a template
model of the same profile (only for the sizes the family can render). A folder it cannot
serve is refused with the reason. docs/models.md lists the families.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from billing.models import Price
from images.families_catalog import NO_GUIDANCE, FamilyError
from images.models import ImageModel
from images.profiles import PROFILES
from images.services.models import model_capabilities_compute, model_folder_resolve


class Command(BaseCommand):
    help = "Add (or with --update, refresh) an image model from a diffusers pipeline folder or cached hub id."

    def add_arguments(self, parser) -> None:
        parser.add_argument("public_id", help="the model id clients send, e.g. flux-schnell")
        parser.add_argument("source", help="a folder (absolute or under MODEL_DIR) or a cached hub id")
        parser.add_argument(
            "--profile", choices=sorted(PROFILES), help="the OpenAI API shape it is offered with (generators)"
        )
        parser.add_argument(
            "--kind",
            default=ImageModel.Kind.GENERATOR,
            choices=list(ImageModel.Kind.values),
            help="generator (a diffusers pipeline, the default) or a tool model (docs/models.md)",
        )
        parser.add_argument(
            "--price", type=int, help="tool models: credits per image of the tool's job kind (else --free)"
        )
        parser.add_argument("--queue", default="gpu", help="the Dramatiq queue its jobs go to (default gpu)")
        parser.add_argument(
            "--price-template",
            dest="template",
            help="copy the prices of this model (default: the first priced model of the profile)",
        )
        parser.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"])
        parser.add_argument("--free", action="store_true", help="serve without prices (0 credits)")
        parser.add_argument("--update", action="store_true", help="refresh an existing row (prices are replaced)")

    def handle(
        self,
        *args,
        public_id: str,
        source: str,
        profile: str,
        queue: str,
        template: str | None,
        dtype: str,
        free: bool,
        update: bool,
        kind: str = ImageModel.Kind.GENERATOR,
        price: int | None = None,
        **options,
    ) -> None:
        if kind != ImageModel.Kind.GENERATOR:
            self._add_tool(
                public_id=public_id,
                source=source,
                kind=kind,
                queue=queue,
                dtype=dtype,
                free=free,
                price=price,
                update=update,
            )
            return
        if not profile:
            raise CommandError("--profile is required for a generator")
        try:
            model_folder_resolve(source=source)
        except FamilyError as exc:
            raise CommandError(str(exc)) from None
        relative = Path(source).expanduser()
        if not relative.is_absolute() and relative.is_dir() and not (Path(settings.MODEL_DIR) / source).is_dir():
            # Found relative to this directory only: store the absolute path, so a worker
            # started elsewhere finds it (rows resolve relative sources under MODEL_DIR).
            source = str(relative.resolve())
        try:
            spec, capabilities = model_capabilities_compute(source=source)
        except FamilyError as exc:
            raise CommandError(f"cannot serve {source}: {exc}") from None
        existing = ImageModel.objects.filter(public_id=public_id).first()
        if existing is not None and not update:
            raise CommandError(f"model {public_id!r} already exists (pass --update to refresh it)")

        multiple = capabilities["size_multiple"]
        sizes = [s for s in PROFILES[profile].sizes if all(int(v) % multiple == 0 for v in s.split("x"))]
        if not sizes:
            raise CommandError(
                f"cannot serve {source} as {profile}: none of its sizes "
                f"({', '.join(PROFILES[profile].sizes)}) is a multiple of {multiple}"
            )
        prices = [] if free else self._template_prices(profile=profile, template=template, exclude=public_id)
        steps = dict(spec.steps)
        guidance = spec.default_guidance
        if capabilities["guidance"] == NO_GUIDANCE:  # step-distilled (FLUX.1-schnell, FLUX.2-klein)
            steps = {quality: min(value, 4) for quality, value in steps.items()}
            guidance = 0.0

        with transaction.atomic():
            model, _ = ImageModel.objects.update_or_create(
                public_id=public_id,
                defaults={
                    "profile": profile,
                    "source": source,
                    "dtype": dtype,
                    "queue": queue,
                    "steps_by_quality": steps,
                    "guidance": guidance,
                    "capabilities": capabilities,
                    "capabilities_source": source,  # (images/services/models.py)
                    "is_free": free,
                    "enabled": True,
                },
            )
            if existing is not None:
                model.prices.all().delete()
            Price.objects.bulk_create(
                [
                    Price(
                        model=model, kind=p.kind, size=p.size, quality=p.quality, credits_per_image=p.credits_per_image
                    )
                    for p in prices
                    if not p.size or p.size in sizes
                ]
            )
        skipped = sorted(set(PROFILES[profile].sizes) - set(sizes))
        self.stdout.write(
            f"{'updated' if existing else 'added'} {public_id}: {spec.title} ({capabilities['family']}), "
            f"profile {profile}, queue {queue}, guidance {capabilities['guidance']} {guidance}, steps {steps}, "
            f"edit modes {capabilities['edit_modes'] or 'none'}, negative prompts "
            f"{'yes' if capabilities['negative_prompt'] else 'no'}"
            + (f"; sizes not served: {', '.join(skipped)}" if skipped else "")
        )

    def _add_tool(
        self,
        *,
        public_id: str,
        source: str,
        kind: str,
        queue: str,
        dtype: str,
        free: bool,
        price: int | None,
        update: bool,
    ) -> None:
        """A tool model (issue 26 item 1; images/tool_models.py): its folder checked for
        what its loader reads, one price row for its job kind (`--price`) or `--free`."""
        from images.tool_models import MODEL_KIND_OF_JOB, tool_folder_check

        try:
            tool_folder_check(kind=kind, source=source)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        relative = Path(source).expanduser()
        if not relative.is_absolute() and relative.exists() and not (Path(settings.MODEL_DIR) / source).exists():
            source = str(relative.resolve())
        # A control tool model (ControlNet, depth estimator, IP-Adapter) has no job of its
        # own: it runs inside a generator's job and is priced as part of it, so no row.
        job_kind = next((job for job, model_kind in MODEL_KIND_OF_JOB.items() if model_kind == kind), None)
        if job_kind is not None and not free and (price is None or price < 0):
            raise CommandError("pass --price CREDITS (per image, an integer) or --free")
        existing = ImageModel.objects.filter(public_id=public_id).first()
        if existing is not None and not update:
            raise CommandError(f"model {public_id!r} already exists (pass --update to refresh it)")
        with transaction.atomic():
            model, _ = ImageModel.objects.update_or_create(
                public_id=public_id,
                defaults={
                    "kind": kind,
                    "profile": ImageModel.Profile.DALLE2,  # (unused by tool jobs)
                    "source": source,
                    "dtype": dtype,
                    "queue": queue,
                    "steps_by_quality": {},
                    "guidance": 0.0,
                    "capabilities": {},
                    "is_free": free,
                    "enabled": True,
                },
            )
            model.prices.all().delete()
            if not free and job_kind is not None:
                Price.objects.create(model=model, kind=job_kind, credits_per_image=price)
        if job_kind is None:
            charge = "priced inside its generator's job"
        else:
            charge = "free" if free else f"{price} credits per {job_kind}"
        self.stdout.write(
            f"{'updated' if existing else 'added'} {public_id}: {kind} from {source}, queue {queue}, {charge}"
        )

    @staticmethod
    def _template_prices(*, profile: str, template: str | None, exclude: str) -> list[Price]:
        if template:
            model = ImageModel.objects.filter(public_id=template).first()
            if model is None:
                raise CommandError(f"price template {template!r} does not exist")
            if model.profile != profile:
                raise CommandError(f"price template {template!r} is a {model.profile} model, not {profile}")
        else:
            model = (
                ImageModel.objects.filter(profile=profile, prices__isnull=False)
                .exclude(public_id=exclude)
                .order_by("created_at", "pk")
                .first()
            )
            if model is None:
                raise CommandError(f"no priced {profile} model to copy prices from: pass --price-template or --free")
        prices = list(model.prices.all())
        if not prices:
            raise CommandError(f"price template {model.public_id!r} has no prices")
        return prices
