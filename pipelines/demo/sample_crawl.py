"""A real crawl for the demo: the sample images as web pages, crawled by wget into a WARC.

`make sample-data` runs :func:`build_sample_crawl` after the sample images: every image of the
sample pool (real openclipart titles/keywords, emoji names) goes on an HTML page of its
category as ``<img src="<path>" alt="<caption>">`` under ``<base href="http://127.0.0.1:18765/">``
(the address ``pipelines/serve_images.py`` serves the images on), at most
:data:`IMAGES_PER_PAGE` a page, linked from ``index.html``. The pages are served on an
ephemeral loopback port and crawled with ``wget --warc-file`` (Debian ``wget``): a real WARC,
``<data>/web/crawl.warc.gz`` (manifest key ``sample_crawl_warc``). `make demo-web` builds the
pool from it (``build_wit.py --warc``) and runs the chain on it; the parquet demo is unchanged.
"""

from __future__ import annotations

import html
import shutil
import subprocess
import tempfile
from pathlib import Path

from storage.files import atomic_write

IMAGES_PER_PAGE = 100
IMAGE_BASE = "http://127.0.0.1:18765/"  # pipelines.demo.serve_images.DEFAULT_HOST/DEFAULT_PORT


def write_site(pool_path: str, site: Path) -> int:
    """Write the pages for the pool at ``pool_path`` into ``site``; return the number of pages."""
    import pyarrow.parquet as pq

    pool = pq.read_table(pool_path, columns=["url", "text", "path"]).to_pylist()
    groups: dict[str, list[dict]] = {}
    for row in pool:
        if not row["url"].startswith(IMAGE_BASE):
            raise ValueError(f"{pool_path}: url {row['url']} is not under {IMAGE_BASE}")
        groups.setdefault(row["path"].rsplit("/", 1)[0].replace("/", "-"), []).append(row)  # by folder
    pages = []
    for group, rows in sorted(groups.items()):
        for start in range(0, len(rows), IMAGES_PER_PAGE):
            name = f"{group}-{start // IMAGES_PER_PAGE:03d}.html"
            imgs = "\n".join(f'<figure><img src="{html.escape(r["url"][len(IMAGE_BASE):])}" '
                             f'alt="{html.escape(r["text"])}"></figure>' for r in rows[start:start + IMAGES_PER_PAGE])
            (site / name).write_text(f'<!doctype html>\n<html><head><meta charset="utf-8"><base href="{IMAGE_BASE}">'
                                     f"<title>{html.escape(group)}</title></head><body>\n{imgs}\n</body></html>\n")
            pages.append(name)
    links = "\n".join(f'<li><a href="{p}">{p}</a></li>' for p in pages)
    (site / "index.html").write_text(f'<!doctype html>\n<html><head><meta charset="utf-8"><title>openwit sample'
                                     f"</title></head><body><ul>\n{links}\n</ul></body></html>\n")
    return len(pages)


def crawl(site: Path, warc_stem: Path) -> Path:
    """Serve ``site`` on 127.0.0.1 and crawl it with wget into ``<warc_stem>.warc.gz``."""
    from pipelines.demo.serve_images import serving

    if shutil.which("wget") is None:
        raise SystemExit("[sample-data] wget is missing: sudo apt-get install -y wget")
    with serving(site, port=0) as base, tempfile.TemporaryDirectory() as work:
        # pages only (the images are fetched later by the download stage, as for any pool);
        # exit status 8 would mean a 404 somewhere: checked below through the WARC instead
        subprocess.run(["wget", "-q", "-r", "-l", "1", "-e", "robots=off", "--no-proxy", "--delete-after",
                        r"--accept-regex=/[^/]*\.html$", "-P", work, f"--warc-file={warc_stem}",
                        f"{base}/index.html"], check=False, timeout=600)
    warc = warc_stem.with_name(warc_stem.name + ".warc.gz")
    if not warc.exists() or warc.stat().st_size == 0:
        raise RuntimeError(f"wget wrote no WARC at {warc}")
    return warc


def build_sample_crawl(root: Path, manifest: dict[str, str]) -> dict[str, str]:
    """Build ``<root>/web/crawl.warc.gz`` from the sample pool (skipped when it exists)."""
    warc = root / "web" / "crawl.warc.gz"
    entries = {"sample_crawl_warc": str(warc)}
    if warc.exists():
        return entries
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        site.mkdir()
        pages = write_site(manifest["sample_pool"], site)
        built = crawl(site, Path(tmp) / "crawl")
        warc.parent.mkdir(parents=True, exist_ok=True)
        with open(built, "rb") as src:
            atomic_write(str(warc), lambda f: shutil.copyfileobj(src, f))
    print(f"[sample-data] crawled {pages} sample pages -> {warc}", flush=True)
    return entries
