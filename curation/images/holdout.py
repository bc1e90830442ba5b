"""Held-out pairs: a fixed share of the final samples, chosen by a hash of the uid, that go to
``<out>/curation/heldout/`` shards instead of ``shards/`` and so never train.

The choice is a pure function of (uid, seed): ``splitmix64(xxh3_64(uid) ^ salt(seed))`` mapped
to [0, 1) by its top 53 bits, held out when below ``fraction``. It does not depend on the
engine, the partitioning, the order of the rows or a rerun, and it is independent of the
balancing draw (another salt). Holding out after image dedup means no held-out image has an
exact or near duplicate (pHash) among the training images.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from curation.text.balance import salted_hashes, uid_hashes

_HOLDOUT_SALT = 0x686F6C646F7574  # "holdout": keeps this draw apart from the balancing draw


def heldout_mask(uids: pa.Array | pa.ChunkedArray | list[str], fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean mask: which of ``uids`` are held out (about ``fraction`` of them, in [0, 1])."""
    return heldout_of_hashes(uid_hashes(uids), fraction, seed)


def heldout_of_hashes(uid_hash: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """:func:`heldout_mask` from the uids' ``xxh3_64`` (:func:`~curation.text.balance.uid_hashes`)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1], got {fraction}")
    bits = salted_hashes(uid_hash, _HOLDOUT_SALT + int(seed))
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53)) < fraction
