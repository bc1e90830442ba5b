"""Learning-rate schedule: linear warmup then cosine decay to zero (CLIP §2.5, open_clip)."""

from __future__ import annotations

import math


def cosine_lr(step: int, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """LR for optimizer step ``step`` (0-based).

    Steps ``0 .. warmup_steps-1`` ramp linearly up to ``base_lr`` (step ``s`` gets
    ``base_lr * (s + 1) / warmup_steps``); the remaining steps follow half a cosine from
    ``base_lr`` down to 0 at ``total_steps``; steps beyond ``total_steps`` stay at 0."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return 0.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))
