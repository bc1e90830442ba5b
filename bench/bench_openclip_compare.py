"""Our CLIP training step vs open_clip's, same config, same batch, same torch, same threads,
in one process; and our ClipLoss vs open_clip's ClipLoss.

open_clip needs torchvision, which does not import beside the project's CPU torch 2.13.0,
so this runs in a separate venv (never committed; ~5.6 GB, a few minutes from local disk);
openwit is found through this file's location (no install into that venv):

    python3 -m venv /work/openclip-venv
    /work/openclip-venv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /work/openclip-venv/bin/pip install open-clip-torch==3.3.0
    /work/openclip-venv/bin/python bench/bench_openclip_compare.py [--models ViT-S-32 ViT-B-32]

Run with any other python, it re-executes itself with ``$OPENCLIP_VENV/bin/python``
(default /work/openclip-venv) if that exists; otherwise it prints ``SKIPPED`` and how to build
the venv on stderr and exits with status 77 (the automake "skipped" code), which ``make bench``
reports as skipped, never as passed. The open_clip state-dict compatibility itself is also a
test that needs no open_clip: tests/pretrain/test_pretrain_openclip_fixture.py.

What it does, per model: builds open_clip's model (``precision='fp32'``, ``output_dict=True``)
and ours, loads open_clip's weights into ours (strict: same parameter names and shapes) and
checks both give the same features; then times open_clip's training step as its trainer does
it on CPU with ``--precision fp32`` (AdamW with its param groups, ClipLoss, logit_scale
clamp) and ours (pretrain.train's param groups, fused AdamW), interleaving the repeats so
machine noise hits both alike, and prints the best of each and the ratio.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

VENV = Path(os.environ.get("OPENCLIP_VENV", "/work/openclip-venv"))
EXIT_SKIPPED = 77  # automake's "test skipped" status; make bench lists it as SKIPPED


def _ensure_openclip_python() -> None:
    try:
        import open_clip  # noqa: F401
    except ImportError:
        python = VENV / "bin" / "python"
        if python.exists() and Path(sys.executable).resolve() != python.resolve():
            os.execv(str(python), [str(python), *sys.argv])
        print(f"[bench_openclip_compare] SKIPPED (exit {EXIT_SKIPPED}): open_clip is not importable and "
              f"{python} does not exist; build the venv as this file's docstring says (or set "
              "$OPENCLIP_VENV)", file=sys.stderr)
        sys.exit(EXIT_SKIPPED)


def check_loss_equal() -> float:
    """Our ClipLoss vs open_clip's on the documented reference input; returns our value."""
    import open_clip
    import torch
    import torch.nn.functional as F

    from pretrain.loss import ClipLoss

    torch.manual_seed(0)
    image = F.normalize(torch.randn(8, 512), dim=-1)
    text = F.normalize(torch.randn(8, 512), dim=-1)
    scale = torch.tensor(math.log(1 / 0.07)).exp()
    ours, theirs = ClipLoss()(image, text, scale).item(), open_clip.ClipLoss()(image, text, scale).item()
    print(f"ClipLoss: ours {ours:.8f}, open_clip {theirs:.8f}, documented reference 2.27005911")
    if abs(ours - theirs) > 1e-6:
        raise SystemExit(f"ClipLoss mismatch: ours {ours} vs open_clip {theirs}")
    return ours


def openclip_train_step(model):
    """open_clip_train's fp32 step: AdamW over (gain/bias, rest) groups, ClipLoss, clamp."""
    import open_clip
    import torch

    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    named = list(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
         {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": 0.2}],
        lr=5e-4, betas=(0.9, 0.98), eps=1e-6,
    )
    loss_fn = open_clip.ClipLoss()

    def step(images, texts) -> float:
        model_out = model(images, texts)
        losses = loss_fn(**model_out, output_dict=True)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        return total.item()

    return step


def check_same_features(name: str, theirs, images, texts) -> None:
    """Load open_clip's weights into our model (strict) and compare the features."""
    import torch

    from pretrain.factory import create_model

    ours = create_model(name)
    ours.load_state_dict({k: v for k, v in theirs.state_dict().items() if k != "attn_mask"}, strict=True)
    with torch.no_grad():
        a = theirs(images[:4], texts[:4])
        b = ours(images[:4], texts[:4])
    for key, mine in zip(("image_features", "text_features"), b[:2]):
        err = (a[key] - mine).abs().max().item()
        print(f"{name} {key}: max |open_clip - ours| = {err:.2e} with the same weights")
        if err > 1e-4:
            raise SystemExit(f"{name}: {key} differ by {err}")


def compare(name: str, batch_size: int, steps: int, repeats: int) -> dict:
    import open_clip
    import torch

    from bench.bench_train import ANCHORS, make_batch, ours_train_step, samples_per_second

    images, texts = make_batch(name, batch_size)
    torch.manual_seed(0)
    theirs = open_clip.create_model(name, precision="fp32", output_dict=True).train()
    check_same_features(name, theirs, images, texts)
    steps_by = {"open_clip": openclip_train_step(theirs), "openwit": ours_train_step(name)}
    rates: dict[str, list[float]] = {k: [] for k in steps_by}
    for key, step in steps_by.items():  # one warm-up step each
        samples_per_second(step, images, texts, steps=1, repeats=1, warmup=0)
    for _ in range(repeats):  # interleaved: noise from other jobs hits both alike
        for key, step in steps_by.items():
            rates[key] += samples_per_second(step, images, texts, steps, repeats=1, warmup=0)
    best = {k: max(v) for k, v in rates.items()}
    ratio = best["openwit"] / best["open_clip"]
    print(f"{name}: open_clip {best['open_clip']:.2f} samples/s (runs {', '.join(f'{r:.2f}' for r in rates['open_clip'])}), "
          f"openwit {best['openwit']:.2f} (runs {', '.join(f'{r:.2f}' for r in rates['openwit'])}) -> "
          f"{ratio:.2f}x open_clip; open_clip anchor {ANCHORS[name]} samples/s "
          f"[batch {batch_size}, fp32, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"open_clip {open_clip.__version__}]", flush=True)
    return {"open_clip": best["open_clip"], "openwit": best["openwit"], "ratio": ratio}


def main(argv: list[str] | None = None) -> dict:
    _ensure_openclip_python()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # openwit, uninstalled in that venv
    import torch

    p = argparse.ArgumentParser(description="openwit vs open_clip training step on CPU")
    p.add_argument("--models", nargs="+", default=["ViT-S-32", "ViT-B-32"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=2, help="timed steps per repeat")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    check_loss_equal()
    return {name: compare(name, args.batch_size, args.steps, args.repeats) for name in args.models}


if __name__ == "__main__":
    main()
