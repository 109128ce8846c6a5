import platform
import sys

import pytest


def test_stdlib_platform_is_not_shadowed():
    assert hasattr(platform, "python_version")
    platform_dirs = [p for p in sys.path if p.endswith("/platform")]
    assert platform_dirs and sys.path.index(platform_dirs[0]) > sys.path.index(
        next(p for p in sys.path if "site-packages" in p)
    )


@pytest.mark.django_db
def test_database_is_reachable():
    from accounts.models import Tenant

    assert Tenant.objects.count() == 0
