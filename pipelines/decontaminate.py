"""Flags and eval index of ``build_wit.py --decontaminate DATASET...``. Two stages of
``curation.images.recipe`` use it: ``evaltext`` before the URL guard (eval URLs and captions: nothing
is downloaded for those rows) and ``decontaminate`` between the image dedup and the shards
(eval images by pHash).

:func:`write_eval_index` loads the named eval sets (``contamination.evalsources``: built-in names,
``class_name/*.jpg`` folders, WebDataset shards with a ``cls`` label) and writes their pHash codes
to the run's ``curation/decontaminate/eval_index.parquet`` (``eval_id`` = ``<dataset>/<image
id>``, ``phash``) and their URLs and caption keys to ``eval_text.parquet``: the files the
stages' tasks read on any node. This module joins ``pretrain``
(the eval sets) and ``curation`` (the hashes, the stage), as ``pipelines/`` may.
"""

from __future__ import annotations

import argparse

import pyarrow as pa

from curation.images.recipe import DecontaminateConfig
from curation.images.phash import phash_codes
from storage.layout import RunLayout
from curation.text.textfilter import caption_key


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--decontaminate*`` flags (defaults = :class:`DecontaminateConfig`'s)."""
    g = parser.add_argument_group("eval decontamination (after the image dedup, before the shards)")
    g.add_argument("--decontaminate", nargs="+", default=[], metavar="DATASET",
                   help="keep these eval sets (fashion-mnist, mnist, digits, a class_name/*.jpg folder, .tar "
                        "shards) out of training: before download, rows with an eval URL or normalised caption "
                        "(reasons eval_url/eval_caption, rejects/evaltext/); after it, images whose pHash is within "
                        "--decontaminate-distance of an eval image's (eval_duplicate, rejects/decontaminate/)")
    g.add_argument("--decontaminate-distance", type=int, default=DecontaminateConfig.max_distance,
                   help="pHash Hamming distance (of 64 bits) at or below which an image is an eval copy")


def config_from_args(args: argparse.Namespace) -> DecontaminateConfig:
    return DecontaminateConfig(tuple(args.decontaminate), args.decontaminate_distance)


def write_eval_index(layout: RunLayout, config: DecontaminateConfig) -> int:
    """Write the eval images' (eval_id, phash) to ``layout.eval_index`` and (eval_id, url,
    caption_key) to ``layout.eval_text_index`` (null where a set has no URLs/captions); return
    the row count. Built-in sets read the sample data's manifest (``make sample-data``)."""
    from contamination.evalsources import BUILTIN, load_eval_source

    manifest = None
    if any(d in BUILTIN for d in config.datasets):
        from pipelines.demo.sample_data import load_manifest

        manifest = load_manifest()
    ids, codes, urls, captions = [], [], [], []
    for spec in config.datasets:
        data = load_eval_source(spec, manifest)
        ids += [f"{data.name}/{i}" for i in data.image_ids()]
        codes += [bytes(c) for c in phash_codes(data.images)]
        urls += data.urls or [None] * len(data.labels)
        captions += data.captions or [None] * len(data.labels)
    ids = pa.array(ids, pa.string())
    layout.write_parquet(pa.table({"eval_id": ids, "phash": pa.array(codes, pa.binary(8))}), layout.eval_index)
    layout.write_parquet(pa.table({"eval_id": ids, "url": pa.array(urls, pa.string()),
                                   "caption_key": caption_key(pa.array(captions, pa.string()))}), layout.eval_text_index)
    return len(ids)
