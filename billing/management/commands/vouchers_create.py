from datetime import UTC, datetime, time

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from billing.errors import InvalidAmount
from billing.vouchers import vouchers_create


def _expiry(value: str | None) -> datetime | None:
    """YYYY-MM-DD (valid to the end of that day, UTC) or an ISO date-time."""
    if not value:
        return None
    try:
        if len(value) == 10:
            return datetime.combine(datetime.fromisoformat(value).date(), time.max, tzinfo=UTC)
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(f"--expires must be a date like 2026-12-31, not {value!r}.") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Command(BaseCommand):
    help = "Generate voucher codes; prints one code per line (shown once: only hashes are stored)."

    def add_arguments(self, parser):
        parser.add_argument("--credits", type=int, required=True, help="credits per redemption")
        parser.add_argument("--count", type=int, required=True, help="how many codes")
        parser.add_argument("--uses", type=int, default=1, help="redemptions per code (each tenant once)")
        parser.add_argument("--expires", default=None, help="last day the codes work (YYYY-MM-DD, UTC)")
        parser.add_argument("--note", default="", help="shown in the admin and the ledger")

    def handle(self, *args, credits: int, count: int, uses: int, expires: str | None, note: str, **options):
        expires_at = _expiry(expires)
        if expires_at is not None and expires_at <= timezone.now():
            raise CommandError("--expires is in the past.")
        try:
            batch, codes = vouchers_create(
                credits=credits, count=count, max_uses=uses, expires_at=expires_at, note=note, created_by="manage.py"
            )
        except InvalidAmount as exc:
            raise CommandError(exc.message) from exc
        self.stderr.write(f"Batch {batch.pk}: {count} codes of {credits} credits, {uses} use(s) each.")
        for code in codes:
            self.stdout.write(code)
