"""Decontamination before download (``build_wit.py --decontaminate``'s ``evaltext`` stage): selected
rows whose URL is an eval image's URL, or whose caption normalises to an eval caption, are
rejected with ``eval_url`` / ``eval_caption`` and the eval id, are never requested from the
server, and the ledger chains evaltext → urlguard → download."""

from __future__ import annotations

import io
import json

import pyarrow.dataset as ds
import pytest
import webdataset as wds
from PIL import Image

from pipelines import wit_images
from tests.curation.images.conftest import SiteHandler, loopback_only, site, textured_png, write_selection  # noqa: F401
from tests.curation.images.test_images_pipeline import image_args


def write_eval_shards(folder, samples: list[dict]) -> str:
    """A labelled WebDataset eval set (``cls``, ``png``, optional ``txt`` and ``json`` url)."""
    folder.mkdir(parents=True)
    (folder / "classnames.txt").write_text("pattern\nother\n")
    with wds.TarWriter(str(folder / "000000.tar")) as sink:
        for i, s in enumerate(samples):
            png = io.BytesIO()
            Image.open(io.BytesIO(textured_png(500 + i))).save(png, format="PNG")
            sink.write({"__key__": f"e{i:03d}", "png": png.getvalue(), "cls": str(i % 2).encode(),
                        **({"txt": s["txt"].encode()} if "txt" in s else {}),
                        **({"json": json.dumps({"url": s["url"]}).encode()} if "url" in s else {})})
    return str(folder / "000000.tar")


@pytest.mark.ray
def test_eval_urls_and_captions_never_downloaded(tmp_path, site, ray_session):
    base, _ = site
    urls = [f"{base}/img/{i:02d}.png" for i in range(10)]
    curation = tmp_path / "curation"
    selected = write_selection(curation, urls)  # captions "a picture number <i>"
    uids = selected.column("uid").to_pylist()
    evalset = write_eval_shards(tmp_path / "evalset", [
        {"url": urls[2], "txt": "an unrelated caption"},  # same URL
        {"txt": "  A Picture -- NUMBER 7!  "},  # same caption once normalised
        {"url": f"{base}/img/99.png", "txt": "a picture number 70"},  # neither
        {},  # an eval image with no URL or caption: matched later, by its pixels
    ])
    requested = []
    real_get = SiteHandler.do_GET
    SiteHandler.do_GET = lambda self: (requested.append(self.path), real_get(self))[1]
    try:
        summary = wit_images.run(image_args("--decontaminate", evalset), str(curation), until="download")
    finally:
        SiteHandler.do_GET = real_get

    rejected = {r["uid"]: r for r in ds.dataset(str(curation / "rejects" / "evaltext")).to_table().to_pylist()}
    assert rejected == {uids[2]: {"uid": uids[2], "reason": "eval_url", "eval_id": "evalset/e000"},
                        uids[7]: {"uid": uids[7], "reason": "eval_caption", "eval_id": "evalset/e001"}}
    assert "/img/02.png" not in requested and "/img/07.png" not in requested
    assert "/img/03.png" in requested
    stats = {s: json.loads((curation / "stats" / f"{s}.json").read_text()) for s in ("evaltext", "urlguard", "download")}
    assert stats["evaltext"]["in"] == 10 and stats["evaltext"]["out"] == 8
    assert stats["evaltext"]["rejected"] == {"eval_url": 1, "eval_caption": 1}
    assert stats["evaltext"]["eval_urls"] == 2 and stats["evaltext"]["eval_captions"] == 3
    assert stats["urlguard"]["in"] == stats["evaltext"]["out"] and stats["download"]["in"] == stats["urlguard"]["out"]
    assert summary["until"] == "download"
