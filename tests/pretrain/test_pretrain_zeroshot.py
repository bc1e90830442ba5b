"""Zero-shot math against a direct computation, retrieval recall, the real eval sets, and the
evaluate entry point on a checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipelines import evaluate as evaluate_job
from pretrain.evalsets import FASHION_MNIST_CAPTIONS, load_digits, load_fashion_mnist, load_mnist_csv
from pretrain.factory import create_model
from pretrain.train import TrainConfig, save_checkpoint
from pretrain.zeroshot import (
    FASHION_MNIST_TEMPLATES,
    build_classifier,
    classification_metrics,
    classify,
    ensemble_classifier,
    retrieval_metrics,
)


def test_ensemble_classifier_equals_direct_computation():
    torch.manual_seed(0)
    feats = torch.randn(3, 4, 8)  # 3 classes, 4 templates
    weights = ensemble_classifier(feats)
    for c in range(3):
        direct = torch.stack([f / f.norm() for f in feats[c]]).mean(dim=0)
        torch.testing.assert_close(weights[:, c], direct / direct.norm())
    images = torch.randn(5, 8)
    logits = classify(images, weights)
    direct_cos = torch.tensor([[float(F.cosine_similarity(i, weights[:, c], dim=0)) for c in range(3)]
                               for i in images])
    torch.testing.assert_close(logits, direct_cos)


def test_build_classifier_uses_every_template(tokenizer):
    model = create_model("tiny").eval()
    classes, templates = ["dress", "bag"], ["a photo of a {}.", "the {}"]
    weights = build_classifier(model, tokenizer, classes, templates)
    with torch.no_grad():
        direct = [F.normalize(model.encode_text(tokenizer([t.format(c) for t in templates])).mean(0), dim=0)
                  for c in classes]
    torch.testing.assert_close(weights, torch.stack(direct, dim=1), rtol=1e-5, atol=1e-6)


def test_classification_metrics():
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.1, 0.2, 0.7]])
    labels = torch.tensor([0, 1, 1, 2])
    m = classification_metrics(logits, labels, k=2)
    assert m["top1"] == pytest.approx(0.75) and m["top2"] == pytest.approx(1.0) and m["n"] == 4
    assert m["mean_per_class_recall"] == pytest.approx((1 + 0.5 + 1) / 3)


def test_retrieval_recall_at_k():
    torch.manual_seed(0)
    text = F.normalize(torch.randn(20, 16), dim=-1)
    assert retrieval_metrics(text.clone(), text)["image_to_text_R@1"] == 1.0
    shuffled = retrieval_metrics(text[torch.roll(torch.arange(20), 1)], text)
    assert shuffled["image_to_text_R@1"] == 0.0 and shuffled["text_to_image_R@10"] < 1.0


def test_real_eval_sets(sample):
    fashion = load_fashion_mnist(sample["fashion_mnist_dir"], "test")
    assert fashion.images.shape == (10_000, 28, 28) and np.bincount(fashion.labels).tolist() == [1000] * 10
    mnist = load_mnist_csv(sample["mnist_5k"])
    assert mnist.images.shape == (5000, 28, 28) and np.bincount(mnist.labels).tolist() == [500] * 10
    assert mnist.pil(0).size == (28, 28)
    digits = load_digits()  # scikit-learn's 1,797 real 8x8 digits, scaled to 0..255
    assert digits.images.shape == (1797, 8, 8) and digits.images.max() == 255
    assert digits.classnames == [str(d) for d in range(10)] and len(np.bincount(digits.labels)) == 10
    # the learning check's training captions never use an evaluation template
    eval_wordings = {t.format("X").rstrip(".") for t in FASHION_MNIST_TEMPLATES}
    assert not eval_wordings & {c.format("X") for c in FASHION_MNIST_CAPTIONS}


def test_bad_eval_file_is_named(tmp_path):
    bad = tmp_path / "mnist.csv"
    bad.write_text("1,2,3\n")
    with pytest.raises(ValueError, match="mnist.csv"):
        load_mnist_csv(bad)


def test_evaluate_entry_point(tokenizer, tiny_shards, tmp_path):
    model = create_model("tiny")
    optimizer = torch.optim.AdamW(model.parameters())
    cfg = TrainConfig(train_data=tiny_shards, tokenizer_json=tokenizer.to_str(), out_dir=str(tmp_path))
    ckpt = save_checkpoint(tmp_path / "ckpt", model, optimizer, 7, cfg)
    out = tmp_path / "eval.json"
    result = evaluate_job.run(["--checkpoint", str(ckpt), "--dataset", "mnist", "--limit", "200",
                               "--retrieval-shards", tiny_shards, "--retrieval-limit", "50", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written == result and result["n"] == 200 and result["step"] == 7
    assert 0 <= result["top1"] <= result["top5"] <= 1 and 0 <= result["mean_per_class_recall"] <= 1
    assert result["templates"] == ['a photo of the number: "{}".']
    assert result["retrieval"]["n"] == 50 and 0 <= result["retrieval"]["text_to_image_R@10"] <= 1
