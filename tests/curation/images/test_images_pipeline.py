"""End to end: selection → urlguard → img2dataset → image check → dedup → shards, on a local
server with the failure cases and a slice of the real sample images; accounting, rerun, and
the shards read back by webdataset and Ray Data."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from pipelines import wit_images
from pipelines.demo.serve_images import serving
from tests.curation.images.conftest import write_selection

STAGES = ("urlguard", "download", "imagecheck", "imagededup", "shards")


def image_args(*extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    wit_images.add_arguments(parser)
    return parser.parse_args(["--allow-network", "127.0.0.1", "--unlimited-hosts", "127.0.0.1", "--processes", "1", "--threads", "8",
                              "--download-shard-size", "12", "--shard-size", "8", "--image-size", "64",
                              *extra])


def rejects(curation_dir: Path, stage: str) -> dict:
    table = ds.dataset(str(curation_dir / "rejects" / stage), format="parquet").to_table()
    return {row["uid"]: row for row in table.to_pylist()}


def sample_slice(sample: dict, base: str, n: int = 8) -> list[str]:
    pool = pq.read_table(sample["sample_pool"]).to_pylist()
    picked = [r for r in pool if r["source"] == "emoji"][:n] + [r for r in pool if r["source"] == "openclipart"][:n]
    return [f"{base}/{r['path']}" for r in picked]


@pytest.mark.ray
@pytest.mark.slow
def test_end_to_end(tmp_path, site, sample, ray_session, monkeypatch):
    base, files = site
    with serving(sample["sample_images_dir"], port=0) as sample_base:
        paths = sorted(files) + ["missing/404.png"]
        port = base.rsplit(":", 1)[1]
        urls = [f"{base}/{p}" for p in paths] + [f"http://[::1]:{port}/img/00.png", "ftp://127.0.0.1/x.png"]
        urls += sample_slice(sample, sample_base)
        curation = tmp_path / "curation"
        selected = write_selection(curation, urls)
        summary = wit_images.run(image_args(), str(curation))
    uid = {url.split("/", 3)[-1] if url.startswith(base) else url: u
           for url, u in zip(urls, selected.column("uid").to_pylist())}
    uid_of = lambda path: uid[path]  # noqa: E731

    # 1. every failure case is a recorded reject with the right reason
    assert rejects(curation, "urlguard")[uid_of(f"http://[::1]:{port}/img/00.png")]["reason"] == "loopback_address"
    assert rejects(curation, "urlguard")[uid_of("ftp://127.0.0.1/x.png")]["reason"] == "bad_scheme"
    download = rejects(curation, "download")
    assert download[uid_of("missing/404.png")]["reason"] == "http_404"
    assert download[uid_of("noai/opt_out.png")]["reason"] == "x_robots_tag_optout"
    assert uid_of("flaky/once.png") not in download  # 503 first, fetched by the retry pass
    check = rejects(curation, "imagecheck")
    assert check[uid_of("bad/truncated.jpg")]["reason"] == "corrupt_image"
    assert check[uid_of("bad/page.jpg")]["reason"] == "not_an_image"
    assert check[uid_of("bad/bomb.png")]["reason"] == "decompression_bomb"
    dedup = rejects(curation, "imagededup")
    assert dedup[uid_of("img/exact_copy_of_03.png")]["reason"] == "exact_duplicate"
    assert dedup[uid_of("img/exact_copy_of_03.png")]["duplicate_of"] == uid_of("img/03.png")
    assert dedup[uid_of("img/near_copy_of_05.png")]["reason"] == "near_duplicate"
    assert dedup[uid_of("img/near_copy_of_05.png")]["duplicate_of"] == uid_of("img/05.png")

    # 2. accounting: each stage balances, stages chain, every uid ends in exactly one place
    stats = summary["stages"]
    for a, b in zip(STAGES, STAGES[1:]):
        assert stats[a]["out"] == stats[b]["in"]
    for s in STAGES:
        assert stats[s]["in"] == stats[s]["out"] + sum(stats[s]["rejected"].values())
    by_node = stats["download"]["by_node"]  # downloads ran as Ray tasks, each shard's node recorded
    assert sum(by_node.values()) == stats["download"]["out"] and "unknown" not in by_node
    assert set(by_node) <= {n["NodeID"] for n in ray_session.nodes()}
    checked_by_node = stats["imagecheck"]["by_node"]
    assert sum(checked_by_node.values()) == stats["imagecheck"]["in"] and "unknown" not in checked_by_node
    index = ds.dataset(sorted(str(p) for p in (curation / "shards").glob("*.parquet")), format="parquet").to_table()
    placed = index.column("uid").to_pylist() + [u for s in STAGES[:-1] for u in rejects(curation, s)]
    assert sorted(placed) == sorted(selected.column("uid").to_pylist())

    # 3. shards load unchanged with webdataset and ray.data.read_webdataset
    tars = sorted(str(p) for p in (curation / "shards").glob("*.tar"))
    assert summary["shards"]["samples"] == stats["shards"]["out"] == len(index)
    texts = dict(zip(selected.column("uid").to_pylist(), selected.column("text").to_pylist()))
    loaded = list(wds.WebDataset(tars, shardshuffle=False).decode("pil"))
    assert len(loaded) == len(index)
    for sample_ in loaded:
        meta = sample_["json"] if isinstance(sample_["json"], dict) else json.loads(sample_["json"])
        assert sample_["txt"] == texts[meta["uid"]] and sample_["jpg"].size == (64, 64)
        assert set(meta) >= {"uid", "url", "query_ids", "source"}
    ray_rows = ray_session.data.read_webdataset(tars, file_extensions=["tar"]).take_all()
    assert sorted(r["__key__"] for r in ray_rows) == sorted(index.column("key").to_pylist())
    assert (curation / "report.html").exists() and (curation / "report" / "funnel.png").exists()
    assert (tmp_path / "datasheet.md").exists() and "href='../datasheet.md'" in (curation / "report.html").read_text()

    # 4. rerun: a finished run is a no-op; rebuilt shards are byte-identical, without network
    before = {p.name: p.read_bytes() for p in (curation / "shards").iterdir()}
    assert wit_images.run(image_args(), str(curation))["skipped"] is True
    (curation / "stats" / "shards.json").unlink()
    for tar in (curation / "shards").glob("*.tar"):
        tar.unlink()
    monkeypatch.setattr("img2dataset.download", lambda **kw: pytest.fail("rerun downloaded again"))
    again = wit_images.run(image_args(), str(curation))
    assert again["skipped"] is False and again["stages"] == summary["stages"]
    assert {p.name: p.read_bytes() for p in (curation / "shards").iterdir()} == before

    # 5. resuming with other result-relevant settings is refused, naming what changed
    with pytest.raises(ValueError, match="dedup"):
        wit_images.run(image_args("--dedup-threshold", "2"), str(curation))
