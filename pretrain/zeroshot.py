"""Zero-shot classification (CLIP §3.1.4) and image<->text retrieval metrics.

Classifier: for each class, embed every template filled with the class name, L2-normalise
each, average, L2-normalise again (prompt ensembling); an image is assigned the class of
highest cosine similarity. Pure torch over feature tensors, plus helpers that run a model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

FASHION_MNIST_CLASSES = (
    "t-shirt", "trousers", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
# A subset of CLIP's ImageNet prompt templates (CLIP did not evaluate Fashion-MNIST).
FASHION_MNIST_TEMPLATES = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of the {}.",
    "a pixelated photo of the {}.",
    "a close-up photo of a {}.",
    "a photo of the small {}.",
)
# CLIP's MNIST prompt (notebooks/Prompt_Engineering_for_ImageNet.ipynb / data/prompts.md).
MNIST_TEMPLATES = ('a photo of the number: "{}".',)

# Prompts for clipart categories, in the spirit of CLIP's ImageNet templates; none is a caption
# of the training data (those are the artists' titles and keywords).
OPENCLIPART_TEMPLATES = (
    "a clipart of {}.",
    "an illustration of {}.",
    "a drawing of {}.",
    "a picture of {}.",
    "clip art: {}.",
    "{}",
)
TEMPLATES = {"fashion-mnist": FASHION_MNIST_TEMPLATES, "mnist": MNIST_TEMPLATES, "digits": MNIST_TEMPLATES,
             "openclipart": OPENCLIPART_TEMPLATES}


def ensemble_classifier(template_features: torch.Tensor) -> torch.Tensor:
    """(C, T, D) text features of T templates per class -> (D, C) classifier weights:
    L2-normalise each, mean over templates, L2-normalise."""
    class_means = F.normalize(template_features, dim=-1).mean(dim=1)  # (C, D)
    return F.normalize(class_means, dim=-1).T  # (D, C)


@torch.no_grad()
def build_classifier(model, tokenizer, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """(D, C) zero-shot weights of ``classnames`` with ``templates`` ('... {} ...')."""
    prompts = [t.format(c) for c in classnames for t in templates]
    features = model.encode_text(tokenizer(prompts), normalize=True)  # (C*T, D)
    return ensemble_classifier(features.view(len(classnames), len(templates), -1))


def classify(image_features: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """(N, D) L2-normalised image features, (D, C) weights -> (N, C) cosine logits."""
    return F.normalize(image_features, dim=-1) @ classifier


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, k: int = 5) -> dict:
    """top1, top``k`` accuracy, mean per-class recall (over classes present), n, and ``chance``:
    each metric's expected value for a classifier that guesses uniformly among the C classes
    (1/C, k/C, 1/C)."""
    n, num_classes = logits.shape
    k = min(k, num_classes)
    topk = logits.topk(k, dim=1).indices  # (N, k)
    hit1 = topk[:, 0] == labels
    hitk = (topk == labels[:, None]).any(dim=1)
    recalls = [hit1[labels == c].float().mean().item() for c in range(num_classes) if (labels == c).any()]
    chance = {"top1": 1 / num_classes, f"top{k}": k / num_classes, "mean_per_class_recall": 1 / num_classes}
    return {"top1": hit1.float().mean().item(), f"top{k}": hitk.float().mean().item(),
            "mean_per_class_recall": float(np.mean(recalls)), "chance": chance, "n": int(n)}


def retrieval_metrics(image_features: torch.Tensor, text_features: torch.Tensor, ks=(1, 5, 10)) -> dict:
    """Pair ``i`` of (N, D) image and text features is the positive; recall@k of image->text
    (``i2t``) and text->image (``t2i``): the share of queries whose positive ranks among the top
    k of the N candidates (ties count against it), and ``chance`` = k/N, the recall@k of a
    random ranking."""
    sims = F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T  # (N, N)
    n = sims.shape[0]
    truth = torch.arange(n)
    out: dict = {}
    for direction, s in (("i2t", sims), ("t2i", sims.T)):
        # rank of the positive = number of candidates scoring at least as high, itself excluded
        rank = (s >= s[truth, truth][:, None]).sum(dim=1) - 1
        out[direction] = {f"R@{k}": (rank < k).float().mean().item() for k in ks}
    out["chance"] = {f"R@{k}": min(k, n) / n for k in ks}
    out["n"] = int(n)
    return out


@torch.no_grad()
def encode_images(model, images: Sequence, transform, batch_size: int = 256) -> torch.Tensor:
    """(N, D) normalised features of PIL ``images`` after the eval ``transform``."""
    feats = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([transform(im) for im in images[start : start + batch_size]])
        feats.append(model.encode_image(batch, normalize=True))
    return torch.cat(feats)


@torch.no_grad()
def zero_shot_eval(model, tokenizer, images: Sequence, labels, classnames, templates, image_size: int,
                   batch_size: int = 256) -> dict:
    """Zero-shot metrics of ``model`` on PIL ``images`` with integer ``labels``."""
    from pretrain.transform import ImageTransform

    model.eval()
    classifier = build_classifier(model, tokenizer, classnames, templates)
    feats = encode_images(model, images, ImageTransform(image_size, train=False), batch_size)
    return classification_metrics(classify(feats, classifier), torch.as_tensor(labels))
