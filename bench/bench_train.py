"""Training throughput of our CLIP (ViT-S-32, ViT-B-32 shapes) on CPU: samples/s of a full
training step (forward, ClipLoss, backward, AdamW step, logit_scale clamp), fp32, batch 32,
2 threads, on one fixed random batch. Prints the best of ``--repeats`` timings and the ratio
to the open_clip anchors measured on this machine (open_clip 3.3.0, fp32, AdamW, batch 32,
2 threads: ViT-S-32 9.2 samples/s, ViT-B-32 3.9 samples/s).

    .venv/bin/python bench/bench_train.py [--models ViT-S-32 ViT-B-32] [--steps 4] [--repeats 3]
        [--lengths 6-20 real] [--captions 'runs/demo/curation/shards/{00000..00000}.tar']

The batch: images ~ N(0, 1) at 224 px; captions of n BPE tokens between SOT (49406) and EOT
(49407), padded with 0 to 77, so open_clip's argmax pooling and ours pick the same EOT
position. Two caption-length cases are timed (``--lengths``): ``6-20`` (n uniform in 6..20) and
``real`` (n drawn from the token lengths of real captions: the ``--captions`` shards, by default
the demo's shards if present, else the sample pool's captions, tokenised with a BPE trained on
them at the model's vocabulary size as pipelines/pretrain.py would, or with ``--tokenizer``).
``full`` uses 75-token captions (no padding: the worst case for us, since we skip the padding
columns of a causal tower on CPU). bench/bench_openclip_compare.py times open_clip's step beside
ours in one process.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pretrain.factory import create_model, get_model_config  # noqa: E402
from pretrain.loss import ClipLoss  # noqa: E402
from pretrain.optim import param_groups  # noqa: E402

ANCHORS = {"ViT-S-32": 9.2, "ViT-B-32": 3.9}  # open_clip samples/s on this machine (issue 5)
SOT_ID, EOT_ID = 49406, 49407  # CLIP's ids: EOT is the largest, as open_clip's argmax pooling needs


def make_batch(model_name: str, batch_size: int, seed: int = 0, full_context: bool = False,
               lengths: list[int] | None = None):
    """(images (B,3,S,S), texts (B,77)) for ``model_name``; see the module doc. ``lengths``: an
    empirical distribution of caption token counts to draw n from (else 6..20)."""
    cfg = get_model_config(model_name)
    size, context = cfg["vision_cfg"]["image_size"], cfg["text_cfg"]["context_length"]
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 3, size, size, generator=g)
    texts = torch.zeros(batch_size, context, dtype=torch.long)
    for row in range(batch_size):
        if full_context:
            n = context - 2
        elif lengths:
            n = min(lengths[int(torch.randint(len(lengths), (1,), generator=g))], context - 2)
        else:
            n = int(torch.randint(6, 21, (1,), generator=g))
        texts[row, 0] = SOT_ID
        texts[row, 1 : n + 1] = torch.randint(3, SOT_ID, (n,), generator=g)
        texts[row, n + 1] = EOT_ID
    return images, texts


def adamw(model: torch.nn.Module, fused: bool) -> torch.optim.AdamW:
    """The training optimizer (CLIP's betas/eps, weight decay on matrices only)."""
    return torch.optim.AdamW(param_groups(model, 0.2), lr=5e-4, betas=(0.9, 0.98), eps=1e-6, fused=fused)


def ours_train_step(model_name: str, fused_adamw: bool = True):
    """A closure running one training step of our model on (images, texts)."""
    torch.manual_seed(0)
    model = create_model(model_name).train()
    optimizer = adamw(model, fused_adamw)
    loss_fn = ClipLoss()

    def step(images: torch.Tensor, texts: torch.Tensor) -> float:
        loss = loss_fn(*model(images, texts))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.clamp_logit_scale()
        return loss.item()

    return step


def samples_per_second(step, images, texts, steps: int, repeats: int, warmup: int = 1) -> list[float]:
    """Time ``steps`` steps ``repeats`` times after ``warmup`` steps; samples/s of each run."""
    for _ in range(warmup):
        step(images, texts)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            loss = step(images, texts)
        rates.append(steps * images.shape[0] / (time.perf_counter() - start))
        if not math.isfinite(loss):
            raise RuntimeError(f"non-finite loss {loss}")
    return rates


def default_captions() -> str:
    """The demo's shards if a demo has run here, else the sample pool (real, uncurated captions)."""
    root = Path(__file__).resolve().parents[1]
    tars = sorted((root / "runs" / "demo" / "curation" / "shards").glob("[0-9]*.tar"))
    if tars:
        return str(tars[0].parent / f"{{{tars[0].stem}..{tars[-1].stem}}}.tar")
    from pipelines.demo.sample_data import load_manifest

    return load_manifest()["sample_pool"]


def real_caption_lengths(source: str, model_name: str, tokenizer_json: str = "", limit: int = 100_000) -> list[int]:
    """Token counts (between SOT and EOT, before truncation) of real captions: WebDataset shards
    (a brace pattern) or a pool parquet's ``text`` column, tokenised with ``tokenizer_json`` or
    a BPE trained on these captions with the model's vocabulary size."""
    from pretrain.tokenizer import CaptionTokenizer

    if source.endswith(".parquet"):
        import pyarrow.parquet as pq

        captions = [t for t in pq.read_table(source, columns=["text"]).column("text").to_pylist() if t][:limit]
    else:
        from pretrain.data import read_captions

        captions = read_captions(source, limit)
    if tokenizer_json:
        tokenizer = CaptionTokenizer.from_file(tokenizer_json)
    else:
        tokenizer = CaptionTokenizer.train(captions, vocab_size=get_model_config(model_name)["text_cfg"]["vocab_size"])
    return tokenizer.token_counts(captions)


def length_summary(lengths: list[int]) -> str:
    q = torch.quantile(torch.tensor(lengths, dtype=torch.float64), torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64))
    return (f"{len(lengths)} real captions: median {q[0]:.0f}, p90 {q[1]:.0f}, p99 {q[2]:.0f}, "
            f"max {max(lengths)} tokens")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="our CLIP training samples/s on CPU")
    p.add_argument("--models", nargs="+", default=["ViT-S-32", "ViT-B-32"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="timed steps per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--lengths", nargs="+", choices=["6-20", "real", "full"], default=["6-20", "real"],
                   help="caption-length cases to time")
    p.add_argument("--captions", default=None, help="real captions: shards pattern or pool parquet")
    p.add_argument("--tokenizer", default="", help="tokenizer.json of a pretrain run (default: train one)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {}
    for name in args.models:
        for case in args.lengths:
            lengths = None
            if case == "real":
                source = args.captions or default_captions()
                lengths = real_caption_lengths(source, name, args.tokenizer)
                print(f"  caption lengths from {source}: {length_summary(lengths)}", flush=True)
            images, texts = make_batch(name, args.batch_size, full_context=case == "full", lengths=lengths)
            rates = samples_per_second(ours_train_step(name), images, texts, args.steps, args.repeats)
            best = max(rates)
            results[(name, case)] = best
            print(f"{name}: {best:.2f} samples/s (best of {args.repeats}: {', '.join(f'{r:.2f}' for r in rates)}); "
                  f"open_clip anchor {ANCHORS[name]} -> {best / ANCHORS[name]:.2f}x  "
                  f"[batch {args.batch_size}, fp32, {args.threads} threads, torch {torch.__version__}, "
                  f"{ {'6-20': '6-20-token', 'real': 'real-length', 'full': '75-token'}[case]} captions]", flush=True)
    return results


if __name__ == "__main__":
    main()
