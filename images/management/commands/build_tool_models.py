"""`manage.py build_tool_models`: the embedded tool models (issue 26 item 1), tiny and
random-weight (the upscalers: an ESRGAN and a StableDiffusionUpscalePipeline), built
from code under MODEL_DIR where the seeded rows point (images/tool_models.py
SEEDED_TOOLS, SEEDED_BUILDERS; images/backends/local/tool_builders.py). The
ControlNets and the IP-Adapter are derived from the installed demo model's folder (run
build_demo_model first, as platform_setup does; they are rebuilt when its UNet or VAE
configuration changes, and skipped with a notice while it is missing). Seconds on
a CPU; a folder already built is left alone, and an operator's own folder at one of
those paths is never replaced (the command says so and goes on). A web-only host (no
torch) skips them with a notice: the hosts that run tool jobs are the workers."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from images.models import ImageModel
from images.seed import DEMO_SOURCE
from images.tool_models import CONTROL_BASE_BUILT, SEEDED_BUILDERS, SEEDED_TOOLS

CONTROL_KINDS = (*CONTROL_BASE_BUILT, ImageModel.Kind.DEPTH_ESTIMATOR)


class Command(BaseCommand):
    help = (
        "Build the embedded tiny tool models (ESRGAN and diffusion upscalers, background remover, segmenter, "
        "captioner, ControlNets, depth estimator, IP-Adapter) if missing."
    )

    def handle(self, *args, **options) -> None:
        # Imported here: it imports torch, transformers and spandrel (a worker-only set).
        try:
            from images.backends.local.tool_builders import build_tool_model
        except ImportError as exc:  # a web-only host (requirements/base.txt): workers build them
            self.stderr.write(f"Skipped the tool models: building them needs requirements/worker.txt ({exc})")
            return
        base = Path(settings.MODEL_DIR) / DEMO_SOURCE  # (the control models are derived from it)
        for seed, (public_id, (kind, folder, _, _)) in enumerate(SEEDED_TOOLS.items()):
            path = Path(settings.MODEL_DIR) / folder
            derived = kind in CONTROL_BASE_BUILT
            if derived and not (base / "unet" / "config.json").is_file():
                self.stderr.write(f"Skipped {public_id}: it is derived from the demo model, not installed at {base}")
                continue
            try:
                # (the first four keep seed 0, as before; each control model its own seed)
                built = build_tool_model(
                    path,
                    kind=SEEDED_BUILDERS.get(public_id, kind),  # (sd-x4-upscaler-tiny: a diffusion upscaler)
                    seed=seed if kind in CONTROL_KINDS else 0,
                    base=base if derived else None,
                )
                if built:
                    self.stdout.write(f"Built the tool model {public_id} ({kind}) in {path}")
            except FileExistsError as exc:
                self.stderr.write(f"Skipped {public_id}: {exc}")
