"""Sample files derived from the raw registry files (image pools, served trees, ...).

Each builder takes (data dir, manifest so far) and returns new manifest entries. A builder
must be idempotent: skip work whose output already exists (write to a temp name, rename).

:func:`build_sample_images` makes the real sample image pool:

- **openclipart** (Debian ``openclipart-png`` + ``openclipart-svg``, public domain): each PNG
  under ``png/<category>/`` is copied; its caption is the title in the matching SVG's RDF
  metadata plus its specific keywords. Noise is dropped: collection names used as titles
  (a title shared by more than :data:`COLLECTION_TITLE_MIN` images, e.g. "Part of the Flat
  Icon Collection (...)", "gramastar", "Lemon SVG theme"), empty titles, and generic keywords.
- **emoji** (Debian ``fonts-noto-color-emoji``, OFL): every fully-qualified emoji of the
  ``emoji`` package rendered with Pillow at 109 px (the font's bitmap size), named from
  ``EMOJI_DATA[ch]["en"]``; renders that are blank or wider than one glyph (a sequence the font
  has no ligature for) are dropped.

Images go to ``<data>/images/{openclipart,emoji}/``; ``<data>/images/pool.parquet`` lists them as
(uid, url, text, source, path) with urls ``http://127.0.0.1:18765/<path>``, the address
``pipelines/demo/serve_images.py`` serves that tree on. Manifest keys: ``sample_images_dir``,
``sample_pool``.
"""

from __future__ import annotations

import collections
import re
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from pipelines.demo.serve_images import SAMPLE_BASE_URL
from storage.files import atomic_write_dir

Builder = Callable[[Path, dict[str, str]], dict[str, str]]

COLLECTION_TITLE_MIN = 20  # a title on more images than this names a collection, not the image
EMOJI_FONT_SIZE = 109  # Noto Color Emoji's only bitmap strike
_RDF = {"dc": "http://purl.org/dc/elements/1.1/", "cc": "http://web.resource.org/cc/",
        "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#"}
_METADATA = re.compile(rb"<metadata.*?</metadata>", re.S)
_AUTHOR_PREFIX = re.compile(r"^clipart by [^-]+ - ", re.I)
GENERIC_KEYWORDS = frozenset({
    "", "unsorted", "icon", "icons", "theme", "computer", "hash", "magick", "application", "action",
    "filesystem", "menu", "special", "clip art", "clipart", "image", "media", "svg", "png",
    "lemon theme icon", "mapsym", "signs and symbols", "public domain", "openclipart", "remix",
})


def _clean(text: str) -> str:
    return " ".join(text.replace("_", " ").split())


def svg_caption_parts(svg_path: Path) -> tuple[str, list[str]]:
    """(title, keywords) from an openclipart SVG's RDF metadata ("" / [] when absent)."""
    match = _METADATA.search(svg_path.read_bytes())
    if not match:
        return "", []
    try:
        work = ET.fromstring(match.group(0)).find(".//cc:Work", _RDF)
    except ET.ParseError:
        return "", []
    if work is None:
        return "", []
    title = _clean(_AUTHOR_PREFIX.sub("", work.findtext("dc:title", default="", namespaces=_RDF)))
    title = re.sub(r"\s*\d+$", "", title)  # "jigsaw red 10" -> "jigsaw red"
    keywords = [_clean(li.text or "") for li in work.findall("dc:subject/rdf:Bag/rdf:li", _RDF)]
    seen = {title.lower()}
    specific = []
    for keyword in keywords:  # drop generic ones, repeats and the title itself, case-insensitively
        if keyword.lower() not in GENERIC_KEYWORDS | seen:
            seen.add(keyword.lower())
            specific.append(keyword)
    return title, specific


def openclipart_records(clipart_dir: Path, out_dir: Path) -> list[dict]:
    """Copy captioned openclipart PNGs to ``out_dir``; return their pool records."""
    found = []
    for png in sorted((clipart_dir / "png").rglob("*.png")):
        rel = png.relative_to(clipart_dir / "png")
        svg = (clipart_dir / "svg" / rel).with_suffix(".svg")
        if svg.exists():
            found.append((png, rel, *svg_caption_parts(svg)))
    title_use = collections.Counter(title.lower() for _, _, title, _ in found)
    records = []
    for png, rel, title, keywords in found:
        if not re.search(r"[A-Za-z]{2}", title) or title_use[title.lower()] > COLLECTION_TITLE_MIN:
            continue
        dest = out_dir / "openclipart" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, dest)
        text = f"{title}, {', '.join(keywords[:6])}" if keywords else title
        records.append({"path": f"openclipart/{rel.as_posix()}", "text": text, "source": "openclipart"})
    return records


def emoji_records(font_path: Path, out_dir: Path) -> list[dict]:
    """Render every fully-qualified emoji to ``out_dir/emoji``; return their pool records."""
    import emoji
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(font_path), EMOJI_FONT_SIZE)
    (out_dir / "emoji").mkdir(parents=True, exist_ok=True)
    records = []
    for ch, data in emoji.EMOJI_DATA.items():
        if data.get("status") != emoji.STATUS["fully_qualified"]:
            continue
        left, top, right, bottom = font.getbbox(ch)
        width, height = right - left, bottom - top
        if width <= 0 or height <= 0 or width > 1.3 * height:  # blank, or several glyphs side by side
            continue
        image = Image.new("RGBA", (width, height), (0, 0, 0, 0))
        ImageDraw.Draw(image).text((-left, -top), ch, font=font, embedded_color=True)
        if image.getchannel("A").getbbox() is None:
            continue
        name = "-".join(f"{ord(c):x}" for c in ch)
        image.save(out_dir / "emoji" / f"{name}.png")
        text = _clean(data["en"].strip(":"))
        records.append({"path": f"emoji/{name}.png", "text": text, "source": "emoji"})
    return records


def build_sample_images(root: Path, manifest: dict[str, str]) -> dict[str, str]:
    """Build ``<root>/images`` and its pool parquet (skipped when the pool exists)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import xxhash

    images, pool = root / "images", root / "images" / "pool.parquet"
    entries = {"sample_images_dir": str(images), "sample_pool": str(pool)}
    if pool.exists():
        return entries
    print("[sample-data] building sample images (openclipart + emoji)", flush=True)

    def build(part: Path) -> None:
        records = openclipart_records(Path(manifest["openclipart_dir"]), part)
        records += emoji_records(Path(manifest["emoji_font"]), part)
        urls = [f"{SAMPLE_BASE_URL}/{quote(r['path'])}" for r in records]
        pq.write_table(pa.table({
            "uid": [xxhash.xxh3_128_hexdigest(u.encode()) for u in urls],
            "url": urls,
            "text": [r["text"] for r in records],
            "source": [r["source"] for r in records],
            "path": [r["path"] for r in records],
        }), part / "pool.parquet")

    atomic_write_dir(images, build)  # the folder appears whole or not at all
    print(f"[sample-data] {pq.ParquetFile(pool).metadata.num_rows} sample images -> {images}", flush=True)
    return entries


def _build_sample_crawl(root: Path, manifest: dict[str, str]) -> dict[str, str]:
    from pipelines.demo.sample_crawl import build_sample_crawl  # the sample images as a crawled site

    return build_sample_crawl(root, manifest)


def _build_planted_copies(root: Path, manifest: dict[str, str]) -> dict[str, str]:
    from pipelines.demo.planted_copies import build_planted_copies  # eval copies for the contamination demo

    return build_planted_copies(root, manifest)


def _build_worldwide_pool(root: Path, manifest: dict[str, str]) -> dict[str, str]:
    from pipelines.demo.worldwide_pool import build_worldwide_pool  # CLDR names: make demo-worldwide's pool

    return build_worldwide_pool(root, manifest)


BUILDERS: list[Builder] = [build_sample_images, _build_sample_crawl, _build_planted_copies, _build_worldwide_pool]


def build_all(root: Path, manifest: dict[str, str]) -> dict[str, str]:
    """Run every registered builder in order; return the entries they add."""
    added: dict[str, str] = {}
    for builder in BUILDERS:
        added.update(builder(root, {**manifest, **added}))
    return added
