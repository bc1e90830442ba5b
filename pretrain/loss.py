"""CLIP's symmetric contrastive loss (CLIP Fig. 3), single-process or across workers.

Across ``world_size`` workers, features are all-gathered (with gradients when
``gather_with_grad``) and either every rank computes the full (global-batch) loss
(``local_loss=False``) or only its own rows against all columns (``local_loss=True``, less
compute). Either way, averaging the per-rank losses gives the loss of the concatenated batch,
and DDP's gradient averaging gives its gradient (tests/pretrain/test_loss.py checks both).
The constructor and call signature are open_clip's, so the two are interchangeable.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F
from torch import nn


def gather_features(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    local_loss: bool,
    gather_with_grad: bool,
    rank: int,
    world_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All-gather (B, D) features from every rank into (world_size * B, D), in rank order.

    With ``gather_with_grad`` the gather is differentiable (its backward sums the gradients
    of every rank into the owner's rows). Without it, other ranks' rows are constants and,
    unless ``local_loss``, the local rows are put back so they keep their gradient."""
    if gather_with_grad:
        with warnings.catch_warnings():  # deprecated in favour of a private API; still correct
            warnings.simplefilter("ignore", FutureWarning)
            all_image = torch.cat(dist_nn.all_gather(image_features), dim=0)
            all_text = torch.cat(dist_nn.all_gather(text_features), dim=0)
        return all_image, all_text
    gathered_image = [torch.zeros_like(image_features) for _ in range(world_size)]
    gathered_text = [torch.zeros_like(text_features) for _ in range(world_size)]
    dist.all_gather(gathered_image, image_features)
    dist.all_gather(gathered_text, text_features)
    if not local_loss:
        gathered_image[rank] = image_features
        gathered_text[rank] = text_features
    return torch.cat(gathered_image, dim=0), torch.cat(gathered_text, dim=0)


class ClipLoss(nn.Module):
    """``loss_fn(image_features, text_features, logit_scale) -> scalar``.

    Inputs are this rank's L2-normalised (B, D) features and ``logit_scale`` already
    exponentiated (the model's third output). The loss is the mean of the image->text and
    text->image cross-entropies, the positives on the diagonal (offset by ``rank * B`` when
    ``local_loss``)."""

    def __init__(
        self,
        local_loss: bool = False,  # this rank's rows vs all columns (else the full matrix)
        gather_with_grad: bool = False,  # differentiable all-gather (needed for exact grads)
        rank: int = 0,  # this worker's rank in the process group
        world_size: int = 1,  # number of workers; 1 = no communication
    ):
        super().__init__()
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.rank = rank
        self.world_size = world_size

    def get_logits(self, image_features, text_features, logit_scale):
        """(logits_per_image, logits_per_text): (B_local or B_global, B_global)."""
        if self.world_size == 1:
            logits_per_image = logit_scale * image_features @ text_features.T
            return logits_per_image, logits_per_image.T
        all_image, all_text = gather_features(
            image_features, text_features, self.local_loss, self.gather_with_grad,
            self.rank, self.world_size,
        )
        if self.local_loss:
            return logit_scale * image_features @ all_text.T, logit_scale * text_features @ all_image.T
        logits_per_image = logit_scale * all_image @ all_text.T
        return logits_per_image, logits_per_image.T

    def forward(self, image_features, text_features, logit_scale) -> torch.Tensor:
        logits_per_image, logits_per_text = self.get_logits(image_features, text_features, logit_scale)
        n = logits_per_image.shape[0]
        offset = self.rank * n if (self.world_size > 1 and self.local_loss) else 0
        labels = torch.arange(offset, offset + n, device=logits_per_image.device)
        return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
