"""Training throughput and MFU of our CLIP on a GPU: ViT-B/32, bf16 autocast, one process.

    python bench/bench_train_gpu.py                                  # every case, ViT-B-32, batch 512
    python bench/bench_train_gpu.py --shards 'runs/demo/curation/shards/{00000..00000}.tar'
    python bench/bench_train_gpu.py --device cpu --model tiny --precision fp32 --batch-size 8 \\
        --steps 2 --warmup 1 --peak-tflops 1 --cases eager gc ddp --eager   # the CPU path the tests run

Cases (``--cases``; default all): synthetic 224 px batches already on the device (N(0,1)
pixels, captions of 6-20 tokens) trained ``eager``, ``compile`` (torch.compile), ``gc``
(gradient checkpointing), ``compile+gc``; ``shards``: the real input pipeline
(pretrain.data: WebDataset shards, decode, random crop, tokenize, ``--data-workers`` loader
processes, pinned memory) on ``--shards`` with ``torch.compile`` (skipped, and said so, without
shards); ``ddp``: the synthetic batch through DistributedDataParallel in a 1-process nccl group
(gloo on CPU), the loss set up as pretrain.train does for the group, with ``torch.compile``.
``--eager`` runs ``shards`` and ``ddp`` without torch.compile.

Each case: ``--warmup`` steps (compilation happens there), then ``--steps`` timed steps between
two device synchronisations (no host read-back in between); a step is forward + ClipLoss +
backward + fused AdamW + logit_scale clamp, as pretrain/train.py does it. Printed per case: step
time, samples/s, model TFLOP/s and MFU = model FLOPs per second / the GPU's dense bf16 peak
(``--peak-tflops`` or the table below by device name). Model FLOPs per sample are counted from the
architecture (:func:`train_flops_per_sample`): every matmul of both towers (patch embedding, QKV,
attention scores and values, output projection, MLP, final projections) at 2 FLOPs per
multiply-add, the text tower at its full 77-token context (on a GPU it does not skip padding),
causal attention at half the dense count, the B x B logits of the loss, and training = 3 x forward
(backward = 2 x forward; recomputation under gradient checkpointing is not counted: MFU counts
model FLOPs, not hardware FLOPs). The goal (issue 12): >= 45% MFU for ViT-B/32 bf16 on one
H100/H200; open_clip reaches ~11% on an A100.

Without a GPU (and no ``--device cpu``) it prints SKIPPED and exits 77 (``make bench`` lists it
as skipped). Results also go to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pretrain.factory import create_model, get_model_config  # noqa: E402
from pretrain.loss import ClipLoss  # noqa: E402
from pretrain.optim import param_groups  # noqa: E402

EXIT_SKIPPED = 77
# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets.
PEAK_BF16_TFLOPS = (("H200", 989.4), ("H100 SXM", 989.4), ("H100 80GB HBM3", 989.4), ("H100 NVL", 835.0),
                    ("H100 PCIe", 756.0), ("H100", 756.0), ("A100", 312.0), ("L40S", 362.0), ("A10", 125.0))
CASES = ("eager", "compile", "gc", "compile+gc", "shards", "ddp")


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU by (a substring of) its name; None if unknown."""
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key.lower() in device_name.lower()), None)


def transformer_flops(tokens: int, width: int, layers: int, mlp_ratio: float, causal: bool) -> int:
    """Forward FLOPs of ``layers`` pre-LN blocks over ``tokens`` tokens (2 per multiply-add)."""
    hidden = int(width * mlp_ratio)
    projections = 2 * tokens * width * (3 * width + width + 2 * hidden)  # QKV, out, MLP in + out
    attention = 2 * 2 * tokens * tokens * width  # Q K^T and (softmax) V, all heads together
    if causal:
        attention //= 2
    return layers * (projections + attention)


def forward_flops_per_sample(model_cfg: dict, batch_size: int, text_tokens: int | None = None) -> int:
    """Forward FLOPs of one (image, caption) pair: both towers, their projections and its share
    (one row and one column) of the B x B logits."""
    v, t, dim = model_cfg["vision_cfg"], model_cfg["text_cfg"], model_cfg["embed_dim"]
    grid = v["image_size"] // v["patch_size"]
    width, mlp = v.get("width", 768), v.get("mlp_ratio", 4.0)
    image = 2 * grid * grid * (3 * v["patch_size"] ** 2) * width  # patch embedding (conv as matmul)
    image += transformer_flops(grid * grid + 1, width, v.get("layers", 12), mlp, causal=False)
    image += 2 * width * dim  # class token -> embedding
    tokens = text_tokens or t.get("context_length", 77)
    t_width = t.get("width", 512)
    text = transformer_flops(tokens, t_width, t.get("layers", 12), t.get("mlp_ratio", 4.0), causal=True)
    text += 2 * t_width * dim  # EOT state -> embedding
    logits = 2 * 2 * batch_size * dim  # logits_per_image row + logits_per_text row
    return image + text + logits


def train_flops_per_sample(model_cfg: dict, batch_size: int, text_tokens: int | None = None) -> int:
    """Model FLOPs of one training step per sample: forward + backward = 3 x forward."""
    return 3 * forward_flops_per_sample(model_cfg, batch_size, text_tokens)


@dataclass(frozen=True)
class Case:
    name: str  # one of CASES
    compile: bool  # torch.compile the model
    grad_checkpointing: bool  # recompute transformer blocks in backward
    data: str  # "synthetic" (batch resident on the device) or "shards" (the real input pipeline)
    ddp: bool  # DistributedDataParallel in a 1-process group


def case(name: str, eager: bool = False) -> Case:
    """The configuration of a named case (``eager``: no torch.compile for shards and ddp)."""
    return {
        "eager": Case("eager", False, False, "synthetic", False),
        "compile": Case("compile", True, False, "synthetic", False),
        "gc": Case("gc", False, True, "synthetic", False),
        "compile+gc": Case("compile+gc", True, True, "synthetic", False),
        "shards": Case("shards", not eager, False, "shards", False),
        "ddp": Case("ddp", not eager, False, "synthetic", True),
    }[name]


def synthetic_batch(model_cfg: dict, batch_size: int, device: torch.device, seed: int = 0):
    """(images (B,3,S,S), texts (B,77)) on ``device``: N(0,1) pixels, captions of 6-20 tokens."""
    size, context = model_cfg["vision_cfg"]["image_size"], model_cfg["text_cfg"]["context_length"]
    vocab = model_cfg["text_cfg"]["vocab_size"]
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 3, size, size, generator=g)
    texts = torch.zeros(batch_size, context, dtype=torch.long)
    for row in range(batch_size):
        n = int(torch.randint(6, 21, (1,), generator=g))
        texts[row, 0], texts[row, n + 1] = 1, 2  # our tokenizer's SOT / EOT ids
        texts[row, 1 : n + 1] = torch.randint(3, vocab, (n,), generator=g)
    return images.to(device), texts.to(device)


def shard_batches(pattern: str, model_name: str, batch_size: int, workers: int, device: torch.device):
    """Endless (images, texts) on ``device`` from WebDataset shards through pretrain.data."""
    from pretrain.data import make_train_pipeline, read_captions, train_batches
    from pretrain.tokenizer import CaptionTokenizer

    cfg = get_model_config(model_name)
    tokenizer = CaptionTokenizer.train(read_captions(pattern, 100_000), vocab_size=cfg["text_cfg"]["vocab_size"])
    pipeline = make_train_pipeline(pattern, tokenizer, cfg["vision_cfg"]["image_size"], batch_size, workers=workers)
    for batch in train_batches(pipeline, workers, pin_memory=device.type == "cuda"):
        yield batch.images.to(device, non_blocking=True), batch.texts.to(device, non_blocking=True)


def make_step(model_name: str, c: Case, device: torch.device, bf16: bool):
    """A closure running one training step on (images, texts); returns the loss tensor."""
    torch.manual_seed(0)
    raw = create_model(model_name).to(device).train()
    raw.set_grad_checkpointing(c.grad_checkpointing)
    model = raw
    if c.ddp:
        model = torch.nn.parallel.DistributedDataParallel(raw, device_ids=[device.index] if device.type == "cuda" else None)
    if c.compile:
        model = torch.compile(model)
    world = torch.distributed.get_world_size() if c.ddp else 1
    loss_fn = ClipLoss(local_loss=c.ddp, gather_with_grad=c.ddp, rank=0, world_size=world)
    optimizer = torch.optim.AdamW(param_groups(raw, 0.2), lr=5e-4, betas=(0.9, 0.98), eps=1e-6, fused=True)

    def step(images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            image_features, text_features, logit_scale = model(images, texts)
            loss = loss_fn(image_features.float(), text_features.float(), logit_scale.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        raw.clamp_logit_scale()
        return loss

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, batches, steps: int, warmup: int, device: torch.device) -> dict:
    """Seconds per step over ``steps`` steps after ``warmup`` (one sync before, one after)."""
    start = time.perf_counter()
    for _ in range(warmup):
        loss = step(*next(batches))
    _sync(device)
    warm_s = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = step(*next(batches))
    _sync(device)
    elapsed = time.perf_counter() - start
    value = float(loss.detach())
    if not math.isfinite(value):
        raise RuntimeError(f"non-finite loss {value}")
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"step_s": elapsed / steps, "warmup_s": warm_s, "loss": value, "max_memory_gib": memory}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_case(c: Case, args, device: torch.device) -> dict:
    """Build, warm up and time one case; the figures of its row."""
    cfg = get_model_config(args.model)
    if c.data == "shards" and not args.shards:
        return {"case": c.name, "skipped": "no --shards given"}
    if c.ddp:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    try:
        step = make_step(args.model, c, device, args.precision == "bf16")
        if c.data == "shards":
            batches = shard_batches(args.shards, args.model, args.batch_size, args.data_workers, device)
        else:
            batch = synthetic_batch(cfg, args.batch_size, device)
            batches = iter(lambda: batch, None)
        timing = time_steps(step, batches, args.steps, args.warmup, device)
    finally:
        if c.ddp:
            torch.distributed.destroy_process_group()
    flops = train_flops_per_sample(cfg, args.batch_size)
    samples_per_s = args.batch_size / timing["step_s"]
    achieved = flops * samples_per_s / 1e12
    peak = args.peak_tflops
    return {"case": c.name, "compile": c.compile, "grad_checkpointing": c.grad_checkpointing, "data": c.data,
            "ddp": c.ddp, "batch_size": args.batch_size, **timing, "samples_per_s": samples_per_s,
            "model_tflops_per_s": achieved, "mfu": achieved / peak if peak else None}


def format_row(r: dict) -> str:
    if "skipped" in r:
        return f"{r['case']:>11}: SKIPPED ({r['skipped']})"
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (unknown peak)"
    memory = f", {r['max_memory_gib']:.1f} GiB" if r["max_memory_gib"] is not None else ""
    return (f"{r['case']:>11}: step {1000 * r['step_s']:.1f} ms, {r['samples_per_s']:.0f} samples/s, "
            f"{r['model_tflops_per_s']:.1f} model TFLOP/s, MFU {mfu} (warm-up {r['warmup_s']:.0f} s{memory})")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="our CLIP training samples/s and MFU on a GPU")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else skip) | cuda | cuda:N | cpu")
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--steps", type=int, default=30, help="timed steps per case")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation)")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    p.add_argument("--shards", default="", help="WebDataset shards for the 'shards' case (brace pattern)")
    p.add_argument("--data-workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    p.add_argument("--eager", action="store_true", help="no torch.compile in the shards and ddp cases")
    p.add_argument("--peak-tflops", type=float, default=None, help="bf16 peak (default: by GPU name)")
    p.add_argument("--out", default="runs/bench_train_gpu.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.device == "auto" and not torch.cuda.is_available():
        print("[bench_train_gpu] SKIPPED (exit 77): no CUDA device; run it on a GPU machine, or "
              "--device cpu for the CPU path", file=sys.stderr)
        sys.exit(EXIT_SKIPPED)
    device = torch.device("cuda" if args.device == "auto" else args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    args.peak_tflops = args.peak_tflops or peak_tflops(name)
    cfg = get_model_config(args.model)
    print(f"[bench_train_gpu] {args.model} on {name} (bf16 peak {args.peak_tflops} TFLOP/s), {args.precision}, "
          f"batch {args.batch_size}, {args.steps} timed steps; model FLOPs/sample "
          f"{train_flops_per_sample(cfg, args.batch_size) / 1e9:.1f} G (train), torch {torch.__version__}", flush=True)
    rows = []
    for name_ in args.cases:
        rows.append(run_case(case(name_, args.eager), args, device))
        print(format_row(rows[-1]), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    best = max((r for r in rows if r.get("mfu")), key=lambda r: r["mfu"], default=None)
    if best:
        print(f"[bench_train_gpu] best: {best['case']} MFU {100 * best['mfu']:.1f}% "
              f"-> {best['mfu'] / 0.45:.2f}x the 45% goal, {best['mfu'] / 0.11:.1f}x open_clip's ~11% (A100)")
    report = {"device": name, "model": args.model, "precision": args.precision, "torch": torch.__version__,
              "peak_tflops": args.peak_tflops, "flops_per_sample": train_flops_per_sample(cfg, args.batch_size),
              "cases": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
