"""`manage.py images_purge`: delete images, edit inputs and old rows past RETENTION_DAYS
(images/services/retention.py). The workers run the same sweep every
RETENTION_SWEEP_SECONDS; this command is for cron, a one-off, or a dry run."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from images.services.retention import retention_sweep


class Command(BaseCommand):
    help = "Delete generated images and edit inputs older than RETENTION_DAYS, and prune tables that only grow."

    def add_arguments(self, parser):
        parser.add_argument("--days", type=int, default=None, help="override RETENTION_DAYS for this run")
        parser.add_argument("--dry-run", action="store_true", help="count what would be deleted; delete nothing")

    def handle(self, *args, days: int | None, dry_run: bool, **options):
        if days is not None and days < 1:
            raise CommandError("--days must be at least 1")
        result = retention_sweep(days=days, dry_run=dry_run)
        if result.cutoff is None:
            self.stdout.write("RETENTION_DAYS is 0: images are kept forever; nothing deleted.")
            return
        verb = "would delete" if dry_run else "deleted"
        self.stdout.write(f"{verb} (finished before {result.cutoff:%Y-%m-%d %H:%M} UTC): {result.summary()}")
