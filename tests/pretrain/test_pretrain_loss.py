"""ClipLoss: the external reference value, ln(B) at init, and 2-process (gloo) equality of
value and gradients with the single-process loss on the concatenated batch."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from pretrain.factory import create_model
from pretrain.loss import ClipLoss

LOGIT_SCALE = math.log(1 / 0.07)


def test_matches_open_clip_reference_value():
    # open_clip 3.3.0's ClipLoss on this input gives 2.27005911 (documented external figure)
    torch.manual_seed(0)
    image = F.normalize(torch.randn(8, 512), dim=-1)
    text = F.normalize(torch.randn(8, 512), dim=-1)
    loss = ClipLoss()(image, text, torch.tensor(LOGIT_SCALE).exp())
    assert loss.item() == pytest.approx(2.27005911, abs=1e-6)


def test_matches_direct_formula():
    torch.manual_seed(1)
    image = F.normalize(torch.randn(6, 16), dim=-1)
    text = F.normalize(torch.randn(6, 16), dim=-1)
    logits = 3.0 * image @ text.T
    log_p_i2t = logits.log_softmax(dim=1).diag()
    log_p_t2i = logits.log_softmax(dim=0).diag()
    expected = -(log_p_i2t.mean() + log_p_t2i.mean()) / 2
    assert ClipLoss()(image, text, torch.tensor(3.0)).item() == pytest.approx(expected.item(), rel=1e-6)


def test_loss_is_ln_batch_at_init(tokenizer):
    torch.manual_seed(0)
    model = create_model("tiny")
    batch = 32
    images = torch.randn(batch, 3, 32, 32)
    texts = tokenizer([f"caption number {i} of a thing" for i in range(batch)])
    with torch.no_grad():
        loss = ClipLoss()(*model(images, texts))
    # near-random embeddings: every pair equally likely -> cross-entropy ln(B)
    assert abs(loss.item() - math.log(batch)) < 0.25


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    for local_loss in (True, False):
        torch.manual_seed(0)
        image = F.normalize(torch.randn(world_size * 4, 32), dim=-1)[rank * 4 : (rank + 1) * 4]
        text = F.normalize(torch.randn(world_size * 4, 32), dim=-1)[rank * 4 : (rank + 1) * 4]
        image.requires_grad_(True)
        text.requires_grad_(True)
        scale = torch.tensor(LOGIT_SCALE, requires_grad=True)
        loss_fn = ClipLoss(local_loss=local_loss, gather_with_grad=True, rank=rank, world_size=world_size)
        loss = loss_fn(image, text, scale.exp())
        loss.backward()
        torch.save({"loss": loss.detach(), "image_grad": image.grad, "text_grad": text.grad,
                    "scale_grad": scale.grad}, os.path.join(out_dir, f"local{local_loss}-rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_process_gather_equals_concatenated_batch(tmp_path):
    world_size = 2
    mp.spawn(_worker, args=(world_size, _free_port(), str(tmp_path)), nprocs=world_size)
    # the single-process loss on the concatenated batch
    torch.manual_seed(0)
    image = F.normalize(torch.randn(world_size * 4, 32), dim=-1).requires_grad_(True)
    text = F.normalize(torch.randn(world_size * 4, 32), dim=-1).requires_grad_(True)
    scale = torch.tensor(LOGIT_SCALE, requires_grad=True)
    loss = ClipLoss()(image, text, scale.exp())
    loss.backward()
    for local_loss in (True, False):
        ranks = [torch.load(tmp_path / f"local{local_loss}-rank{r}.pt", weights_only=True) for r in range(world_size)]
        # value: the mean over ranks (DDP's view) equals the global loss
        mean_loss = sum(r["loss"] for r in ranks) / world_size
        assert mean_loss.item() == pytest.approx(loss.item(), rel=1e-6)
        # gradients: the gathered backward sums all ranks' contributions; DDP divides by world size
        for r, got in enumerate(ranks):
            rows = slice(r * 4, (r + 1) * 4)
            torch.testing.assert_close(got["image_grad"] / world_size, image.grad[rows], rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(got["text_grad"] / world_size, text.grad[rows], rtol=1e-5, atol=1e-7)
        mean_scale_grad = sum(r["scale_grad"] for r in ranks) / world_size
        torch.testing.assert_close(mean_scale_grad, scale.grad, rtol=1e-5, atol=1e-7)
