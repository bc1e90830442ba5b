"""Zero-shot math against a direct computation, retrieval recall, the real eval sets, and the
evaluate entry point on a checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipelines import evaluate as evaluate_job
from pretrain.checkpoint import save_checkpoint
from pretrain.evalsets import FASHION_MNIST_CAPTIONS, load_digits, load_fashion_mnist, load_mnist_csv
from pretrain.factory import create_model
from pretrain.train import TrainConfig
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
    assert m["chance"] == pytest.approx({"top1": 1 / 3, "top2": 2 / 3, "mean_per_class_recall": 1 / 3})


def test_retrieval_recall_at_k():
    torch.manual_seed(0)
    text = F.normalize(torch.randn(20, 16), dim=-1)
    same = retrieval_metrics(text.clone(), text)
    assert same["i2t"] == same["t2i"] == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0}
    assert same["chance"] == {"R@1": 1 / 20, "R@5": 5 / 20, "R@10": 10 / 20} and same["n"] == 20
    shuffled = retrieval_metrics(text[torch.roll(torch.arange(20), 1)], text)
    assert shuffled["i2t"]["R@1"] == 0.0 and shuffled["t2i"]["R@10"] < 1.0
    # a collapsed model (every feature equal) ranks nothing: ties count against the positive
    collapsed = retrieval_metrics(torch.ones(20, 16), torch.ones(20, 16))
    assert collapsed["i2t"]["R@10"] == collapsed["t2i"]["R@10"] == 0.0
    # direction matters: image 0 finds its caption first, caption 0 finds image 1 first
    images = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    captions = torch.tensor([[0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    r = retrieval_metrics(images, captions, ks=(1,))
    assert r["i2t"]["R@1"] == pytest.approx(1.0) and r["t2i"]["R@1"] == pytest.approx(2 / 3)


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
    assert result["retrieval"]["n"] == 50 and 0 <= result["retrieval"]["t2i"]["R@10"] <= 1
    assert result["chance"]["top1"] == 0.1 and result["kind"].startswith("zero-shot transfer")


@pytest.fixture(scope="module")
def heldout_openclipart(sample, tmp_path_factory):
    """Held-out shards as curation writes them, of real sample-pool images: 6 openclipart
    categories (5, 5, 4, 3, 2, 1 images), an 'unsorted' one and 3 emoji."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from curation.images.shards import ShardConfig, write_shards
    from storage.layout import RunLayout

    pool = pq.read_table(sample["sample_pool"]).to_pandas()
    folder = pool.path.str.split("/").str[1]
    picks = []
    for category, n in (("animals", 5), ("food", 5), ("people", 4), ("tools", 3), ("plants", 2),
                        ("office", 1), ("unsorted", 1)):
        picks += pool[(pool.source == "openclipart") & (folder == category)].head(n).index.tolist()
    picks += pool[pool.source == "emoji"].head(3).index.tolist()
    rows = pool.loc[picks]

    def jpg(path):
        buf = io.BytesIO()
        Image.open(f"{sample['sample_images_dir']}/{path}").convert("RGB").resize((64, 64)).save(buf, "JPEG")
        return buf.getvalue()

    n = len(rows)
    table = pa.table({"uid": rows.uid.tolist(), "url": rows.url.tolist(), "text": rows.text.tolist(),
                      "query_ids": pa.array([[1]] * n, pa.list_(pa.int32())), "source": rows.source.tolist(),
                      "jpg": [jpg(p) for p in rows.path], "width": [64] * n, "height": [64] * n,
                      "original_width": [64] * n, "original_height": [64] * n})
    run = tmp_path_factory.mktemp("run")
    write_shards([table], RunLayout(str(run)), ShardConfig(shard_size=8), split="heldout")
    return run / "curation" / "heldout"


def test_openclipart_heldout_set_labels_by_category(heldout_openclipart, sample):
    from pretrain.evalsets import load_openclipart_heldout

    data = load_openclipart_heldout(str(heldout_openclipart), sample["sample_pool"], min_per_class=3)
    assert data.classnames == ["animal", "food", "people", "tool"]
    assert np.bincount(data.labels).tolist() == [5, 5, 4, 3] and len(data.pictures) == 17
    assert data.skipped == {"not_openclipart": 3, "excluded_category": 1, "small_class": 3}
    assert data.pil(0).mode == "RGB"
    with pytest.raises(ValueError, match="fewer than 2"):
        load_openclipart_heldout(str(heldout_openclipart), sample["sample_pool"], min_per_class=6)


def test_evaluate_in_domain_zero_shot_and_heldout_retrieval(heldout_openclipart, tokenizer, tiny_shards, tmp_path):
    model = create_model("tiny")
    cfg = TrainConfig(train_data=tiny_shards, tokenizer_json=tokenizer.to_str(), out_dir=str(tmp_path))
    ckpt = save_checkpoint(tmp_path / "ckpt", model, torch.optim.AdamW(model.parameters()), 3, cfg)
    out = tmp_path / "eval" / "openclipart.json"
    result = evaluate_job.run(["--checkpoint", str(ckpt), "--dataset", "openclipart", "--eval-shards",
                               str(heldout_openclipart), "--min-per-class", "3", "--retrieval-shards",
                               str(heldout_openclipart), "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["n"] == 17 and result["classes"] == ["animal", "food", "people", "tool"]
    assert result["chance"] == {"top1": 0.25, "top4": 1.0, "mean_per_class_recall": 0.25}
    assert result["kind"].startswith("in-domain") and result["templates"][0] == "a clipart of {}."
    retrieval = result["retrieval"]
    assert retrieval["n"] == 24 and retrieval["chance"]["R@5"] == pytest.approx(5 / 24)
    assert set(retrieval["i2t"]) == set(retrieval["t2i"]) == {"R@1", "R@5", "R@10"}
    with pytest.raises(SystemExit):  # the in-domain set needs the held-out shards
        evaluate_job.parse_args(["--checkpoint", str(ckpt), "--dataset", "openclipart", "--out", str(out)])
