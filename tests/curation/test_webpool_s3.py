"""WARC files read from object storage (a local moto S3 server): same pairs as from local disk."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation.webpool import list_archives
from pipelines.webpool_beam import run_beam


@pytest.fixture
def s3_bucket(monkeypatch):
    """A moto S3 server on 127.0.0.1 (started and stopped here) with an empty bucket; yields its name."""
    boto3 = pytest.importorskip("boto3")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        boto3.client("s3").create_bucket(Bucket="crawl")
        yield "crawl"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_warc_glob_on_s3_gives_the_local_bytes(s3_bucket, tmp_path):
    import boto3

    from tests.curation.test_webpool import iana_warc_path

    local = iana_warc_path()
    boto3.client("s3").upload_file(str(local), s3_bucket, "warc/iana.warc.gz")
    files = list_archives(f"s3://{s3_bucket}/warc/*.warc.gz")
    assert files == [f"s3://{s3_bucket}/warc/iana.warc.gz"]
    remote = run_beam(files, "warc", str(tmp_path / "s3"))
    run_beam([str(local)], "warc", str(tmp_path / "local"))
    assert remote["webpool"].rows_out == 16
    part = "pairs/part-00000.parquet"
    assert pq.read_table(tmp_path / "s3" / part).equals(pq.read_table(tmp_path / "local" / part))
