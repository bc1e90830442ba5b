"""Training loader throughput (issue 25): samples/s per loader process of openwit's pipeline
(one source; two sources mixed 3:1; online balancing) against webdataset's plain loader doing the
same work on the same shards. Goal: >= 0.9x plain.

    python bench/bench_loader.py [--shards DIR] [--samples 4000] [--image-size 224]

Shards: ``--shards`` (a shard dir), else the demo's (``runs/demo/curation/shards``, JPEG 256 px,
``make demo``), else Fashion-MNIST train images written as shards here (PNG 28 px). The same work
in every loader, in this process (no loader workers, so the figure is per process): resampled
shards, a 1,000-sample shuffle buffer, decode, a random resized crop to ``--image-size``,
normalisation, tokenisation (the same BPE), batches of 64. Plain: ``wds.WebDataset(...,
resampled=True).shuffle(1000).decode("pil").to_tuple(...).map(...).batched(64)``. openwit adds its
per-sample reject accounting, the recorded stream position per sample, the crop seeded per sample
(and, mixed, the per-sample source draw). Online: the same shards as an online pool (balance
files written beside copies of them: c_e counted from the shards' json ``query_ids``, t =
each of ``--online-t``); its figure counts the samples it yields (those the epoch's draw keeps), and it
reads (without decoding) the ones it leaves out. Best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GOAL = 0.9
BATCH = 64


def shard_pattern(directory: str) -> str:
    from storage.layout import shard_pattern as pattern

    return pattern(directory)


def online_pool(urls: str, out: Path, t: float) -> tuple[str, float]:
    """``urls``' shards as an online pool: copies of them in ``out`` with ``balance.parquet`` (c_e
    counted from their json ``query_ids``, the given t) and ``balance.json`` (seed 1). Returns the
    pool's pattern and the share of its samples epoch 0 keeps."""
    import shutil

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import webdataset as wds

    from pretrain.data import shard_files
    from pretrain.online import OnlineBalance
    from storage.layout import BALANCE_META as BALANCE_INFO
    from storage.layout import BALANCE_TABLE

    out.mkdir(parents=True)
    uids, ids = [], []
    for file in shard_files(urls):
        shutil.copyfile(file, out / Path(file).name)
        for sample in wds.WebDataset(file, shardshuffle=False):
            meta = json.loads(sample["json"])
            uids.append(meta["uid"])
            ids.append([int(q) for q in meta["query_ids"]])
    counts = np.bincount([q for row in ids for q in row])
    present = np.flatnonzero(counts)
    pq.write_table(pa.table({"query_id": pa.array(present, pa.int32()), "count": pa.array(counts[present], pa.int64()),
                             "t": pa.array(np.full(len(present), t))}), out / BALANCE_TABLE)
    (out / BALANCE_INFO).write_text(json.dumps({"mode": "online", "seed": 1, "num_queries": len(counts)}))
    pattern = shard_pattern(str(out))
    kept = OnlineBalance.from_shards(shard_files(pattern)[0]).keep(uids, ids, 0)
    return pattern, float(kept.mean())


def main(argv: list[str] | None = None) -> dict:
    import torch
    import webdataset as wds

    from pretrain.data import make_train_pipeline, read_captions
    from pretrain.tokenizer import CaptionTokenizer
    from pretrain.transform import ImageTransform

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", default=None)
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--online-t", default="2,1,0.2",
                        help="t of the online pools, comma-separated (lower t: a smaller share kept)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    tmp = tempfile.TemporaryDirectory(prefix="ow-bl-")
    directory = args.shards or ("runs/demo/curation/shards" if Path(ROOT, "runs/demo/curation/shards").exists() else None)
    if directory is None:
        from pipelines.demo.sample_data import load_manifest
        from pretrain.evalsets import FASHION_MNIST_CAPTIONS, load_fashion_mnist, write_captioned_shards

        data = load_fashion_mnist(load_manifest()["fashion_mnist_dir"], "train")
        write_captioned_shards(data, tmp.name, FASHION_MNIST_CAPTIONS, shard_size=500, limit=4000, seed=1)
        directory = tmp.name
    urls = shard_pattern(str(Path(ROOT, directory)) if not Path(directory).is_absolute() else directory)
    tokenizer = CaptionTokenizer.train(read_captions(urls, 20_000), vocab_size=1024)
    batches = args.samples // BATCH

    pools = {float(t): online_pool(urls, Path(tmp.name) / f"online-{t}", float(t)) for t in args.online_t.split(",")}

    def ours(weights: str = "", online_t: float | None = None) -> float:
        balance = "offline" if online_t is None else "online"
        source = f"{urls}::{urls}" if weights else pools[online_t][0] if online_t is not None else urls
        pipeline = make_train_pipeline(source, tokenizer, args.image_size, BATCH, seed=1, shuffle_buffer=1000,
                                       weights=weights, balance=balance)
        it = iter(pipeline)
        started = time.perf_counter()
        for _ in range(batches):
            next(it)
        return batches * BATCH / (time.perf_counter() - started)

    def plain() -> float:
        transform = ImageTransform(args.image_size, train=True)
        image_key = "jpg;png;jpeg;webp"
        dataset = (wds.WebDataset(urls, resampled=True, shardshuffle=False).shuffle(1000).decode("pil")
                   .to_tuple(image_key, "txt").map(lambda s: (transform(s[0]), s[1])).batched(BATCH)
                   .map(lambda b: (b[0], tokenizer(list(b[1])))))
        it = iter(dataset)
        started = time.perf_counter()
        for _ in range(batches):
            next(it)
        return batches * BATCH / (time.perf_counter() - started)

    rates = {"plain_webdataset": max(plain() for _ in range(args.repeats)),
             "openwit": max(ours() for _ in range(args.repeats)),
             "openwit_mixed_3_1": max(ours("3::1") for _ in range(args.repeats)),
             **{f"openwit_online_t{t:g}": max(ours(online_t=t) for _ in range(args.repeats)) for t in pools}}
    result = {"shards": urls, "samples": batches * BATCH, "image_size": args.image_size,
              "online_kept_share_epoch0": {f"t{t:g}": round(share, 3) for t, (_, share) in pools.items()},
              "samples_per_s": {k: round(v, 1) for k, v in rates.items()},
              "ratio_vs_plain": {k: round(v / rates["plain_webdataset"], 3) for k, v in rates.items()
                                 if k != "plain_webdataset"}, "goal": GOAL}
    print(json.dumps(result, indent=2))
    tmp.cleanup()
    return result


if __name__ == "__main__":
    main()
