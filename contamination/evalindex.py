"""The decontamination index of a run (``build_wit.py --decontaminate DATASET...``): the named eval
sets (:mod:`contamination.evalsources`: built-in names, ``class_name/*.jpg`` folders, WebDataset
shards with a ``cls`` label) written as the files curation's decontamination stages read on any
node (:mod:`curation.images.decontaminate`): ``curation/decontaminate/eval_index.parquet``
(``eval_id`` = ``<dataset>/<image id>``, 64-bit ``phash``) and ``eval_text.parquet`` (``eval_id``,
``url``, ``caption_key``; null where a set has no URLs or captions)."""

from __future__ import annotations

import pyarrow as pa

from contamination.evalsources import BUILTIN, load_eval_source
from curation.images.phash import phash_codes
from curation.text.textfilter import caption_key
from storage.datadir import data_manifest
from storage.layout import RunLayout


def write_eval_index(layout: RunLayout, datasets: tuple[str, ...], data_dir: str | None = None) -> int:
    """Write the eval images' (eval_id, phash) to ``layout.eval_index`` and (eval_id, url,
    caption_key) to ``layout.eval_text_index``; return the row count. Built-in sets are read
    from the data dir's manifest (``data_dir``, else ``$OPENWIT_DATA``: :mod:`storage.datadir`)."""
    manifest = data_manifest(data_dir) if any(d in BUILTIN for d in datasets) else None
    ids, codes, urls, captions = [], [], [], []
    for spec in datasets:
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
