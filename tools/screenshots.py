"""Regenerate docs/screenshots/*.png: `.venv/bin/python -m tools.screenshots`.

Runs the browser journeys (a live server each, Debian's chromium through Playwright)
with SCREENSHOTS=1, so the pictures are exactly the pages those tests check: the
operator's admin pages (tests/test_browser.py), then the customer's journey
(tests/test_journey_browser.py, whose pictures win where names meet): sign-in, sign-up,
verification, password reset, two-factor, the dashboard's home, keys, playground, jobs,
usage, billing, members, the API docs and the sign-out confirmation. Each page is saved
as docs/screenshots/<name>.png. Exits with pytest's status: non-zero when a page failed
its checks. Needs /usr/bin/chromium (apt install chromium) and the demo model (make setup).
"""

from __future__ import annotations

import os
import subprocess
import sys

from tools import ROOT

JOURNEYS = ("tests/test_browser.py", "tests/test_journey_browser.py")
SHOTS = ROOT / "docs" / "screenshots"


def main() -> int:
    """Run the journeys with SCREENSHOTS=1; print the pictures it wrote; pytest's exit status."""
    env = {**os.environ, "SCREENSHOTS": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    before = {p: p.stat().st_mtime for p in SHOTS.glob("*.png")} if SHOTS.exists() else {}
    status = subprocess.call(
        [sys.executable, "-m", "pytest", *JOURNEYS, "-q", "-p", "no:cacheprovider"], cwd=ROOT, env=env
    )
    written = sorted(p for p in SHOTS.glob("*.png") if before.get(p) != p.stat().st_mtime)
    for path in written:
        print(path.relative_to(ROOT))
    print(f"{len(written)} screenshots written to {SHOTS.relative_to(ROOT)}/", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
