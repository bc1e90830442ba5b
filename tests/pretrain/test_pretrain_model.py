"""The CLIP model: registry shapes (open_clip's parameter counts), EOT pooling, causal-trim
equivalence, logit_scale, gradient checkpointing, and that a tiny model can overfit."""

from __future__ import annotations

import math

import pytest
import torch

from pretrain.factory import create_model, get_model_config, list_models
from pretrain.loss import ClipLoss
from pretrain.model import LOGIT_SCALE_MAX, count_parameters


@pytest.mark.parametrize("name,expected", [("ViT-S-32", 63_085_825), ("ViT-B-32", 151_277_313)])
def test_parameter_counts_match_open_clip(name, expected):
    assert count_parameters(create_model(name)) == expected


def test_registry_lists_configs_and_names_unknown():
    assert {"tiny", "ViT-S-32", "ViT-B-32"} <= set(list_models())
    with pytest.raises(KeyError, match="ViT-B-32"):
        get_model_config("ViT-Q-99")


def test_forward_shapes_norms_and_init_scale():
    model = create_model("tiny")
    texts = torch.zeros(3, 77, dtype=torch.long)
    texts[:, :4] = torch.tensor([1, 50, 60, 2])
    image, text, scale = model(torch.randn(3, 3, 32, 32), texts)
    assert image.shape == text.shape == (3, 64)
    torch.testing.assert_close(image.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(3))
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-6)


def test_text_feature_is_eot_state_and_trimming_changes_nothing():
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    texts = torch.zeros(2, 77, dtype=torch.long)
    texts[0, :5] = torch.tensor([1, 10, 11, 12, 2])
    texts[1, :3] = torch.tensor([1, 13, 2])
    with torch.no_grad():
        trimmed = model.encode_text(texts, normalize=False)
        # the reference: the full 77 positions, feature at the EOT position
        x = model.token_embedding(texts) + model.positional_embedding
        x = model.ln_final(model.transformer(x))
        full = torch.stack([x[0, 4], x[1, 2]]) @ model.text_projection
        # tokens after the EOT (padding) cannot change a causal model's EOT state
        texts_noise = texts.clone()
        texts_noise[1, 3:5] = 7
        texts_noise[1, 5] = 0
    torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(model.encode_text(texts_noise)[1], model.encode_text(texts)[1])


def test_logit_scale_clamped_to_log_100():
    model = create_model("tiny")
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    model.clamp_logit_scale()
    assert model.logit_scale.item() == pytest.approx(LOGIT_SCALE_MAX)
    assert math.exp(model.logit_scale.item()) == pytest.approx(100.0)


def test_grad_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    images = torch.randn(4, 3, 32, 32)
    texts = torch.randint(3, 500, (4, 77))
    texts[:, 0], texts[:, 9], texts[:, 10:] = 1, 2, 0
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(1)
        model = create_model("tiny")
        model.set_grad_checkpointing(checkpointing)
        ClipLoss()(*model(images, texts)).backward()
        grads.append(model.visual.conv1.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_overfits_a_64_pair_batch(tokenizer):
    torch.manual_seed(0)
    model = create_model("tiny")
    images = torch.randn(64, 3, 32, 32)
    texts = tokenizer([f"item {i} number {i * 7 % 64}" for i in range(64)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    loss_fn = ClipLoss()
    first = None
    for _ in range(60):
        loss = loss_fn(*model(images, texts))
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.clamp_logit_scale()
    assert first == pytest.approx(math.log(64), abs=0.3)
    assert loss.item() < 0.1 * first
    with torch.no_grad():
        image, text, _ = model(images, texts)
    assert ((image @ text.T).argmax(dim=1) == torch.arange(64)).float().mean() > 0.95


def _captions(lengths) -> torch.Tensor:
    texts = torch.zeros(len(lengths), 77, dtype=torch.long)
    for row, n in enumerate(lengths):
        texts[row, 0], texts[row, 1 : n + 1], texts[row, n + 1] = 1, 100 + row, 2
    return texts


def test_text_tower_reads_nothing_back_from_a_device():
    # on the meta device any device->host read (int(), .item()) raises: the GPU path has none
    model = create_model("tiny").to("meta")
    assert model.encode_text(_captions([3, 9]).to("meta")).shape == (2, 64)


def test_text_tower_compiles_to_one_graph_with_the_same_features():
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    texts = _captions([3, 9, 20])
    compiled = torch.compile(model.encode_text, backend="eager", fullgraph=True)  # a graph break raises
    with torch.no_grad():
        torch.testing.assert_close(compiled(texts), model.encode_text(texts), rtol=1e-5, atol=1e-5)
