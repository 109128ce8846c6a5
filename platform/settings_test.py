"""Settings for the test suite (conftest.py selects them): the production settings
unchanged, except the password hasher.

Django's default PBKDF2 hasher spends hundreds of milliseconds per password on purpose;
tests that create users or sign in pay that on every call. Django's documentation on
testing ("Speeding up the tests") suggests MD5PasswordHasher for tests: never use it
anywhere else. Processes the tests start as a deployment (tools/deployment.py, the
subprocess tests) set DJANGO_SETTINGS_MODULE=settings and so run the production hasher.
"""

from settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
