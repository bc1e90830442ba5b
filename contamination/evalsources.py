"""Labelled eval sets by name or by location: the built-in sets of :mod:`pretrain.evalsets`
(``fashion-mnist``, ``mnist``, ``digits``), a folder of labelled images, or WebDataset shards.

- **Folder**: ``DIR/<class name>/*.{jpg,jpeg,png,webp,bmp}``; classes in sorted order; ``_`` in a
  folder name becomes a space in the prompt. An unreadable image is an error naming the file.
- **WebDataset**: a ``.tar`` path or brace pattern; each sample needs an image (jpg/png/...) and a
  label field ``cls`` (integer class index); class names come from ``classnames.txt`` (one per
  line, in index order) beside the first shard. A sample without image or label is an error
  naming the shard and key. Optional ``txt`` (caption) and ``json`` with ``url`` are kept
  (``captions``, ``urls``): ``build_wit.py --decontaminate`` matches them before download.

Every source gives ``name``, ``labels`` (N,), ``classnames``, ``templates`` and ``pil(i)``.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pretrain.evalsets import load_eval_set
from pretrain.zeroshot import TEMPLATES

BUILTIN = ("fashion-mnist", "mnist", "digits")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
WDS_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
GENERIC_TEMPLATES = ("a photo of a {}.", "a photo of the {}.", "an image of a {}.")


@dataclass
class EvalImages:
    """Labelled eval images held as PIL images (any size/mode)."""

    name: str  # dataset name used as the results key
    images: list[Image.Image]  # the images
    labels: np.ndarray  # (N,) int64 class index
    classnames: list[str]  # class index -> prompt name
    templates: tuple[str, ...] = field(default=GENERIC_TEMPLATES)  # zero-shot prompt templates
    ids: list[str] | None = None  # stable per-image ids (default: the index as a string)
    urls: list[str | None] | None = None  # where each image came from, when the set records it
    captions: list[str | None] | None = None  # each image's caption, when the set has one

    def pil(self, i: int) -> Image.Image:
        return self.images[i]

    def image_ids(self) -> list[str]:
        return self.ids if self.ids is not None else [str(i) for i in range(len(self.images))]


def load_image_folder(root: str | Path, name: str | None = None) -> EvalImages:
    """A ``class_name/*.jpg`` tree as an eval set (see module doc)."""
    root = Path(root)
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    images, labels, ids = [], [], []
    for label, folder in enumerate(classes):
        for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            try:
                with Image.open(path) as im:
                    images.append(im.convert("RGB"))
            except OSError as e:
                raise ValueError(f"{path}: not a readable image ({e})") from e
            labels.append(label)
            ids.append(str(path.relative_to(root)))
    if not images:
        raise ValueError(f"{root}: no labelled images (expected {root}/<class>/*.jpg)")
    return EvalImages(name or root.name, images, np.asarray(labels, np.int64),
                      [c.name.replace("_", " ") for c in classes], ids=ids)


def load_webdataset(pattern: str, name: str | None = None) -> EvalImages:
    """WebDataset shards with an image and a ``cls`` label per sample (see module doc)."""
    import webdataset as wds

    first = Path(next(iter(wds.SimpleShardList(pattern).urls)))
    names_file = first.parent / "classnames.txt"
    if not names_file.is_file():
        raise FileNotFoundError(f"{names_file}: WebDataset eval sets need classnames.txt beside the shards")
    classnames = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
    images, labels, ids, urls, captions = [], [], [], [], []
    for sample in wds.DataPipeline(wds.SimpleShardList(pattern), wds.tarfile_to_samples()):
        where = f"{sample.get('__url__')}: sample {sample.get('__key__')}"
        key = next((k for k in WDS_IMAGE_KEYS if k in sample), None)
        if key is None or "cls" not in sample:
            raise ValueError(f"{where}: needs an image ({'/'.join(WDS_IMAGE_KEYS)}) and a cls label")
        label = int(sample["cls"])
        if not 0 <= label < len(classnames):
            raise ValueError(f"{where}: label {label} outside classnames.txt's {len(classnames)} classes")
        images.append(Image.open(io.BytesIO(sample[key])).convert("RGB"))
        labels.append(label)
        ids.append(sample["__key__"])
        try:
            meta = json.loads(sample["json"]) if "json" in sample else {}
            captions.append(sample["txt"].decode("utf-8") if "txt" in sample else None)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{where}: unreadable json/txt ({e})") from e
        urls.append(meta.get("url") if isinstance(meta, dict) else None)
    return EvalImages(name or first.parent.name, images, np.asarray(labels, np.int64), classnames, ids=ids,
                      urls=urls if any(urls) else None, captions=captions if any(captions) else None)


def load_eval_source(spec: str, sample: dict[str, str] | None = None, limit: int = 0) -> EvalImages:
    """A built-in set by name (needs the sample manifest ``sample``), a folder, or shards."""
    if spec in BUILTIN:
        if sample is None:
            raise ValueError(f"{spec}: built-in eval sets need the sample data manifest")
        data = load_eval_set(spec, sample)
        n = min(limit or len(data.labels), len(data.labels))
        return EvalImages(spec, [data.pil(i) for i in range(n)], data.labels[:n], list(data.classnames),
                          tuple(TEMPLATES[spec]))
    if Path(spec).is_dir():
        data = load_image_folder(spec)
    elif ".tar" in spec:
        data = load_webdataset(spec)
    else:
        raise ValueError(f"unknown eval set {spec!r}: one of {BUILTIN}, a class_name/*.jpg folder, or .tar shards")
    if limit:
        data.images, data.labels, data.ids = data.images[:limit], data.labels[:limit], data.image_ids()[:limit]
        data.urls = data.urls[:limit] if data.urls else None
        data.captions = data.captions[:limit] if data.captions else None
    return data
