"""The driver killed (SIGKILL, with its worker processes) while the per-part pipeline runs: the
rerun finishes only what was unfinished and writes shards byte-identical to an uninterrupted
run, with the same ledger."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipelines.serve_images import ImageRequestHandler, serving
from storage.layout import RunLayout

SCRIPT = Path(__file__).with_name("killed_driver_run.py")
ROWS = 240


class SlowHandler(ImageRequestHandler):
    """Sample images, 20 ms per request: the pipeline lasts long enough to be killed mid-way."""

    def do_GET(self):  # noqa: N802 - the base class's name
        time.sleep(0.02)
        http.server.SimpleHTTPRequestHandler.do_GET(self)


def _selection(curation: Path, sample: dict, base: str) -> None:
    pool = pq.read_table(sample["sample_pool"]).slice(0, ROWS)
    urls = pc.replace_substring(pool.column("url"), "http://127.0.0.1:18765", base)
    table = pa.table({"uid": pool.column("uid"), "url": urls, "text": pool.column("text"),
                      "query_ids": pa.array([[i % 11] for i in range(ROWS)], pa.list_(pa.int32()))})
    layout = RunLayout.of_curation(str(curation))
    for p in range(3):
        layout.write_parquet(table.slice(p * (ROWS // 3), ROWS // 3), layout.part(p))


def _driver(curation: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPT), str(curation)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _finish(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "DONE" in out, out[-4000:]


def _files(curation: Path, split: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((curation / split).iterdir()) if p.suffix in (".tar", ".parquet")}


@pytest.mark.slow  # ~30 s: three driver runs over 240 real images
def test_driver_killed_mid_pipeline_rerun_gives_the_same_bytes(tmp_path, sample):
    clean, killed = tmp_path / "clean" / "curation", tmp_path / "killed" / "curation"
    with serving(sample["sample_images_dir"], port=0, handler=SlowHandler) as base:
        for curation in (clean, killed):
            _selection(curation, sample, base)
        _finish(_driver(clean))

        proc = _driver(killed)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            done = list((killed / "checked").glob("*.parquet")) if (killed / "checked").exists() else []
            if len(done) >= 4:  # some download shards checked, most not: the pipeline is mid-way
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the driver finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its pool's worker processes
        proc.wait()
        checked_before = len(list((killed / "checked").glob("*.parquet")))
        assert 4 <= checked_before < ROWS // 8 and not (killed / "shards").exists()
        _finish(_driver(killed))

    for split in ("shards", "heldout"):
        reference = _files(clean, split)
        assert any(name.endswith(".tar") for name in reference)
        assert _files(killed, split) == reference, split
    layout_a, layout_b = RunLayout.of_curation(str(clean)), RunLayout.of_curation(str(killed))
    for stage in ("urlguard", "download", "imagecheck", "imagededup", "shards"):
        a, b = layout_a.read_json(layout_a.stats(stage)), layout_b.read_json(layout_b.stats(stage))
        assert {k: a[k] for k in ("in", "out", "rejected")} == {k: b[k] for k in ("in", "out", "rejected")}, stage
    assert layout_b.read_json(layout_b.stats("urlguard"))["in"] == ROWS // 3 * 3
