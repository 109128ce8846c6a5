"""`manage.py lora_add NAME PATH --base MODEL [--credits N] [--tenants T1,T2] [--trigger WORDS]`:
offer a LoRA adapter over a base model (issue 23; docs/models.md, "LoRA adapters").

PATH is a `.safetensors` file or a folder holding one (absolute, or under LORA_DIR), in
diffusers' or kohya's format as diffusers' `load_lora_weights` reads them. `--base`
names the model it was trained for (a public model id), or `--family` a whole family.
Without `--tenants` every tenant may use it; with it, only those tenants (by name).
Running it again with the same NAME replaces the adapter's settings.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from accounts.models import Tenant
from images.models import ImageModel
from images.services.loras import LoraPathError, lora_create


class Command(BaseCommand):
    help = "Add (or replace) a LoRA adapter over a base model."

    def add_arguments(self, parser) -> None:
        parser.add_argument("name", help="the name requests use in `loras`, e.g. watercolor-v2")
        parser.add_argument("path", help="a .safetensors file or a folder with one (absolute or under LORA_DIR)")
        parser.add_argument("--base", help="the public id of the model it was trained for")
        parser.add_argument("--family", default="", help="instead of --base: every model of this family")
        parser.add_argument("--credits", type=int, default=0, help="surcharge in credits per image (default 0)")
        parser.add_argument("--tenants", default="", help="comma-separated tenant names (default: every tenant)")
        parser.add_argument("--trigger", default="", help="trigger words, shown in the listing")

    def handle(self, *args, **options) -> None:
        base = None
        if options["base"]:
            base = ImageModel.objects.filter(public_id=options["base"]).first()
            if base is None:
                raise CommandError(f"unknown base model {options['base']!r} (see `manage.py model_add`)")
        elif not options["family"]:
            raise CommandError("name the base model with --base (or a family with --family)")
        names = [n.strip() for n in options["tenants"].split(",") if n.strip()]
        tenants = list(Tenant.objects.filter(name__in=names))
        missing = sorted(set(names) - {t.name for t in tenants})
        if missing:
            raise CommandError(f"unknown tenant(s): {', '.join(missing)}")
        try:
            adapter = lora_create(
                name=options["name"],
                path=options["path"],
                base_model=base,
                family=options["family"],
                surcharge_credits=options["credits"],
                tenants=tenants,
                trigger_words=options["trigger"],
            )
        except LoraPathError as exc:
            raise CommandError(f"not a LoRA adapter: {exc}") from None
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        fits = base.public_id if base else f"the {options['family']} family"
        who = "every tenant" if adapter.public else ", ".join(t.name for t in tenants)
        self.stdout.write(
            f"LoRA adapter {adapter.name} over {fits}: {adapter.surcharge_credits} credit(s) per image, "
            f"for {who} ({adapter.path})"
        )
