"""Demo only: augmented copies of Fashion-MNIST *test* images planted in the sample image pool, so
the demo's contamination report has known overlap to find (CLIP §5's question, with an answer).

:func:`build_planted_copies` (a ``pipelines.demo.sample_derived`` builder) writes ``PLANTED``
copies of test images among the first ``PLANTED_FROM`` (the demo's report reads those 2,000:
each is searched as 19 views, and all 10,000 would add ~8 minutes to the demo); each a test
image upscaled 4x then cropped, resized, brightened/darkened and JPEG re-encoded
(``contamination.copydetect.make_copy``), saved as ``<data>/images/planted/fmnist-<test index>.png`` and
listed in ``<data>/images/planted.parquet`` (uid, url, text, source, path) with a caption from
``pretrain.evalsets.FASHION_MNIST_CAPTIONS`` plus the item number (captions must differ, or text
dedup would drop them), served like the rest on ``SAMPLE_BASE_URL``. Manifest key:
``sample_planted_pool``.
"""

from __future__ import annotations

import json
from pathlib import Path

from storage.files import atomic_write

PLANTED = 40  # copies planted in the demo pool
PLANTED_FROM = 2000  # ... of the first this many test images (the demo's report reads these: --eval-limit)
SEED = 10  # which test images (and how they are altered)


def build_planted_copies(root: Path, manifest: dict[str, str]) -> dict[str, str]:
    """Write the planted copies and their pool parquet; skipped when the parquet exists and was
    made with these settings (``PLANTED``, ``PLANTED_FROM``, ``SEED``, in its schema metadata): a
    pool left by an older checkout is rebuilt, never reused with copies the report cannot see."""
    import shutil

    import cv2
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import xxhash

    from contamination.copydetect import copy_source, make_copy
    from pipelines.demo.serve_images import SAMPLE_BASE_URL
    from pretrain.evalsets import FASHION_MNIST_CAPTIONS, load_fashion_mnist

    pool = root / "images" / "planted.parquet"
    settings = json.dumps({"planted": PLANTED, "from": PLANTED_FROM, "seed": SEED}).encode()
    if pool.exists() and (pq.read_schema(pool).metadata or {}).get(b"openwit_planted") == settings:
        return {"sample_planted_pool": str(pool)}
    data = load_fashion_mnist(manifest["fashion_mnist_dir"], "test")
    rng = np.random.default_rng(SEED)
    folder = root / "images" / "planted"
    shutil.rmtree(folder, ignore_errors=True)  # copies of an older setting
    folder.mkdir(parents=True)
    rows = []
    for k, i in enumerate(sorted(rng.choice(min(PLANTED_FROM, len(data.labels)), PLANTED, replace=False).tolist())):
        path = f"planted/fmnist-{i:05d}.png"
        cv2.imwrite(str(root / "images" / path), make_copy(copy_source(data.images[i]), rng))
        name = data.classnames[int(data.labels[i])]
        text = f"{FASHION_MNIST_CAPTIONS[k % len(FASHION_MNIST_CAPTIONS)].format(name)} from the fashion catalogue, item {i}"
        url = f"{SAMPLE_BASE_URL}/{path}"
        rows.append({"uid": xxhash.xxh3_128_hexdigest(url.encode()), "url": url, "text": text,
                     "source": "planted_fashion_mnist", "path": path})
    table = pa.Table.from_pylist(rows)
    table = table.replace_schema_metadata({b"openwit_planted": settings})
    atomic_write(str(pool), lambda f: pq.write_table(table, f))
    print(f"[sample-data] {len(rows)} planted Fashion-MNIST test copies -> {folder}", flush=True)
    return {"sample_planted_pool": str(pool)}
