"""open_clip compatibility against a stored fixture: ``fixtures/openclip_tiny.pt`` holds an
open_clip 3.3.0 model of our ``tiny`` config (state dict) and open_clip's outputs on a fixed
batch; ``fixtures/make_openclip_fixture.py`` regenerates it in a separate venv with
open-clip-torch (see its docstring). Our CLIP must load the state dict with ``strict=True`` and
give the same features, logit scale and ClipLoss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pretrain.factory import create_model, get_model_config
from pretrain.loss import ClipLoss

FIXTURE = Path(__file__).parent / "fixtures" / "openclip_tiny.pt"


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(FIXTURE, map_location="cpu", weights_only=True)


def test_fixture_is_our_tiny_config(reference):
    assert reference["config"] == get_model_config("tiny")
    assert reference["open_clip_version"] == "3.3.0"


def test_open_clip_state_dict_loads_strictly_and_gives_the_same_outputs(reference):
    model = create_model("tiny").eval()
    missing_unexpected = model.load_state_dict(reference["state_dict"], strict=True)
    assert not missing_unexpected.missing_keys and not missing_unexpected.unexpected_keys
    with torch.no_grad():
        image, text, scale = model(reference["images"], reference["texts"])
    torch.testing.assert_close(image, reference["image_features"], rtol=0, atol=1e-5)
    torch.testing.assert_close(text, reference["text_features"], rtol=0, atol=1e-5)
    torch.testing.assert_close(scale, reference["logit_scale"])
    torch.testing.assert_close(ClipLoss()(image, text, scale), reference["clip_loss"], rtol=0, atol=1e-5)


def test_a_changed_weight_changes_the_features(reference):
    # the comparison above can fail: a permuted projection moves the image features
    state = dict(reference["state_dict"])
    state["visual.proj"] = state["visual.proj"].roll(1, dims=1)  # output dims shifted by one
    model = create_model("tiny").eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        image = model.encode_image(reference["images"])
    assert (image - reference["image_features"]).abs().max() > 1e-3
