"""A whole run with ``--out s3://…`` on the loopback S3 server: the query list, the selection
and the image stages read and write the object store only, and the shards are byte-identical to
the same run on a local directory."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import build_queries, build_wit, evaluate, pretrain
from pipelines.demo.serve_images import serving


def _pool_slice(sample: dict, base: str, n: int = 10) -> pa.Table:
    """``n`` emoji and ``n`` clipart rows of the real sample pool, their URLs on ``base``."""
    pool = pq.read_table(sample["sample_pool"]).to_pylist()
    rows = [r for r in pool if r["source"] == "emoji"][:n] + [r for r in pool if r["source"] == "openclipart"][:n]
    for r in rows:
        r["url"] = f"{base}/{r['path']}"
    return pa.Table.from_pylist(rows)


def _write(uri: str, data: bytes) -> None:
    with fsspec.open(uri, "wb") as f:
        f.write(data)


def _run(out: str, inputs: str, base_flags: list[str]) -> dict:
    build_queries.run(["--out", out, "--text", f"{inputs}/captions.txt", "--min-count", "2",
                       "--runner", "local", "--quiet"])
    return build_wit.run(["--out", out, "--pool", f"{inputs}/pool", "--runner", "beam", "--parts", "2",
                          "--t", "3", *base_flags])


def _shards(out: str) -> dict[str, bytes]:
    fs, root = fsspec.core.url_to_fs(f"{out}/curation/shards")
    return {Path(p).name: fs.cat_file(p) for p in sorted(fs.ls(root, detail=False)) if p.endswith((".tar", ".parquet"))}


@pytest.mark.ray
@pytest.mark.slow
def test_object_store_run_equals_local_run(tmp_path, sample, s3_bucket, ray_session, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    flags = ["--allow-network", "127.0.0.1", "--unlimited-hosts", "127.0.0.1", "--processes", "1", "--threads", "8", "--image-size", "64",
             "--download-shard-size", "8", "--shard-size", "6", "--no-retry-pass"]
    with serving(sample["sample_images_dir"], port=0) as base:
        pool = _pool_slice(sample, base)
        captions = "\n".join(pool.column("text").to_pylist()).encode()
        buffer = pa.BufferOutputStream()
        pq.write_table(pool, buffer)
        for inputs in (f"{s3_bucket}/inputs", str(tmp_path / "inputs")):
            _write(f"{inputs}/captions.txt", captions)
            _write(f"{inputs}/pool/part-0.parquet", buffer.getvalue().to_pybytes())
        remote = _run(f"{s3_bucket}/run", f"{s3_bucket}/inputs", flags)
        local = _run(str(tmp_path / "local"), str(tmp_path / "inputs"), flags)

    assert remote["selected"] == local["selected"] > 0
    assert remote["images"]["stages"] == local["images"]["stages"]
    remote_shards, local_shards = _shards(f"{s3_bucket}/run"), _shards(str(tmp_path / "local"))
    assert remote_shards == local_shards and any(n.endswith(".tar") for n in remote_shards)
    fs, _ = fsspec.core.url_to_fs(s3_bucket)
    stats = json.loads(fs.cat_file(f"{s3_bucket}/run/curation/stats/shards.json"))
    assert stats["out"] == remote["images"]["shards"]["samples"] > 0
    assert fs.exists(f"{s3_bucket}/run/curation/report.html")
    assert fs.exists(f"{s3_bucket}/run/queries/queries.parquet")
    # a few pretraining steps reading the shards from S3 (Ray Train checkpoints to S3), then
    # zero-shot from the run's URI
    last = max(int(n.split(".")[0]) for n in remote_shards if n.endswith(".tar"))
    shards = f"{s3_bucket}/run/curation/shards/{{00000..{last:05d}}}.tar"
    trained = pretrain.run(["--train-data", shards, "--model", "tiny", "--steps", "2", "--batch-size", "4",
                            "--workers", "1", "--out", f"{s3_bucket}/run/pretrain/tiny", "--vocab-size", "300",
                            "--data-workers", "0", "--no-progress", "--log-every", "1", "--warmup-steps", "1"])
    assert trained["metrics"]["step"] == 2 and trained["checkpoint"].startswith(f"{s3_bucket}/run/pretrain/tiny/")
    for name in ("tokenizer.json", "metrics.jsonl", "result.json"):
        assert fs.exists(f"{s3_bucket}/run/pretrain/tiny/{name}"), name
    scores = evaluate.run(["--checkpoint", f"{s3_bucket}/run/pretrain/tiny", "--dataset", "digits", "--limit", "40",
                           "--out", f"{s3_bucket}/run/pretrain/tiny/eval/digits.json"])
    assert scores["step"] == 2 and scores["n"] == 40
    assert json.loads(fs.cat_file(f"{s3_bucket}/run/pretrain/tiny/eval/digits.json"))["top1"] == scores["top1"]
    # nothing of the S3 run was written locally (no "s3:" folder, no stray files in the cwd)
    assert list(cwd.iterdir()) == []
    assert not list(tmp_path.rglob("s3:*"))
    # a rerun against the object store is a no-op that finds everything done
    again = build_wit.run(["--out", f"{s3_bucket}/run", "--pool", f"{s3_bucket}/inputs/pool", "--runner", "beam",
                           "--parts", "2", "--t", "3", *flags])
    assert again["images"]["skipped"] is True and _shards(f"{s3_bucket}/run") == remote_shards
