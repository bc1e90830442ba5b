"""Zero-shot evaluation of a pretrained CLIP checkpoint, and retrieval on held-out pairs: the
library behind ``pipelines/evaluate.py`` (whose flags are :class:`EvalConfig`'s fields).

Results: ``top1``, ``top5``, ``mean_per_class_recall``, ``chance`` (each metric for uniform
guessing), ``n`` (+ ``dataset``, ``kind``, ``classes``, ``templates``, ``checkpoint``, ``step``);
with ``retrieval_shards`` ``retrieval``: ``{i2t: {R@1, R@5, R@10}, t2i: {...}, chance: {...}, n}``.
The eval sets are read from the data directory's manifest (:mod:`storage.datadir`). Importing this
module loads no model code (the DAGs read :class:`EvalConfig`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from storage.datadir import data_manifest
from storage.files import atomic_write, is_local

IN_DOMAIN = ("openclipart",)  # labelled held-out pairs of the training data's own domain
TRANSFER = ("fashion-mnist", "mnist", "digits")  # zero-shot transfer to other data


@dataclass
class EvalConfig:
    """One evaluation of a checkpoint (``pipelines/evaluate.py``'s flags)."""

    checkpoint: str  # checkpoint file (checkpoint.pt, tokenizer.json beside it), checkpoint directory or pretrain run dir, local or URI
    out: str  # JSON file to write (local path or URI)
    dataset: str = ""  # openclipart | fashion-mnist | mnist | digits ('' = no zero-shot classification)
    limit: int = 0  # evaluate the first N images only (0 = all)
    eval_shards: str = ""  # held-out shards (dir or pattern) the in-domain sets (openclipart) read
    min_per_class: int = 5  # in-domain sets: classes with fewer held-out images are left out
    retrieval_shards: str = ""  # WebDataset shards of held-out pairs for retrieval ('' = none)
    retrieval_limit: int = 1000  # pairs used for retrieval
    batch_size: int = 256  # images per forward pass
    threads: int = 0  # torch CPU threads (0 = torch's default)
    data_dir: str = ""  # data directory with manifest.json, where --dataset's sets are ('' = $OPENWIT_DATA, else data/sample)


def evaluate(cfg: EvalConfig) -> dict:
    """Run the evaluations of ``cfg``; return the result dict (also written to ``cfg.out``)."""
    import torch

    from pretrain.checkpoint import load_model, resolve_checkpoint
    from pretrain.evalsets import load_eval_set, load_openclipart_heldout, read_shard_pairs
    from pretrain.transform import ImageTransform
    from pretrain.zeroshot import TEMPLATES, encode_images, retrieval_metrics, zero_shot_eval

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    checkpoint = resolve_checkpoint(cfg.checkpoint)
    model, tokenizer, state = load_model(checkpoint)
    size = model.visual.image_size
    result: dict = {"checkpoint": str(checkpoint) if is_local(cfg.checkpoint) else cfg.checkpoint,
                    "step": int(state["step"])}
    if cfg.dataset:
        manifest = data_manifest(cfg.data_dir or None)
        if cfg.dataset == "openclipart":
            data = load_openclipart_heldout(cfg.eval_shards, manifest["sample_pool"], cfg.min_per_class)
            result.update(kind="in-domain zero-shot (held-out pairs)", skipped=data.skipped)
        else:
            data = load_eval_set(cfg.dataset, manifest)
            result.update(kind="zero-shot transfer (not the training data's domain)")
        n = cfg.limit or len(data.labels)
        images = [data.pil(i) for i in range(min(n, len(data.labels)))]
        templates = TEMPLATES[cfg.dataset]
        metrics = zero_shot_eval(model, tokenizer, images, data.labels[: len(images)], data.classnames,
                                 templates, size, cfg.batch_size)
        result.update(metrics, dataset=cfg.dataset, classes=list(data.classnames), templates=list(templates))
    if cfg.retrieval_shards:
        pairs = read_shard_pairs(cfg.retrieval_shards, cfg.retrieval_limit)
        captions = [p["caption"] for p in pairs]
        with torch.no_grad():
            image_features = encode_images(model, [p["image"] for p in pairs], ImageTransform(size, train=False),
                                           cfg.batch_size)
            text_features = torch.cat([model.encode_text(tokenizer(captions[i : i + cfg.batch_size]))
                                       for i in range(0, len(captions), cfg.batch_size)])
        result["retrieval"] = {**retrieval_metrics(image_features, text_features), "kind": "held-out retrieval"}
    body = json.dumps(result, indent=2).encode()
    atomic_write(cfg.out, lambda f: f.write(body))  # a local path or a URI
    return result


def summary_lines(result: dict) -> list[str]:
    """Human-readable results, each figure with its chance level beside it."""
    lines = []
    if "top1" in result:
        chance = result["chance"]
        figures = ", ".join(f"{k} {result[k]:.3f} (chance {chance[k]:.3f})" for k in chance)
        lines.append(f"{result['dataset']} [{result['kind']}], {len(result['classes'])} classes, "
                     f"n={result['n']}: {figures}")
    if "retrieval" in result:
        r = result["retrieval"]
        for direction, name in (("i2t", "image->text"), ("t2i", "text->image")):
            figures = ", ".join(f"{k} {v:.3f} (chance {r['chance'][k]:.3f})" for k, v in r[direction].items())
            lines.append(f"held-out retrieval {name}, n={r['n']}: {figures}")
    return lines
