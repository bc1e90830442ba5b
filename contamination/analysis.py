"""The eval-overlap (contamination) analysis, CLIP §5: which eval images have near-duplicates in
the training shards, and does the model do better on them? (``pipelines/contamination_report.py``
parses the flags into a :class:`ReportConfig` and calls :func:`report`.)

Steps: (1) the duplicate detector: pHash, or the learned copy detector (``contamination.copydetect``),
loaded from ``--detector-weights`` or trained here on the training images (plus a sample of each
eval set's images: instance discrimination only, no eval/train pairing) and saved as
``OUT/copy_detector.pt``; (2) training-image embeddings, streamed from the shards and cached per
shard in ``OUT/cache/``; (3) per dataset, the nearest training image of every eval image
(``contamination.overlap.nearest``); (4) the threshold: planted copies of ``--planted`` eval images
are added to the gallery, precision/recall per threshold, highest recall at precision >=
``--min-precision`` (the copies go through curation's own resize, ``curation.images.check``, when
the training images were resized to one square side: ``--train-image-size``); (5) zero-shot
correctness per image (``pretrain.zeroshot``); (6) the Overlap/Clean/All statistics, Bonferroni
across datasets; (7) ``results.json``, ``report.md``, ``report.html`` + PNGs
(``contamination.report``); ``details.json`` lists every Overlap image (eval id, score, matched
training shard and key, zero-shot correct).
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from contamination.evalsources import BUILTIN, EvalImages, load_eval_source
from contamination.overlap import (
    SearchConfig,
    bonferroni,
    choose_threshold,
    nearest,
    precision_recall,
    split_statistics,
)
from contamination.report import write_report
from curation.images.phash import nearest_binary, phash_codes
from storage.datadir import data_manifest
from storage.layout import ReportLayout, expand_shards

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
TRAIN_SIDE = "unborder"  # how training images are prepared before embedding (part of the cache key)


@dataclass(frozen=True)
class ReportConfig:
    """Everything one contamination report needs."""

    train_data: str  # training shards: a shard directory, brace pattern, glob, or several joined by "::" (paths or URIs)
    checkpoint: str  # CLIP checkpoint: its .pt file (tokenizer.json beside it), its dir, or a pretrain run dir (zero-shot accuracy)
    datasets: tuple[str, ...]  # eval sets: built-in names (fashion-mnist, mnist, digits), class_name/*.jpg folders, or .tar shards
    out: str  # report directory (local path or URI)
    detector: str = "learned"  # duplicate detector: learned (copy detector) or phash
    detector_weights: str = ""  # reuse these copy-detector weights ('' = train and save one)
    detector_epochs: int = 8  # training passes when training a detector
    detector_seconds: float = 600.0  # training time limit (0 = none)
    detector_train_images: int = 4000  # training images used to train the detector (at most)
    detector_eval_images: int = 1000  # images per eval set added to the detector's training
    planted: int = 200  # eval images per dataset given a planted copy for calibration
    train_image_size: str = "auto"  # side N of the square (white-bordered) training images: planted copies get the same resize; 'auto': the side every training image has, if one; 'none': copies as made
    min_precision: float = 0.95  # threshold: highest recall with at least this precision
    eval_limit: int = 0  # first N images of each eval set (0 = all)
    top_pairs: int = 12  # matched pairs shown per dataset
    seed: int = 0  # seed of planting and detector training
    data_dir: str = ""  # data dir of the built-in eval sets ('' = $OPENWIT_DATA, else <repo>/data/sample)


def shard_images(path: str) -> tuple[list[str], list[Image.Image], int]:
    """(keys, RGB images, undecodable count) of one WebDataset shard (a path or URI)."""
    import webdataset as wds

    from pretrain.data import shard_samples

    keys, images, bad = [], [], 0
    for sample in wds.DataPipeline(wds.SimpleShardList(path), shard_samples()):
        key = next((k for k in IMAGE_KEYS if k in sample), None)
        try:
            image = Image.open(io.BytesIO(sample[key])).convert("RGB") if key else None
        except OSError:
            image = None
        if image is None:
            bad += 1
            continue
        keys.append(sample["__key__"])
        images.append(image)
    return keys, images, bad


class Detector:
    """One interface over both backends. ``embed(images)``: the training side, float rows
    (learned: each image without curation's white border bars, ``copydetect.unborder``) or uint8
    codes (pHash); ``embed_queries(images)``: the eval side, for the learned
    detector (N, views, D) embeddings of each image's ``query_crops``, for pHash its codes;
    ``nearest(queries, gallery)`` -> (similarity, index) of each eval image's best match, the
    best over its views."""

    def __init__(self, kind: str, model=None):
        self.kind, self.model = kind, model
        self.key = "phash" if model is None else f"learned-{_weights_digest(model)}-{TRAIN_SIDE}"

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        if self.model is None:
            return phash_codes(images)
        from contamination.copydetect import embed_images, to_rgb_array, unborder

        return embed_images(self.model, [unborder(to_rgb_array(im)) for im in images])

    def embed_queries(self, images: list[Image.Image]) -> np.ndarray:
        if self.model is None:
            return phash_codes(images)
        from contamination.copydetect import embed_queries

        return embed_queries(self.model, images)

    def nearest(self, queries: np.ndarray, gallery) -> tuple[np.ndarray, np.ndarray]:
        if self.model is None:
            gallery = np.concatenate(list(gallery)) if not isinstance(gallery, np.ndarray) else gallery
            return nearest_binary(queries, gallery)
        n, views, dim = queries.shape
        score, idx = nearest(queries.reshape(n * views, dim), gallery, SearchConfig())
        score, idx = score.reshape(n, views), idx.reshape(n, views)
        best = score.argmax(1)
        return score[np.arange(n), best], idx[np.arange(n), best]


def _weights_digest(model) -> str:
    h = hashlib.sha1()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().numpy().tobytes())
    return h.hexdigest()[:12]


def build_detector(cfg: ReportConfig, shards: list[str], evals: list[EvalImages], log) -> tuple[Detector, dict]:
    """The detector of ``cfg``: pHash, given weights, or a newly trained one (saved in ``out``)."""
    if cfg.detector == "phash":
        return Detector("phash"), {"detector": "phash"}
    from contamination.copydetect import (
        CopyDetectorConfig,
        load_copy_detector,
        save_copy_detector,
        to_rgb_array,
        train_copy_detector,
        unborder,
    )

    if cfg.detector_weights:
        return Detector("learned", load_copy_detector(cfg.detector_weights)), {"detector": "learned",
                                                                               "weights": cfg.detector_weights}
    images: list[np.ndarray] = []
    for path in shards:
        images += [unborder(to_rgb_array(im)) for im in shard_images(path)[1]]  # as the search sees them
        if len(images) >= cfg.detector_train_images:
            break
    images = images[: cfg.detector_train_images]
    n_train = len(images)
    for data in evals:
        pick = np.random.default_rng(cfg.seed).permutation(len(data.labels))[: cfg.detector_eval_images]
        images += [to_rgb_array(data.pil(int(i))) for i in pick]
    dcfg = CopyDetectorConfig(epochs=cfg.detector_epochs, max_seconds=cfg.detector_seconds, seed=cfg.seed)
    model, summary = train_copy_detector(images, dcfg, log=log)
    weights = ReportLayout(cfg.out).detector
    save_copy_detector(model, weights, summary)
    return Detector("learned", model), {"detector": "learned", "weights": str(weights), "trained": summary,
                                       "train_images": n_train, "eval_images": len(images) - n_train}


def train_embeddings(detector: Detector, shards: list[str], layout: ReportLayout) -> tuple[list[np.ndarray], list[tuple[str, str]], int, np.ndarray]:
    """Per-shard embeddings (cached in the report's ``cache/<detector key>/``, named by the
    shard's URI and version, so a rewritten shard is embedded again), (shard, key) of each row,
    the undecodable count and each image's (width, height)."""
    import fsspec

    chunks, where, bad, sizes = [], [], 0, [np.zeros((0, 2), np.int64)]
    for path in shards:
        fs, _ = fsspec.core.url_to_fs(path)  # the shard's location and version (mtime / ETag) name its cache
        where_from = (path if "://" in path else os.path.abspath(path)) + str(fs.ukey(path))
        name = f"{Path(path).stem}-{hashlib.sha1(where_from.encode()).hexdigest()[:12]}.npz"
        file = layout.cache(f"{detector.key}/{name}")
        z = None
        if layout.exists(file):
            with layout.open(file) as handle, np.load(handle) as f:  # closed: thousands of shards must not stay open
                z = {k: f[k] for k in f.files} if "sizes" in f.files else None  # older caches lack sizes: redo
        if z is None:
            keys, images, n_bad = shard_images(path)
            z = {"emb": detector.embed(images), "keys": np.asarray(keys, dtype=str), "bad": np.asarray(n_bad),
                 "sizes": np.asarray([im.size for im in images], np.int64).reshape(-1, 2)}
            layout.write_bytes(file, _npz_bytes(z))
        chunks.append(z["emb"])
        where += [(path, str(k)) for k in z["keys"]]
        bad += int(z["bad"])
        sizes.append(z["sizes"])
    return chunks, where, bad, np.concatenate(sizes)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def curated_side(setting: str, sizes: np.ndarray) -> int | None:
    """The square side curation resized the training images to (``--train-image-size``): N as
    given, None for 'none'; for 'auto' the side when at least 99% of the images are that same
    square (``build_wit.py``'s border resize writes every image at one side), else None."""
    if setting == "none":
        return None
    if setting != "auto":
        try:
            return int(setting)
        except ValueError:
            raise ValueError(f"--train-image-size must be a side in pixels, 'auto' or 'none', got {setting!r}") from None
    if len(sizes) == 0:
        return None
    sides, counts = np.unique(sizes[sizes[:, 0] == sizes[:, 1], 0], return_counts=True)
    return int(sides[counts.argmax()]) if len(counts) and counts.max() >= 0.99 * len(sizes) else None


def as_curated(image: np.ndarray, side: int) -> Image.Image:
    """RGB ``image`` as curation stores it at ``side``: ``curation.images.check.check_image``
    (border resize into a white square, JPEG q95) on its PNG bytes."""
    from curation.images.check import ImageCheckConfig, check_image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    kept = check_image(buf.getvalue(), ImageCheckConfig(image_size=side))
    return Image.open(io.BytesIO(kept["jpg"])).convert("RGB")


def calibrate(detector: Detector, data: EvalImages, eval_emb: np.ndarray, train_best: np.ndarray,
              cfg: ReportConfig, side: int | None = None) -> tuple[dict, dict]:
    """Plant copies (``contamination.copydetect.make_copy``) of ``planted`` eval images, resized as
    curation resized the training images when ``side`` is given (:func:`as_curated`); positives =
    those images, negatives = as many other eval images; nearest over training ∪ copies.
    Returns (curve, chosen threshold)."""
    from contamination.copydetect import copy_source, make_copy

    rng = np.random.default_rng(cfg.seed + 1)
    n = min(cfg.planted, len(data.labels) // 2)
    order = rng.permutation(len(data.labels))
    pos, neg = order[:n], order[n:2 * n]
    copies = [make_copy(copy_source(np.asarray(data.pil(int(i)).convert("RGB"))), rng) for i in pos]
    copies = [as_curated(c, side) if side else Image.fromarray(c) for c in copies]
    copy_emb = detector.embed(copies)
    queries = eval_emb[np.concatenate([pos, neg])]
    c_score, c_idx = detector.nearest(queries, copy_emb)
    score = np.maximum(c_score, train_best[np.concatenate([pos, neg])])
    own = (c_idx[:n] == np.arange(n)) & (c_score[:n] >= train_best[pos])
    curve = precision_recall(score[:n], own, score[n:])
    return curve, choose_threshold(curve, cfg.min_precision)


def zero_shot_correct(checkpoint: str, data: EvalImages) -> np.ndarray:
    """Per-image top-1 correctness of the CLIP checkpoint (prompt-ensembled zero-shot)."""
    import torch

    from pretrain.checkpoint import load_model, resolve_checkpoint
    from pretrain.transform import ImageTransform
    from pretrain.zeroshot import build_classifier, classify, encode_images

    model, tokenizer, _ = load_model(resolve_checkpoint(checkpoint))
    with torch.no_grad():
        classifier = build_classifier(model, tokenizer, data.classnames, data.templates)
        feats = encode_images(model, data.images, ImageTransform(model.visual.image_size, train=False))
        return (classify(feats, classifier).argmax(1).numpy() == data.labels)


def top_pairs(data: EvalImages, score: np.ndarray, idx: np.ndarray, where: list, k: int) -> list[dict]:
    """The ``k`` best-scoring (eval, train) pairs, with the train images read back from their shards."""
    best = np.argsort(-score)[:k]
    wanted: dict[str, set] = {}
    for i in best:
        if idx[i] >= 0:
            wanted.setdefault(where[idx[i]][0], set()).add(where[idx[i]][1])
    found = {}
    for shard, keys in wanted.items():
        shard_keys, images, _ = shard_images(shard)
        found.update({(shard, key): im for key, im in zip(shard_keys, images) if key in keys})
    return [{"eval_image": data.pil(int(i)), "eval_id": data.image_ids()[int(i)], "score": float(score[i]),
             "train_key": where[idx[i]][1] if idx[i] >= 0 else "-",
             "train_image": found.get(tuple(where[idx[i]])) if idx[i] >= 0 else None} for i in best]


def report(cfg: ReportConfig, log=print) -> dict:
    """Run the whole analysis (module doc); return the per-dataset results written to results.json."""
    started, layout = time.time(), ReportLayout(cfg.out)
    shards = expand_shards(cfg.train_data)
    needs_manifest = any(d in BUILTIN for d in cfg.datasets)
    manifest = data_manifest(cfg.data_dir or None) if needs_manifest else None
    evals = [load_eval_source(d, manifest, cfg.eval_limit) for d in cfg.datasets]
    detector, detector_meta = build_detector(cfg, shards, evals, log)
    chunks, where, bad, sizes = train_embeddings(detector, shards, layout)
    side = curated_side(cfg.train_image_size, sizes)
    log(f"[contamination] {len(where)} training images embedded ({bad} undecodable) with {detector.key}; "
        f"planted copies resized as curation did: {f'{side} px white-bordered squares' if side else 'no'}")
    results, curves, pairs, p_values, flagged = {}, {}, {}, {}, {}
    for data in evals:
        eval_emb = detector.embed_queries(data.images)
        score, idx = detector.nearest(eval_emb, iter(chunks))
        curve, chosen = calibrate(detector, data, eval_emb, score, cfg, side)
        correct, overlap = zero_shot_correct(cfg.checkpoint, data), score >= chosen["threshold"]
        stats = split_statistics(correct, overlap)
        ids = data.image_ids()
        flagged[data.name] = [{"eval_id": ids[i], "score": round(float(score[i]), 5), "train_shard": where[idx[i]][0],
                               "train_key": where[idx[i]][1], "zero_shot_correct": bool(correct[i])}
                              for i in np.flatnonzero(overlap)]
        results[data.name] = {**stats, **{k: chosen[k] for k in ("threshold", "precision", "recall")}}
        curves[data.name] = (curve, chosen)
        pairs[data.name] = top_pairs(data, score, idx, where, cfg.top_pairs)
        p_values[data.name] = stats["p_value"]
        log(f"[contamination] {data.name}: overlap {stats['n_overlap']}/{stats['n_all']} at threshold "
            f"{chosen['threshold']:.3f} (P {chosen['precision']:.2f} R {chosen['recall']:.2f})")
    meta = {"detector": detector.key, **detector_meta, "train_data": cfg.train_data, "train_images": len(where),
            "train_undecodable": bad, "planted_copy_side": side, "checkpoint": cfg.checkpoint,
            "min_precision": cfg.min_precision,
            "config": asdict(cfg), "seconds": round(time.time() - started, 1),
            "threshold_met": {n: c[1]["met"] for n, c in curves.items()}, "overlap_images": flagged}
    files = write_report(cfg.out, results, bonferroni(p_values), curves, pairs, meta)
    log(f"[contamination] report: {files['report_html']} (results: {files['results']})")
    return results
