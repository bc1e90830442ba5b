"""CLIP (Radford et al. 2021): a Vision Transformer image tower and a causal Transformer text
tower projected into one L2-normalised embedding space, with a learnable temperature.

Shapes, parameter names and initialisation follow open_clip's ``CLIP`` so that a state dict
of ours loads into open_clip's model of the same config name (and vice versa) and benchmarks
compare like with like. Attention is one fused ``F.scaled_dot_product_attention`` call
(``is_causal=True`` in the text tower, no explicit mask tensor).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

LOGIT_SCALE_INIT = math.log(1 / 0.07)  # CLIP §2.5: temperature initialised to 0.07
LOGIT_SCALE_MAX = math.log(100.0)  # ... and clipped so logits are scaled by at most 100
PAD_TOKEN_ID = 0  # the tokenizer pads with id 0; the EOT token is the last non-pad token


@dataclass
class CLIPVisionCfg:
    image_size: int = 224  # square input resolution (pixels)
    patch_size: int = 32  # side of the square patches (pixels); image_size % patch_size == 0
    width: int = 768  # transformer width (channels per token)
    layers: int = 12  # number of residual attention blocks
    head_width: int = 64  # channels per attention head (heads = width // head_width)
    mlp_ratio: float = 4.0  # MLP hidden size = width * mlp_ratio


@dataclass
class CLIPTextCfg:
    context_length: int = 77  # tokens per caption, SOT and EOT included
    vocab_size: int = 49408  # rows of the token embedding (>= the tokenizer's vocabulary)
    width: int = 512  # transformer width
    heads: int = 8  # attention heads
    layers: int = 12  # number of residual attention blocks
    mlp_ratio: float = 4.0  # MLP hidden size = width * mlp_ratio


@dataclass
class CLIPConfig:
    embed_dim: int = 512  # dimension of the shared image-text embedding space
    vision_cfg: CLIPVisionCfg = field(default_factory=CLIPVisionCfg)  # image tower
    text_cfg: CLIPTextCfg = field(default_factory=CLIPTextCfg)  # text tower

    @classmethod
    def from_dict(cls, d: dict) -> "CLIPConfig":
        """Build from the JSON layout of ``model_configs/*.json`` (open_clip's layout)."""
        return cls(
            embed_dim=int(d["embed_dim"]),
            vision_cfg=CLIPVisionCfg(**d.get("vision_cfg", {})),
            text_cfg=CLIPTextCfg(**d.get("text_cfg", {})),
        )


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back (stable under bf16 autocast)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        orig_type = x.dtype
        x = F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.to(orig_type)


class FusedAttention(nn.Module):
    """Multi-head self-attention with one packed QKV projection and SDPA.

    Parameter names (``in_proj_weight``, ``in_proj_bias``, ``out_proj``) and shapes match
    ``nn.MultiheadAttention``, so open_clip checkpoints load unchanged."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        b, t, c = x.shape  # (B, T, C)
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, T, 3C)
        qkv = qkv.view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, T, C/H)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        y = y.transpose(1, 2).reshape(b, t, c)  # (B, T, C)
        return self.out_proj(y)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = LayerNorm(width)
        self.attn = FusedAttention(width, heads)
        self.ln_2 = LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, hidden))
        self.mlp.add_module("gelu", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of residual attention blocks, optionally gradient-checkpointed per block."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, causal: bool):
        super().__init__()
        self.width, self.layers, self.causal = width, layers, causal
        self.grad_checkpointing = False
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_ratio) for _ in range(layers)
        )

    def init_weights(self) -> None:
        """open_clip's text-tower init: scaled normal for attention and MLP projections."""
        proj_std = (self.width**-0.5) * ((2 * self.layers) ** -0.5)
        attn_std, fc_std = self.width**-0.5, (2 * self.width) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, self.causal, use_reentrant=False)
            else:
                x = block(x, self.causal)
        return x


class VisionTransformer(nn.Module):
    """ViT: patchify (conv), prepend a class token, add positions, transformer, pool the
    class token, LayerNorm, project to ``output_dim``."""

    def __init__(self, cfg: CLIPVisionCfg, output_dim: int):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of {cfg.patch_size}")
        self.image_size = cfg.image_size
        grid = cfg.image_size // cfg.patch_size
        scale = cfg.width**-0.5
        self.conv1 = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(cfg.width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, cfg.width))
        self.ln_pre = LayerNorm(cfg.width)
        heads = cfg.width // cfg.head_width
        self.transformer = Transformer(cfg.width, cfg.layers, heads, cfg.mlp_ratio, causal=False)
        self.ln_post = LayerNorm(cfg.width)
        self.proj = nn.Parameter(scale * torch.randn(cfg.width, output_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.conv1(images)  # (B, C, g, g)
        x = x.flatten(2).transpose(1, 2)  # (B, g*g, C)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (B, 1+g*g, C)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj  # (B, D)


class CLIP(nn.Module):
    """The two towers plus ``logit_scale``. ``forward`` returns L2-normalised image features,
    L2-normalised text features and ``logit_scale.exp()`` (open_clip's convention)."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.cfg = cfg
        t = cfg.text_cfg
        self.context_length = t.context_length
        self.visual = VisionTransformer(cfg.vision_cfg, cfg.embed_dim)
        self.token_embedding = nn.Embedding(t.vocab_size, t.width)
        self.positional_embedding = nn.Parameter(torch.empty(t.context_length, t.width))
        self.transformer = Transformer(t.width, t.layers, t.heads, t.mlp_ratio, causal=True)
        self.ln_final = LayerNorm(t.width)
        self.text_projection = nn.Parameter(torch.empty(t.width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=t.width**-0.5)
        self.transformer.init_weights()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each transformer block in the backward pass (less memory, ~30% slower)."""
        self.visual.transformer.grad_checkpointing = enable
        self.transformer.grad_checkpointing = enable

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, 3, H, W) normalised pixels -> (B, embed_dim) features."""
        x = self.visual(images)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, text: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, context_length) token ids (SOT ... EOT, then PAD=0) -> (B, embed_dim) features:
        the final-layer state at the EOT token, LayerNormed and projected.

        Because the tower is causal, a state never depends on later positions, so the
        columns after the longest caption of the batch (padding only) are not computed: the
        result is the same as running all ``context_length`` positions. The trim needs the
        longest length on the host, so it is done only on CPU tensors outside ``torch.compile``:
        on an accelerator (or in a compiled graph) every position is computed, and a training
        step never waits on a device->host copy."""
        if text.shape[1] > self.context_length:
            raise ValueError(f"text has {text.shape[1]} tokens > context {self.context_length}")
        eot = (text != PAD_TOKEN_ID).sum(dim=1).clamp(min=1) - 1  # (B,) EOT positions
        n = text.shape[1]
        if text.device.type == "cpu" and not torch.compiler.is_compiling():
            n = int(eot.max()) + 1  # a host read of host memory: no sync, skips padding columns
        x = self.token_embedding(text[:, :n]) + self.positional_embedding[:n]  # (B, n, C)
        x = self.ln_final(self.transformer(x))
        x = x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection  # (B, D)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, images: torch.Tensor, text: torch.Tensor):
        return self.encode_image(images), self.encode_text(text), self.logit_scale.exp()

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Clip ``logit_scale`` to [0, log(100)]; call after every optimizer step."""
        self.logit_scale.clamp_(0, LOGIT_SCALE_MAX)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
