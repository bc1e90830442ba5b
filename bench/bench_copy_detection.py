"""Planted-copy precision/recall of the shipped copy detector over several copy seeds (issue 10).

The test (``tests/contamination/test_copy_detection.py``) measures one split: copy seed 0, threshold
chosen on the first 250 planted copies and measured on the other 250. A threshold chosen where
the calibration half's precision reaches 0.95 lands at 0.95 +- ~0.014 on the other half, so one
split says little about how robustly the goal (precision and recall >= 0.95) is met. This runs
the same protocol (``contamination.planted.measure_planted``, the report's own
``Detector`` scoring) for ``--seeds`` copy seeds x both half orders, per eval set, and prints
each measurement, the range, and how many meet the goal. Anchor: pHash on the same copies.

    python bench/bench_copy_detection.py [--seeds 3] [--weights contamination/assets/copy_detector.pt] [--no-phash]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--weights", default="", help="detector weights (default: the shipped ones)")
    p.add_argument("--goal", type=float, default=0.95)
    p.add_argument("--no-phash", action="store_true", help="skip the pHash anchor")
    a = p.parse_args(argv)

    from contamination.analysis import Detector
    from contamination.copydetect import SHIPPED_WEIGHTS as SHIPPED
    from contamination.copydetect import load_copy_detector
    from contamination.planted import measure_planted
    from pipelines.demo.copy_detection_set import N_PLANT, distinct_sample_images, planted_cases
    from pipelines.demo.sample_data import load_manifest

    started = time.perf_counter()
    detectors = {"learned": Detector("learned", load_copy_detector(a.weights or SHIPPED))}
    if not a.no_phash:
        detectors["phash"] = Detector("phash")
    rows: dict[str, list[dict]] = {}
    manifest = load_manifest()
    distinct = distinct_sample_images(manifest["sample_images_dir"])
    for seed in range(a.seeds):
        for case, data in planted_cases(manifest, seed, distinct).items():
            for name, detector in detectors.items():
                for swap, r in zip((False, True), measure_planted(detector, data, N_PLANT, a.goal)):
                    r = {k: round(v, 3) for k, v in r.items() if k in ("precision", "recall", "rank1", "threshold")}
                    rows.setdefault(f"{case}/{name}", []).append({"seed": seed, "swap": swap, **r})
                    print(json.dumps({"case": case, "detector": name, "seed": seed, "swap": swap, **r}), flush=True)
    summary = {}
    for key, rs in rows.items():
        pr = [(r["precision"], r["recall"]) for r in rs]
        summary[key] = {"measurements": len(rs),
                        "precision": [min(p for p, _ in pr), max(p for p, _ in pr)],
                        "recall": [min(r for _, r in pr), max(r for _, r in pr)],
                        "rank1": [min(r["rank1"] for r in rs), max(r["rank1"] for r in rs)],
                        "meet_goal": sum(p >= a.goal and r >= a.goal for p, r in pr)}
    out = {"seconds": round(time.perf_counter() - started, 1), "goal": a.goal, "summary": summary}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
