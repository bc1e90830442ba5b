"""Run inside a network namespace with only loopback up (see test_images_netns.py): the guarded
download of a redirect to the metadata address and of the metadata address itself, through
img2dataset's spawned workers. Prints the download/urlguard rejects as JSON.

Inside the namespace no packet can leave the machine, so even a broken guard is harmless."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from pipelines.runtime import configure_environment  # noqa: E402


def main() -> None:
    configure_environment()
    import pyarrow.dataset as ds

    from curation.images import recipe as images
    from pipelines import wit_images
    from pipelines.demo.serve_images import serving
    from storage.layout import RunLayout
    from tests.curation.images.conftest import METADATA_URL, SiteHandler, write_selection, write_site
    from tests.curation.images.test_images_pipeline import image_args

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_site(root / "site", good=6)
        with serving(root / "site", port=0, handler=SiteHandler) as base:
            urls = [f"{base}/img/00.png", f"{base}/redirect/metadata", METADATA_URL, "http://10.11.12.13/a.png"]
            curation = root / "curation"
            selected = write_selection(curation, urls, parts=1)
            config = wit_images.config_from_args(image_args("--distributor", "multiprocessing"))
            layout = RunLayout.of_curation(str(curation))
            images.run_image_stages(layout, config, until="download")  # the pipeline in this process
        downloaded = ds.dataset(str(curation / "checked"), format="parquet").to_table(columns=["uid"])
        out = {"uids": dict(zip(urls, selected.column("uid").to_pylist())),
               "downloaded": downloaded.column("uid").to_pylist()}
        for stage in ("urlguard", "download"):
            table = ds.dataset(str(curation / "rejects" / stage), format="parquet").to_table()
            out[stage] = dict(zip(table.column("uid").to_pylist(), table.column("reason").to_pylist()))
        print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
