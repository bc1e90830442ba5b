"""MetaCLIP's central finding, in miniature: does balancing the pool over its metadata entries
help a CLIP trained with the same compute?

1. A long-tailed pool of real labelled images with captions: Fashion-MNIST *train* images,
   class c (in a fixed random order) drawn ``round(head * rank**-alpha)`` times (head 6,000,
   alpha 2: 6,000, 1,500, 667, ... 60 images), each captioned with one of 10 wordings
   (pretrain.evalsets.FASHION_MNIST_CAPTIONS) around the class's name or one of its common
   synonyms ("sneaker" / "trainer" / "running shoe" ...).
2. Metadata entries: every class name and synonym, plus every word of the wordings ("picture",
   "image", "sale", ...: generic words that match across classes, as real metadata does).
3. (b) = that pool balanced by our own selection: ``pipelines/build_wit.py --until select`` on
   the pool and the entries (substring matching, entry counts, t scaled to the pool by
   MetaCLIP's tail share, the hash draw; language ID and dedup off, as the captions are
   templated). (a) = the unbalanced pool as is.
4. The same tiny CLIP (pipelines/pretrain.py, one process), the same steps and batch size, the
   same tokenizer (trained on (a)'s captions), on (a) and on (b); then zero-shot on the
   untouched 10,000 *test* images with CLIP-style templates never used as captions
   (pipelines/evaluate.py): mean per-class recall, and top-1.
5. Repeated for ``--seeds`` seeds (pool draw, balancing draw, init and data order all follow the
   seed); prints each pair, the mean difference (b) - (a) and its 95% t-interval over seeds.

    .venv/bin/python bench/bench_balance_effect.py [--seeds 5] [--steps 300] [--batch-size 128]

Runtime on 2 shared cores: ~80 s per seed (~7 min with the defaults; two trainings of 300 x 128
pairs, two zero-shot evaluations, one selection). Results: OUT/balance_effect.json.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import build_wit  # noqa: E402
from pipelines import evaluate as evaluate_job  # noqa: E402
from pipelines import pretrain as pretrain_job  # noqa: E402
from pipelines.demo.sample_data import load_manifest  # noqa: E402
from pretrain.evalsets import FASHION_MNIST_CAPTIONS, load_fashion_mnist, png_bytes  # noqa: E402
from pretrain.tokenizer import CaptionTokenizer  # noqa: E402
from pretrain.zeroshot import FASHION_MNIST_CLASSES  # noqa: E402

# Common other names of each class (index = Fashion-MNIST label); a caption uses the class name
# itself with probability CANONICAL_SHARE, else one of these.
SYNONYMS = (
    ("tee", "t shirt", "top"), ("pants", "jeans", "slacks"), ("sweater", "jumper"), ("gown", "frock"),
    ("jacket", "overcoat"), ("flip flop", "summer shoe"), ("blouse", "button-up shirt"),
    ("trainer", "running shoe"), ("handbag", "purse", "tote"), ("boot", "bootie"),
)
CANONICAL_SHARE = 0.6


def class_sizes(head: int, alpha: float, classes: int, seed: int = 0) -> list[int]:
    """Images per class: the class of rank r (a fixed random order) gets round(head * r**-alpha)."""
    order = list(range(classes))
    random.Random(seed).shuffle(order)
    sizes = [0] * classes
    for rank, c in enumerate(order, start=1):
        sizes[c] = max(1, round(head * rank ** -alpha))
    return sizes


def build_pool(train, sizes: list[int], seed: int) -> list[dict]:
    """The long-tailed pool: for class c, ``sizes[c]`` of its train images, each with a caption."""
    rng = random.Random(seed)
    rows = []
    for c, n in enumerate(sizes):
        for i in rng.sample(np.flatnonzero(train.labels == c).tolist(), n):
            name = FASHION_MNIST_CLASSES[c] if rng.random() < CANONICAL_SHARE else rng.choice(SYNONYMS[c])
            rows.append({"uid": f"fmnist-train-{i:05d}", "index": i, "label": c,
                         "text": rng.choice(FASHION_MNIST_CAPTIONS).format(name)})
    return rows


def metadata_entries() -> list[str]:
    """Class names, synonyms and every word of the caption wordings."""
    words = {w for t in FASHION_MNIST_CAPTIONS for w in t.replace("{}", " ").replace(",", " ").replace(":", " ").split()}
    return sorted(set(FASHION_MNIST_CLASSES) | {s for group in SYNONYMS for s in group} | words)


def select_balanced(rows: list[dict], out: Path, seed: int) -> tuple[set[str], dict]:
    """Run our selection (build_wit --until select, Beam) on the pool; the kept uids + summary."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"uid": [r["uid"] for r in rows], "text": [r["text"] for r in rows],
                             "url": [f"https://example.org/fashion-mnist/train/{r['index']}.png" for r in rows]}),
                   out / "pool.parquet")
    entries = metadata_entries()
    pq.write_table(pa.table({"query_id": np.arange(len(entries), dtype=np.int64), "query": entries}),
                   out / "queries.parquet")
    summary = build_wit.run(["--pool", str(out / "pool.parquet"), "--queries", str(out / "queries.parquet"),
                             "--out", str(out), "--until", "select", "--runner", "beam", "--language", "",
                             "--dedup", "", "--seed", str(seed), "--parts", "2"])
    parts = sorted((out / "curation" / "selected").glob("part-*.parquet"))
    kept = {u for part in parts for u in pq.read_table(part, columns=["uid"]).column("uid").to_pylist()}
    return kept, summary


def write_shards(rows: list[dict], train, out: Path, shard_size: int = 2000) -> str:
    """``rows`` (shuffled by the caller) as WebDataset shards of png + txt; the brace pattern."""
    import webdataset as wds

    out.mkdir(parents=True, exist_ok=True)
    count = math.ceil(len(rows) / shard_size)
    for s in range(count):
        with wds.TarWriter(str(out / f"{s:05d}.tar")) as sink:
            for r in rows[s * shard_size : (s + 1) * shard_size]:
                sink.write({"__key__": r["uid"], "png": png_bytes(train.pil(r["index"])), "txt": r["text"]})
    return str(out / f"{{00000..{count - 1:05d}}}.tar")


def train_and_eval(shards: str, tokenizer: Path, out: Path, args, seed: int) -> dict:
    """Pretrain the tiny CLIP on ``shards`` and evaluate it zero-shot on the Fashion-MNIST test set."""
    start = time.perf_counter()
    summary = pretrain_job.run([
        "--train-data", shards, "--model", "tiny", "--steps", str(args.steps), "--batch-size", str(args.batch_size),
        "--workers", "0", "--out", str(out), "--lr", str(args.lr), "--warmup-steps", str(args.steps // 10),
        "--log-every", str(args.steps), "--data-workers", "1", "--tokenizer", str(tokenizer), "--seed", str(seed),
        "--no-progress"])
    seconds = time.perf_counter() - start
    result = evaluate_job.run(["--checkpoint", summary["checkpoint"], "--dataset", "fashion-mnist",
                               "--out", str(out / "fashion-mnist.json")])
    return {"mean_per_class_recall": result["mean_per_class_recall"], "top1": result["top1"],
            "train_seconds": round(seconds, 1), "final_loss": summary["metrics"]["loss"]}


def one_seed(train, args, seed: int, root: Path) -> dict:
    """Both arms for one seed."""
    rows = build_pool(train, class_sizes(args.head, args.alpha, len(FASHION_MNIST_CLASSES)), seed)
    kept, selection = select_balanced(rows, root / "select", seed)
    balanced = [r for r in rows if r["uid"] in kept]
    tokenizer = root / "tokenizer.json"
    CaptionTokenizer.train([r["text"] for r in rows], vocab_size=1024).save(tokenizer)
    arms = {}
    for arm, pool in (("unbalanced", rows), ("balanced", balanced)):
        pool = list(pool)
        random.Random(seed).shuffle(pool)
        shards = write_shards(pool, train, root / arm / "shards")
        arms[arm] = {**train_and_eval(shards, tokenizer, root / arm / "run", args, seed), "pairs": len(pool),
                     "per_class": np.bincount([r["label"] for r in pool], minlength=10).tolist()}
    return {"seed": seed, "t": selection["t"], **arms}


def interval(diffs: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval of paired differences."""
    from scipy import stats

    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="zero-shot effect of MetaCLIP balancing, tiny CLIP on long-tailed Fashion-MNIST")
    p.add_argument("--out", default="runs/balance_effect")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--head", type=int, default=6000, help="images of the most frequent class")
    p.add_argument("--alpha", type=float, default=2.0, help="class-size decay: head * rank**-alpha")
    args = p.parse_args(argv)
    train = load_fashion_mnist(load_manifest()["fashion_mnist_dir"], "train")
    root = Path(args.out).resolve()
    started = time.perf_counter()
    runs = [one_seed(train, args, seed, root / f"seed{seed}") for seed in range(args.seeds)]
    report = {"runs": runs, "config": vars(args)}
    for metric in ("mean_per_class_recall", "top1"):
        diffs = [r["balanced"][metric] - r["unbalanced"][metric] for r in runs]
        mean, lo, hi = interval(diffs)
        report[metric] = {"unbalanced": statistics.fmean(r["unbalanced"][metric] for r in runs),
                          "balanced": statistics.fmean(r["balanced"][metric] for r in runs),
                          "difference": mean, "ci95": [lo, hi]}
    report["seconds"] = round(time.perf_counter() - started, 1)
    (root / "balance_effect.json").write_text(json.dumps(report, indent=2))
    for r in runs:
        print(f"seed {r['seed']}: t={r['t']:g}; unbalanced {r['unbalanced']['pairs']} pairs -> mean per-class recall "
              f"{r['unbalanced']['mean_per_class_recall']:.3f}; balanced {r['balanced']['pairs']} pairs -> "
              f"{r['balanced']['mean_per_class_recall']:.3f}")
    m = report["mean_per_class_recall"]
    print(f"balance effect ({args.seeds} seeds, {args.steps} steps x {args.batch_size}): zero-shot mean per-class recall "
          f"unbalanced {m['unbalanced']:.3f} -> balanced {m['balanced']:.3f}, difference {m['difference']:+.3f} "
          f"(95% CI {m['ci95'][0]:+.3f} .. {m['ci95'][1]:+.3f}); top-1 difference "
          f"{report['top1']['difference']:+.3f}; chance 0.100; {report['seconds']:.0f} s")
    return report


if __name__ == "__main__":
    main()
