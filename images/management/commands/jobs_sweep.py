from django.core.management.base import BaseCommand

from images.services.jobs import jobs_sweep


class Command(BaseCommand):
    help = "Fail unfinished jobs past their deadline and release their holds (workers also do this every 30 s)."

    def handle(self, *args, **options):
        self.stdout.write(f"Released {jobs_sweep()} job(s) past their deadline.")
