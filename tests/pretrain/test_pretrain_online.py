"""Online balancing (MetaCLIP 2): the loader draws each data epoch's balanced sample of a matched
pool with curation's pure draw. Statistical checks that can fail: per-entry kept counts match
min(c_e, t) in expectation, head entries get a different sample each epoch, the tail is always
whole, and epoch 0 is exactly the offline balance stage's draw with the same seed."""

from __future__ import annotations

import io
import json
from collections import Counter, defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from curation.stage import KEPT, REASON
from curation.text.balance import Balancer
from pretrain.data import make_train_pipeline
from pretrain.online import OnlineBalance, epoch_seed
from storage.layout import BALANCE_META as BALANCE_INFO
from storage.layout import BALANCE_TABLE

T = 40
HEAD = {0: 800, 1: 400, 2: 200}  # entry -> matched pairs, above t
TAIL = {3: 30, 4: 12, 5: 1}  # at or below t: kept whole every epoch
NUM_QUERIES = 8  # entry 6 only in pairs with entry 0; entry 7 never matched


def pool_rows() -> list[tuple[str, list[int]]]:
    """(uid, query ids) of a synthetic matched pool: one entry per pair (the per-entry counts are
    then exactly binomial), plus 20 pairs matching head entry 0 and entry 6, seen only there."""
    rows = []
    for entry, count in {**HEAD, **TAIL}.items():
        rows += [(f"e{entry}-{i:04d}", [entry]) for i in range(count)]
    rows += [(f"both-{i:03d}", [0, 6]) for i in range(20)]
    return rows


def entry_counts(rows) -> np.ndarray:
    return np.bincount([e for _, ids in rows for e in ids], minlength=NUM_QUERIES)


@pytest.fixture(scope="module")
def online_pool(fashion_train, tmp_path_factory):
    """The pool as an online pool's shards (a real Fashion-MNIST image per pair, json with uid and
    query_ids) with balance.parquet / balance.json beside them, as build_wit --balance online writes."""
    from pretrain.evalsets import png_bytes

    out = tmp_path_factory.mktemp("online_pool")
    rows = pool_rows()
    order = np.random.default_rng(0).permutation(len(rows))
    images = [png_bytes(fashion_train.pil(i)) for i in range(64)]
    for shard, start in enumerate(range(0, len(rows), 300)):
        with wds.TarWriter(str(out / f"{shard:05d}.tar")) as sink:
            for r in order[start:start + 300]:
                uid, ids = rows[r]
                sink.write({"__key__": f"{r:06d}", "png": images[r % 64], "txt": f"pair {uid}",
                            "json": json.dumps({"uid": uid, "query_ids": ids}).encode()})
    counts = entry_counts(rows)
    present = np.flatnonzero(counts)
    pq.write_table(pa.table({"query_id": pa.array(present, pa.int32()), "count": pa.array(counts[present], pa.int64()),
                             "t": pa.array(np.full(len(present), float(T)))}), out / BALANCE_TABLE)
    (out / BALANCE_INFO).write_text(json.dumps({"mode": "online", "seed": 7, "num_queries": NUM_QUERIES}))
    shards = sorted(out.glob("*.tar"))
    return f"{out}/{{00000..{len(shards) - 1:05d}}}.tar", rows


def test_epoch_zero_is_the_offline_draw_and_epochs_differ():
    rows = pool_rows()
    counts = entry_counts(rows)
    uids, ids = [u for u, _ in rows], [q for _, q in rows]
    offline = Balancer(counts, t=T, seed=7)
    table = offline(pa.table({"uid": uids, "query_ids": pa.array(ids, pa.list_(pa.int32()))}))
    offline_kept = np.array([r == KEPT for r in table.column(REASON).to_pylist()])
    assert 0 < offline_kept.sum() < len(rows)
    present = np.flatnonzero(counts)
    online = OnlineBalance(present, counts[present], np.full(len(present), float(T)), seed=7, num_queries=NUM_QUERIES)
    assert np.array_equal(online.keep(uids, ids, 0), offline_kept)  # epoch 0 = the offline selection, pair for pair
    assert epoch_seed(7, 0) == 7 and len({epoch_seed(7, e) for e in range(50)} | {epoch_seed(8, e) for e in range(50)}) == 100
    assert not np.array_equal(online.keep(uids, ids, 1), offline_kept)
    # the draw is a function of the pair, not of its neighbours: any subset draws the same
    half = slice(0, None, 2)
    assert np.array_equal(online.keep(uids[half], ids[half], 3), online.keep(uids, ids, 3)[half])


def test_loader_draws_a_balanced_sample_per_epoch(online_pool, tokenizer):
    """Through the training loader (no resampling: a data epoch reads every shard once), 6 epochs."""
    pattern, rows = online_pool
    epochs = 6
    pipeline = make_train_pipeline(pattern, tokenizer, 32, 25, seed=3, resample=False, shuffle_buffer=40,
                                   balance="online")
    source = pipeline.pipeline[0]
    kept: dict[int, list[str]] = defaultdict(list)
    for sample in source:  # the raw stream, tagged with each sample's data epoch
        kept[sample["__epoch__"]].append(json.loads(sample["json"])["uid"])
        if sample["__epoch__"] > epochs:  # epochs < 6 all read (blocks of 40 straddle one boundary at most)
            break
    counts = Counter(pipeline.pipeline[1].counts)
    waiting = 40 - sample["__state__"]["sources"][0][2]  # the last block's samples not passed on yet
    ids_of = {uid: ids for uid, ids in rows}
    assert all(len(set(k)) == len(k) for k in kept.values())  # no pair twice in an epoch
    single = [Counter(ids_of[uid][0] for uid in kept[k] if len(ids_of[uid]) == 1) for k in range(epochs)]
    # head entries (single-entry pairs): Binomial(n_e, t / c_e) per epoch -> mean n_e t / c_e (= t
    # when all its pairs match it alone); 4 sigma over 6 epochs
    c = entry_counts(rows)
    for entry, count in HEAD.items():
        p = T / c[entry]
        mean = np.mean([s[entry] for s in single])
        sigma = np.sqrt(count * p * (1 - p) / epochs)
        assert abs(mean - count * p) < 4 * sigma, (entry, mean)
    # the tail is whole in every epoch (p = 1)
    for entry, count in TAIL.items():
        assert all(s[entry] == count for s in single), entry
    # pairs of a head and a tail entry: always kept (entry 6's p is 1)
    assert all(sum(1 for uid in kept[k] if uid.startswith("both-")) == 20 for k in range(epochs))
    # head entries get a different sample each epoch (overlap of two draws of p = 0.05: ~5 %)
    first, second = set(u for u in kept[0] if u.startswith("e0-")), set(u for u in kept[1] if u.startswith("e0-"))
    assert len(first & second) < 0.5 * min(len(first), len(second))
    # epoch 0 through the loader = the offline draw
    online = OnlineBalance.from_shards(pattern.replace("{00000..00004}", "00000"))
    uids = [u for u, _ in rows]
    assert set(kept[0]) == {u for u, k in zip(uids, online.keep(uids, [ids_of[u] for u in uids], 0)) if k}
    # every pair read is accounted: passed on, not_sampled this epoch, or waiting in the last block
    assert counts["read"] == sum(len(k) for k in kept.values()) + counts["not_sampled"] + waiting
    assert counts["not_sampled"] > 0 and counts["no_query_ids"] == 0


def test_online_needs_an_online_pool(tiny_shards, tokenizer):
    with pytest.raises(FileNotFoundError, match="build_wit.py --balance online"):
        make_train_pipeline(tiny_shards, tokenizer, 32, 8, balance="online")
    with pytest.raises(ValueError, match="--balance 'sometimes'"):
        make_train_pipeline(tiny_shards, tokenizer, 32, 8, balance="sometimes")


def test_a_sample_without_query_ids_is_counted(online_pool, tokenizer, tmp_path):
    pattern, _ = online_pool
    import shutil
    from pathlib import Path

    pool = Path(pattern).parent
    for name in (BALANCE_TABLE, BALANCE_INFO):
        shutil.copy(pool / name, tmp_path / name)
    with wds.TarWriter(str(tmp_path / "00000.tar")) as sink:
        for i in range(30):
            buf = io.BytesIO()
            from PIL import Image

            Image.new("RGB", (8, 8), (i, i, i)).save(buf, format="PNG")
            meta = {"uid": f"e5-{i:04d}", "query_ids": [5]} if i % 3 else {"url": "no uid"}
            sink.write({"__key__": f"{i:04d}", "png": buf.getvalue(), "txt": "x", "json": json.dumps(meta).encode()})
    pipeline = make_train_pipeline(str(tmp_path / "00000.tar"), tokenizer, 32, 5, resample=False, shuffle_buffer=5,
                                   balance="online")
    batches = [b for _, b in zip(range(4), pipeline)]
    total = Counter()
    for b in batches:
        total.update(b.counts)
    assert total["no_query_ids"] >= 6 and total["not_sampled"] == 0  # entry 5 (c = 1 <= t) is always kept


def test_a_pool_with_nothing_to_train_on_stops_with_an_error(online_pool, tokenizer, tmp_path):
    """Samples whose ids the balance table lacks are counted rejects; a pool where no sample
    can be passed on is an error naming it after every shard was read twice — never a hang."""
    import shutil
    from pathlib import Path

    pattern, _ = online_pool
    for name in (BALANCE_TABLE, BALANCE_INFO):
        shutil.copy(Path(pattern).parent / name, tmp_path / name)
    with wds.TarWriter(str(tmp_path / "00000.tar")) as sink:
        for i in range(10):
            meta = {"uid": f"x{i}", "query_ids": [7]}  # entry 7: in the query list, never matched
            sink.write({"__key__": f"{i:04d}", "png": b"", "txt": "x", "json": json.dumps(meta).encode()})
    pipeline = make_train_pipeline(str(tmp_path / "00000.tar"), tokenizer, 32, 5, resample=False, balance="online")
    with pytest.raises(RuntimeError, match="no sample to train on .*unknown_query_id"):
        next(iter(pipeline))
    assert pipeline.pipeline[1].counts["unknown_query_id"] >= 20


def test_online_training_needs_whole_data_epochs(tiny_shards, tokenizer, tmp_path, capsys):
    from pipelines import pretrain as pretrain_job
    from pretrain.train import TrainConfig

    with pytest.raises(ValueError, match="it needs --no-resample"):
        TrainConfig(train_data=tiny_shards, tokenizer_json=tokenizer.to_str(), out_dir=str(tmp_path), balance="online")
    with pytest.raises(SystemExit):  # argparse: before a tokenizer is trained or Ray started
        pretrain_job.run(["--train-data", tiny_shards, "--out", str(tmp_path / "r"), "--balance", "sometimes"])
    assert "invalid choice: 'sometimes'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="pretrain: --balance online: .*build_wit.py --balance online"):
        pretrain_job.run(["--train-data", tiny_shards, "--out", str(tmp_path / "r"), "--balance", "online",
                          "--no-resample"])
