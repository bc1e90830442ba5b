"""The 64-bit DCT perceptual hash (imagehash.phash) as packed bytes, and exact nearest search
among such codes by Hamming distance (faiss ``IndexBinaryFlat``). Image dedup, the eval
decontamination stage and the contamination report's pHash detector share these."""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import imagehash
import numpy as np
from PIL import Image

PHASH_BITS = 64


def phash_code(image: Image.Image) -> bytes:
    """The 64-bit DCT perceptual hash (imagehash.phash, on the grey image) as 8 bytes."""
    return np.packbits(imagehash.phash(image.convert("L")).hash.flatten()).tobytes()


def phash_codes(images: Sequence[Image.Image]) -> np.ndarray:
    """(N, 8) uint8 :func:`phash_code` of PIL images."""
    return np.frombuffer(b"".join(phash_code(im) for im in images), np.uint8).reshape(len(images), PHASH_BITS // 8).copy()


def nearest_binary(queries: np.ndarray, gallery: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest gallery code of each query code by Hamming distance: (similarity =
    1 - hamming/64, gallery index); (-inf, -1) against an empty gallery."""
    if len(gallery) == 0 or len(queries) == 0:
        return np.full(len(queries), -np.inf, np.float32), np.full(len(queries), -1, np.int64)
    index = faiss.IndexBinaryFlat(PHASH_BITS)
    index.add(np.ascontiguousarray(gallery, np.uint8))
    dist, ids = index.search(np.ascontiguousarray(queries, np.uint8), 1)
    return (1.0 - dist[:, 0] / PHASH_BITS).astype(np.float32), ids[:, 0].astype(np.int64)





