"""One image-stages driver (``pipelines/wit_images.py``) whose peak RSS is measured: run as a
subprocess by test_images_driver_memory.py; prints ``PEAK <KiB> <summary json>``."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from pipelines import wit_images  # noqa: E402

if __name__ == "__main__":
    curation, images, port = sys.argv[1:4]
    summary = wit_images.main(["--curation-dir", curation, "--serve-images", images, "--serve-port", port,
                               "--allow-network", "127.0.0.1", "--unlimited-hosts", "127.0.0.1", "--image-size", "32", "--no-report",
                               "--no-retry-pass", "--processes", "2", "--threads", "32",
                               "--download-shard-size", "1000", "--shard-size", "2000",
                               # the driver's memory is the point: the detectors (~40 ms per image in
                               # the workers, bench_safety.py) would only add 35 core-minutes at 55k rows
                               "--no-nsfw", "--no-faces"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux: this process only
    print("PEAK", peak, json.dumps({s: {k: v for k, v in b.items() if k in ("in", "out", "by_node")}
                                    for s, b in summary["stages"].items()}))
