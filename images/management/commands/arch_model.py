"""`manage.py arch_model sd15|sdxl`: FLOPs of one denoising step, or a random-weight
build of the architecture for GPU benchmarks (tools/arch_models.py, docs/benchmarks.md).
Arguments only: the work is in tools.arch_models."""

from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Count the FLOPs of a denoising step of SD 1.5 / SDXL, or build one with random weights."

    def add_arguments(self, parser):
        parser.add_argument("architecture", choices=["sd15", "sdxl"])
        parser.add_argument(
            "--flops",
            action="append",
            default=[],
            metavar="WxH",
            help="print the FLOPs of one step at this size (repeatable; with guidance)",
        )
        parser.add_argument("--build", metavar="DIR", help="save the architecture with random weights here")
        parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])

    def handle(self, *args, architecture: str, flops: list[str], build: str | None, dtype: str, **options):
        from tools import arch_models  # imports torch: worker side only

        if not flops and not build:
            raise CommandError("say --flops WxH and/or --build DIR")
        for size in flops:
            try:
                width, height = (int(v) for v in size.lower().split("x"))
                self.stdout.write(json.dumps(arch_models.step_flops(architecture, width=width, height=height)))
            except ValueError as exc:
                raise CommandError(f"--flops {size}: {exc}") from None
        if build:
            path = Path(build)
            if path.exists() and any(path.iterdir()):
                raise CommandError(f"{path} exists and is not empty")
            arch_models.build_arch_model(architecture, path, dtype=dtype)
            self.stdout.write(f"Built {architecture} with random weights ({dtype}) in {path}")
