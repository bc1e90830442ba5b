"""Shard bytes depend only on the final samples: the same slice of real sample images, once from a
clean loopback server and once from one that answers a deterministic-random fifth of the first
requests with 503 (fetched again by the retry pass, so those images land in other download shards
and check parts), gives byte-identical shards — and another download shard size does too."""

from __future__ import annotations

import socket

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import xxhash

from curation.images.check import ImageCheckConfig
from curation.images.download import DownloadConfig
from curation.images.politeness import PolitenessConfig
from curation.images.recipe import ImageStagesConfig, run_image_stages
from curation.images.shards import ShardConfig
from curation.images.urlguard import UrlGuardConfig
from curation.stage import in_process, pipelined_in_process
from pipelines.serve_images import ImageRequestHandler, serving
from storage.layout import RunLayout


class FlakyHandler(ImageRequestHandler):
    """The first request of a fifth of the image paths (by a hash of the path) gets a 503."""

    seen: set[str] = set()

    def do_GET(self):
        failing = self.path != "/robots.txt" and xxhash.xxh64_intdigest(self.path.encode()) % 5 == 0
        if failing and self.path not in FlakyHandler.seen:
            FlakyHandler.seen.add(self.path)
            self.send_error(503, "try again")
            return
        super().do_GET()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(root, images_dir, selection: pa.Table, port: int, handler, download_shard_size: int) -> RunLayout:
    layout = RunLayout(str(root))
    for p in range(2):
        layout.write_parquet(selection.slice(p * 30, 30), layout.part(p))
    config = ImageStagesConfig(
        guard=UrlGuardConfig(allow_networks=("127.0.0.1",)),
        download=DownloadConfig(processes=1, threads=8, shard_size=download_shard_size, distributor="multiprocessing",
                                # the server fails a fifth of first requests on purpose: no breaker
                                politeness=PolitenessConfig(unlimited_hosts=("127.0.0.1",), breaker_failures=0)),
        check=ImageCheckConfig(image_size=64), shards=ShardConfig(shard_size=16, holdout_fraction=0.2), report=False)
    with serving(images_dir, port=port, handler=handler) as base:
        assert base.endswith(f":{port}")
        run_image_stages(layout, config, pipelined_in_process, map_tasks=in_process)
    return layout


@pytest.mark.slow  # ~26 s: three img2dataset runs
def test_retried_downloads_and_download_shard_size_leave_shard_bytes_unchanged(tmp_path, sample):
    port = free_port()
    pool = pq.read_table(sample["sample_pool"]).slice(0, 60)
    selection = pa.table({
        "uid": pool.column("uid"), "url": pc.replace_substring(pool.column("url"), "127.0.0.1:18765", f"127.0.0.1:{port}"),
        "text": pool.column("text"), "query_ids": pa.array([[i % 7] for i in range(60)], pa.list_(pa.int32())),
        "source": pool.column("source")})
    FlakyHandler.seen = set()
    clean = run(tmp_path / "clean", sample["sample_images_dir"], selection, port, ImageRequestHandler, 20)
    flaky = run(tmp_path / "flaky", sample["sample_images_dir"], selection, port, FlakyHandler, 20)
    other = run(tmp_path / "other", sample["sample_images_dir"], selection, port, ImageRequestHandler, 7)

    retry_files = [f for p in range(2) for f in flaky.list(flaky.download_pass(p, "retry"), ".parquet")]
    retried = flaky.read_parquets(retry_files, ["uid", "status"])
    assert len(FlakyHandler.seen) >= 6 and retried.num_rows == len(FlakyHandler.seen)  # the 503s were retried
    assert flaky.read_json(flaky.stats("download"))["out"] == clean.read_json(clean.stats("download"))["out"] > 40
    for split in ("shards", "heldout"):
        names = [u.rsplit("/", 1)[-1] for u in clean.list(clean.split_dir(split))]
        assert any(n.endswith(".tar") for n in names)
        for layout in (flaky, other):
            assert [u.rsplit("/", 1)[-1] for u in layout.list(layout.split_dir(split))] == names
            for name in names:
                assert layout.read_bytes(f"{layout.split_dir(split)}/{name}") == clean.read_bytes(
                    f"{clean.split_dir(split)}/{name}"), (split, name)
