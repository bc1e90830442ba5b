"""One image-stages driver run by test_images_resume.py: the per-part pipeline on a local pool
of worker processes (no Ray), the global steps in this process. ``python killed_driver_run.py
CURATION`` (the selection and the image server are the test's)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from curation.images.check import ImageCheckConfig  # noqa: E402
from curation.images.download import DownloadConfig  # noqa: E402
from curation.images.politeness import PolitenessConfig  # noqa: E402
from curation.images.recipe import ImageStagesConfig, run_image_stages  # noqa: E402
from curation.images.shards import ShardConfig  # noqa: E402
from curation.images.urlguard import UrlGuardConfig  # noqa: E402
from curation.stage import in_process, process_pipe  # noqa: E402
from storage.layout import RunLayout  # noqa: E402

CONFIG = ImageStagesConfig(
    guard=UrlGuardConfig(allow_networks=("127.0.0.1",)),
    download=DownloadConfig(processes=2, threads=4, shard_size=8, retry_pass=False, distributor="multiprocessing",
                            politeness=PolitenessConfig(unlimited_hosts=("127.0.0.1",))),
    check=ImageCheckConfig(image_size=48), shards=ShardConfig(shard_size=25, holdout_fraction=0.1), report=False)

if __name__ == "__main__":
    run_image_stages(RunLayout.of_curation(sys.argv[1]), CONFIG, process_pipe(2), map_tasks=in_process)
    print("DONE", flush=True)
