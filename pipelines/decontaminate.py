"""Flags and eval index of ``build_wit.py --decontaminate DATASET...`` (the stage itself is
``curation.images.decontaminate_stage``, between the image dedup and the shards).

:func:`write_eval_index` loads the named eval sets (``pretrain.evalsources``: built-in names,
``class_name/*.jpg`` folders, WebDataset shards with a ``cls`` label) and writes their pHash codes
to the run's ``curation/decontaminate/eval_index.parquet`` (``eval_id`` = ``<dataset>/<image
id>``, ``phash``): the file the stage's tasks read on any node. This module joins ``pretrain``
(the eval sets) and ``curation`` (the hashes, the stage), as ``pipelines/`` may.
"""

from __future__ import annotations

import argparse

import pyarrow as pa

from curation.images import DecontaminateConfig
from curation.overlap import phash_codes
from curation.run import RunLayout


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--decontaminate*`` flags (defaults = :class:`DecontaminateConfig`'s)."""
    g = parser.add_argument_group("eval decontamination (after the image dedup, before the shards)")
    g.add_argument("--decontaminate", nargs="+", default=[], metavar="DATASET",
                   help="drop training images whose pHash is within --decontaminate-distance of an image of "
                        "these eval sets (fashion-mnist, mnist, digits, a class_name/*.jpg folder, .tar shards); "
                        "reject reason eval_duplicate, the matched eval id in rejects/decontaminate/")
    g.add_argument("--decontaminate-distance", type=int, default=DecontaminateConfig.max_distance,
                   help="pHash Hamming distance (of 64 bits) at or below which an image is an eval copy")


def config_from_args(args: argparse.Namespace) -> DecontaminateConfig:
    return DecontaminateConfig(tuple(args.decontaminate), args.decontaminate_distance)


def write_eval_index(layout: RunLayout, config: DecontaminateConfig) -> int:
    """Write the eval images' (eval_id, phash) to ``layout.eval_index``; return the row count.
    Built-in sets read the sample data's manifest (``make sample-data``)."""
    from pretrain.evalsources import BUILTIN, load_eval_source

    manifest = None
    if any(d in BUILTIN for d in config.datasets):
        from pipelines.demo.sample_data import load_manifest

        manifest = load_manifest()
    ids, codes = [], []
    for spec in config.datasets:
        data = load_eval_source(spec, manifest)
        ids += [f"{data.name}/{i}" for i in data.image_ids()]
        codes += [bytes(c) for c in phash_codes(data.images)]
    layout.write_parquet(pa.table({"eval_id": pa.array(ids, pa.string()), "phash": pa.array(codes, pa.binary(8))}),
                         layout.eval_index)
    return len(ids)
