"""A real S3 server on loopback for the tests: moto's server mode in a process of its
own (`python -m moto.server`), spoken to through boto3 and django-storages exactly as a
deployment speaks to AWS S3 or MinIO. Stopping it is the store going away; starting it
again on the same port is the store coming back (empty: moto keeps nothing on disk)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ACCESS_KEY = "testing-access-key"
SECRET_KEY = "testing-secret-key"
REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MotoS3:
    def __init__(self, log_dir: Path, bucket: str = "images") -> None:
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.bucket = bucket
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None

    def start(self, *, create_bucket: bool = True) -> MotoS3:
        log = (self.log_dir / f"moto-{self.port}.log").open("ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start (see {log.name})") from None
                time.sleep(0.1)
        if create_bucket:
            self.client().create_bucket(Bucket=self.bucket)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def client(self):
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def clear(self) -> None:
        """Delete every object in the bucket."""
        client = self.client()
        for key in self.keys():
            client.delete_object(Bucket=self.bucket, Key=key)

    def env(self) -> dict[str, str]:
        """The environment variables that point a deployment at this store."""
        return {
            "AWS_STORAGE_BUCKET_NAME": self.bucket,
            "AWS_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_S3_REGION_NAME": REGION,
        }


def use_s3(settings, store: MotoS3) -> None:
    """Point this test process's default storage at `store` (pytest-django's `settings`):
    the same settings platform/settings.py derives from the environment."""
    from botocore.config import Config

    settings.AWS_STORAGE_BUCKET_NAME = store.bucket
    settings.AWS_S3_ENDPOINT_URL = store.endpoint
    settings.AWS_ACCESS_KEY_ID = ACCESS_KEY
    settings.AWS_SECRET_ACCESS_KEY = SECRET_KEY
    settings.AWS_S3_REGION_NAME = REGION
    settings.AWS_S3_SIGNATURE_VERSION = "s3v4"
    settings.AWS_DEFAULT_ACL = None
    settings.AWS_S3_FILE_OVERWRITE = True
    settings.AWS_S3_CLIENT_CONFIG = Config(
        signature_version="s3v4", connect_timeout=1, read_timeout=5, retries={"max_attempts": 2, "mode": "standard"}
    )
    # Last: changing STORAGES makes Django build default_storage again, with the above.
    settings.STORAGES = {**settings.STORAGES, "default": {"BACKEND": "storages.backends.s3.S3Storage"}}
