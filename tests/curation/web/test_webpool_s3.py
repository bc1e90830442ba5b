"""WARC files read from object storage (the loopback moto S3 server of tests/conftest.py), the
pool written there too: same pairs as from and to local disk."""

from __future__ import annotations

import fsspec
import pyarrow.parquet as pq

from curation.web.webpool import list_archives
from pipelines.webpool_beam import run_beam


def test_warc_glob_on_s3_gives_the_local_bytes(s3_bucket, tmp_path):
    from tests.curation.web.test_webpool import iana_warc_path

    local = iana_warc_path()
    fs, _ = fsspec.core.url_to_fs(s3_bucket)
    fs.put_file(str(local), f"{s3_bucket}/warc/iana.warc.gz")
    files = list_archives(f"{s3_bucket}/warc/*.warc.gz")
    assert files == [f"{s3_bucket}/warc/iana.warc.gz"]
    remote = run_beam(files, "warc", f"{s3_bucket}/pool")
    run_beam([str(local)], "warc", str(tmp_path / "local"))
    assert remote["webpool"].rows_out == 16
    part = "pairs/part-00000.parquet"
    with fs.open(f"{s3_bucket}/pool/{part}", "rb") as f:
        assert pq.read_table(f).equals(pq.read_table(tmp_path / "local" / part))
