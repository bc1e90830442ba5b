"""Eval decontamination in curation: planted copies of Fashion-MNIST test images among the
checked training images are rejected with ``eval_duplicate`` and their eval id, never reach the
shards, and every stage's ledger balances (in = out + rejected).

The copies here are resized (28 -> 112 px), brightened and JPEG re-encoded: what the pHash
backend catches. Cropped copies defeat pHash (tests/contamination/test_copy_detection.py measures it).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from contamination.evalindex import write_eval_index
from curation.images.decontaminate import DecontaminateConfig, decontaminate_stage
from curation.images.phash import phash_codes
from curation.images.recipe import shard_stage
from curation.images.shards import ShardConfig
from curation.stage import in_process, write_rejects
from pretrain.evalsets import load_fashion_mnist
from storage.layout import RunLayout

PLANTED = (3, 77, 512, 1999, 4096, 9000)  # Fashion-MNIST test indices copied into the training images


def jpeg(rgb: np.ndarray, quality: int = 80) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_planted_eval_copies_are_rejected_and_accounted(sample, tmp_path):
    fmnist = load_fashion_mnist(sample["fashion_mnist_dir"], "test")
    copies = []
    for k, i in enumerate(PLANTED):
        big = cv2.resize(np.repeat(fmnist.images[i][:, :, None], 3, 2), (112, 112), interpolation=cv2.INTER_CUBIC)
        copies.append(np.clip(big.astype(np.float32) * (0.85 + 0.06 * k), 0, 255).astype(np.uint8))
    emoji = sorted(Path(sample["sample_images_dir"], "emoji").glob("*.png"))[:40:2]
    others = [np.asarray(Image.alpha_composite(Image.new("RGBA", (72, 72), "white"),
                                               Image.open(p).convert("RGBA").resize((72, 72))).convert("RGB"))
              for p in emoji]
    images = others[:10] + copies[:3] + others[10:] + copies[3:]  # copies spread over the part
    n = len(images)
    uids = [f"{i:032x}" for i in range(n)]
    jpgs = [jpeg(im, 70) for im in images]
    layout = RunLayout(str(tmp_path))
    part = layout.checked_part("pass0_00000")
    layout.write_parquet(pa.table({
        "uid": uids, "url": [f"http://127.0.0.1/{i}.jpg" for i in range(n)], "text": [f"caption {i}" for i in range(n)],
        "query_ids": pa.array([[i] for i in range(n)], pa.list_(pa.int32())), "source": ["test"] * n,
        "jpg": jpgs, "width": [im.shape[1] for im in images], "height": [im.shape[0] for im in images],
        "original_width": [im.shape[1] for im in images], "original_height": [im.shape[0] for im in images],
        "phash": pa.array([bytes(c) for c in phash_codes([Image.open(io.BytesIO(j)) for j in jpgs])], pa.binary(8)),
    }), part)
    # row 0 was an image-dedup reject upstream: the decontamination must not count it again
    write_rejects(layout, "imagededup", pa.table({
        "uid": [uids[0]], "reason": ["exact_duplicate"], "duplicate_of": [uids[1]],
        "part": pa.array([0], pa.int32()), "row": pa.array([0], pa.int32())}), part="exact-b00000")

    config = DecontaminateConfig(datasets=("fashion-mnist",), max_distance=8)
    assert write_eval_index(layout, config.datasets) == 10_000
    kept = decontaminate_stage(layout, [part], config, in_process, dedup_out=n - 1)
    shard_stage(layout, [part], ShardConfig(shard_size=100), in_process, dedup_out=kept)

    cur = tmp_path / "curation"
    rejects = pq.read_table(cur / "rejects" / "decontaminate" / "p000000.parquet").to_pylist()
    planted_rows = [r for r, im in enumerate(images) if any(im is c for c in copies)]
    assert sorted(r["row"] for r in rejects) == planted_rows
    assert {r["reason"] for r in rejects} == {"eval_duplicate"}
    assert sorted(r["eval_id"] for r in rejects) == sorted(f"fashion-mnist/{i}" for i in PLANTED)
    assert all(r["uid"] == uids[r["row"]] and r["score"] >= 1 - 8 / 64 for r in rejects)
    ledger = json.loads((cur / "stats" / "decontaminate.json").read_text())
    assert ledger["in"] == n - 1 == ledger["out"] + sum(ledger["rejected"].values())
    assert ledger["rejected"] == {"eval_duplicate": len(PLANTED)} and kept == n - 1 - len(PLANTED)
    shards = pq.read_table(cur / "shards" / "00000.parquet")
    assert set(shards["uid"].to_pylist()) == set(uids) - {uids[0]} - {uids[r] for r in planted_rows}
    assert json.loads((cur / "stats" / "shards.json").read_text())["in"] == kept


def test_demo_planted_pool_is_rebuilt_when_its_settings_change(sample, tmp_path):
    """The demo's planted copies (``pipelines.demo.planted_copies``) record the settings they were
    made with; a pool from an older checkout (other settings, or none recorded) is rebuilt rather
    than reused with copies outside the images the demo's report reads."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.demo.planted_copies import PLANTED, PLANTED_FROM, build_planted_copies

    (tmp_path / "images" / "planted").mkdir(parents=True)
    (tmp_path / "images" / "planted" / "fmnist-09999.png").write_bytes(b"old")
    pq.write_table(pa.table({"path": ["planted/fmnist-09999.png"]}), tmp_path / "images" / "planted.parquet")
    pool = build_planted_copies(tmp_path, {"fashion_mnist_dir": sample["fashion_mnist_dir"]})["sample_planted_pool"]
    rows = pq.read_table(pool).to_pylist()
    assert len(rows) == PLANTED and all(int(r["path"][-9:-4]) < PLANTED_FROM for r in rows)
    assert sorted(p.name for p in (tmp_path / "images" / "planted").iterdir()) == sorted(r["path"][8:] for r in rows)
    stamp = (tmp_path / "images" / "planted.parquet").stat().st_mtime_ns
    build_planted_copies(tmp_path, {"fashion_mnist_dir": sample["fashion_mnist_dir"]})  # same settings: kept
    assert (tmp_path / "images" / "planted.parquet").stat().st_mtime_ns == stamp
