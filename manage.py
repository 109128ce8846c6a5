#!/usr/bin/env python
"""Django's command-line utility for this project."""

import os
import sys
from pathlib import Path

# platform/ is deliberately not a package (it would shadow the stdlib module
# `platform`, which uuid and so Django import). Its folder is *appended* to the
# path so its modules (settings, urls, ...) are importable by their own names.
sys.path.append(str(Path(__file__).resolve().parent / "platform"))


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
