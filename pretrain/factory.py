"""Registry of named CLIP architectures: every ``model_configs/<name>.json`` is a model name
(open_clip's layout and names, so ``ViT-B-32`` here has exactly open_clip's shapes)."""

from __future__ import annotations

import json
from pathlib import Path

from pretrain.model import CLIP, CLIPConfig

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"


def list_models() -> list[str]:
    """Names of the registered architectures, sorted."""
    return sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))


def get_model_config(name: str) -> dict:
    """The JSON config of a registered model name; ``KeyError`` naming the known ones."""
    path = MODEL_CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    return json.loads(path.read_text())


def create_model(model: str | dict | CLIPConfig) -> CLIP:
    """A freshly initialised CLIP from a registered name, a config dict or a ``CLIPConfig``."""
    if isinstance(model, str):
        model = get_model_config(model)
    if isinstance(model, dict):
        model = CLIPConfig.from_dict(model)
    return CLIP(model)
