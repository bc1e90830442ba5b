"""Eval decontamination for ``build_wit.py --decontaminate DATASET...``: drop training images that
are near-duplicates of eval images, after image dedup and before the shards.

Stage ``decontaminate`` (same accounting as every image stage: ``stats/decontaminate.json`` with
in = out + rejected, ``rejects/decontaminate/part-00000.parquet`` with ``uid``, ``reason =
eval_duplicate``, ``eval_id`` = ``<dataset>/<image id>``, ``score``). Detector: pHash of the
checked images (already computed by the image check, so no decoding) or, with
``--decontaminate-weights``, the learned copy detector of ``pretrain.copydetect`` over the
checked JPEGs. The search and the rule are ``curation.overlap.eval_duplicates``; this module
only joins eval sets (``pretrain``) and checked parts (``curation``).

:func:`prefilter` is the cheaper pre-download check: exact URL and normalised-caption matches
against eval sets that carry ``url``/``txt`` fields (reasons ``eval_url`` / ``eval_caption``).
"""

from __future__ import annotations

import argparse
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from PIL import Image

from curation.image_accounting import reject_counts, stage_done, write_rejects, write_stats
from curation.overlap import eval_duplicates, normalize_caption, phash_codes, url_caption_matches

STAGE = "decontaminate"


@dataclass(frozen=True)
class DecontaminateConfig:
    """Which eval sets to remove from the training data, and how."""

    datasets: tuple[str, ...] = ()  # eval sets (built-in names, folders, .tar shards); () = off
    weights: str = ""  # learned copy-detector weights ('' = pHash)
    threshold: float = -1.0  # similarity threshold (-1 = 0.875 for pHash, i.e. <= 8 bits; 0.9 learned)

    def resolved_threshold(self) -> float:
        if self.threshold >= 0:
            return self.threshold
        return 0.9 if self.weights else 1 - 8 / 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--decontaminate*`` flags."""
    g = parser.add_argument_group("eval decontamination")
    g.add_argument("--decontaminate", nargs="+", default=[], metavar="DATASET",
                   help="drop training images that are near-duplicates of these eval sets' images")
    g.add_argument("--decontaminate-weights", default="", help="learned copy detector (default: pHash)")
    g.add_argument("--decontaminate-threshold", type=float, default=-1.0,
                   help="similarity at or above which an image is an eval duplicate (-1: backend default)")


def config_from_args(args: argparse.Namespace) -> DecontaminateConfig:
    return DecontaminateConfig(tuple(args.decontaminate), args.decontaminate_weights, args.decontaminate_threshold)


def _eval_sets(config: DecontaminateConfig):
    from pretrain.evalsources import load_eval_source

    manifest = None
    if any(d in ("fashion-mnist", "mnist", "digits") for d in config.datasets):
        from pipelines.sample_data import load_manifest

        manifest = load_manifest()
    return [load_eval_source(d, manifest) for d in config.datasets]


def decontaminate_stage(curation_dir: str | Path, parts: list[Path], kept: pa.Table,
                        config: DecontaminateConfig) -> pa.Table:
    """Stage ``decontaminate`` over the dedup survivors ``kept`` (uid); returns the uids kept."""
    root = Path(curation_dir)
    if stage_done(root, STAGE):
        dropped = ds.dataset(str(root / "rejects" / STAGE), format="parquet").to_table(columns=["uid"])
        return kept.filter(pc.invert(pc.is_in(kept.column("uid"), value_set=dropped.column("uid"))))
    evals = _eval_sets(config)
    ids = [f"{e.name}/{i}" for e in evals for i in e.image_ids()]
    images = [im for e in evals for im in e.images]
    columns = ["uid", "phash"] if not config.weights else ["uid", "jpg"]
    checked = ds.dataset([str(p) for p in parts], format="parquet").to_table(columns=columns)
    checked = checked.filter(pc.is_in(checked.column("uid"), value_set=kept.column("uid")))
    if config.weights:
        from pretrain.copydetect import embed_images, load_copy_detector

        model = load_copy_detector(config.weights)
        train = embed_images(model, [Image.open(io.BytesIO(b)) for b in checked.column("jpg").to_pylist()])
        evals_emb = embed_images(model, images)
    else:
        train = np.frombuffer(b"".join(checked.column("phash").to_pylist()), np.uint8).reshape(-1, 8)
        evals_emb = phash_codes(images)
    rejected = eval_duplicates(checked.column("uid"), train, ids, evals_emb, config.resolved_threshold())
    write_rejects(root, STAGE, rejected)
    survivors = kept.filter(pc.invert(pc.is_in(kept.column("uid"), value_set=rejected.column("uid"))))
    write_stats(root, STAGE, len(kept), len(survivors), reject_counts(rejected),
                datasets=list(config.datasets), threshold=config.resolved_threshold(),
                detector="learned" if config.weights else "phash")
    return survivors


def prefilter(selected: pa.Table, eval_urls: dict[str, str], eval_captions: dict[str, str]) -> tuple[pa.Table, pa.Table]:
    """Before download: (rows kept, rejects) by exact URL / normalised caption match against
    eval sets (``eval_urls``: url -> eval id; ``eval_captions``: caption -> eval id)."""
    captions = {normalize_caption(c): i for c, i in eval_captions.items()}
    rejected = url_caption_matches(selected.select(["uid", "url", "text"]), eval_urls, captions)
    kept = selected.filter(pc.invert(pc.is_in(selected.column("uid"), value_set=rejected.column("uid"))))
    return kept, rejected
