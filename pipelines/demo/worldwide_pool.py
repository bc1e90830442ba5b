"""Demo only: a worldwide sample pool for ``make demo-worldwide`` (MetaCLIP 2's curation).

The sample pool's emoji images carry English captions (their CLDR names). The ``emoji``
package (a dependency) also ships the Unicode CLDR annotations in other languages: this builder
adds, for every emoji of the sample pool, its real CLDR name in Spanish, French, Chinese and
Japanese as further pairs (the same image at a URL of its own, ``?lang=<code>``, so URL dedup
keeps them apart; the image server ignores the query). The clip-art and English emoji rows stay
as they are, so the pool mixes English with four other languages, two of them written without
spaces. Written to ``<data>/images/worldwide.parquet`` (uid, url, text, source, path, with the
source ``emoji_<lang>``); manifest key ``sample_worldwide_pool``.
"""

from __future__ import annotations

import json
from pathlib import Path

from storage.files import atomic_write

LANGUAGES = ("es", "fr", "zh", "ja")  # CLDR names added besides the English pool
FORMAT = 1


def emoji_of(path: str) -> str:
    """The emoji of a sample image path (``emoji/1f44d.png`` → 👍)."""
    return "".join(chr(int(code, 16)) for code in Path(path).stem.split("-"))


def build_worldwide_pool(root: Path, manifest: dict[str, str]) -> dict[str, str]:
    """Write the worldwide pool (skipped when it exists with this format and these languages)."""
    import emoji
    import pyarrow as pa
    import pyarrow.parquet as pq
    import xxhash

    out = root / "images" / "worldwide.parquet"
    settings = json.dumps({"format": FORMAT, "languages": LANGUAGES}).encode()
    if out.exists() and (pq.read_schema(out).metadata or {}).get(b"openwit_worldwide") == settings:
        return {"sample_worldwide_pool": str(out)}
    emoji.config.load_language(list(LANGUAGES))
    pool = pq.read_table(manifest["sample_pool"]).to_pylist()
    rows = list(pool)
    for row in pool:
        if row["source"] != "emoji":
            continue
        char = emoji_of(row["path"])
        names = emoji.EMOJI_DATA.get(char) or emoji.EMOJI_DATA.get(char + "\ufe0f") or {}
        for language in LANGUAGES:
            name = names.get(language)
            if not name:
                continue
            text = " ".join(name.strip(":").replace("_", " ").split())
            url = f"{row['url']}?lang={language}"
            rows.append({"uid": xxhash.xxh3_128_hexdigest(url.encode()), "url": url, "text": text,
                         "source": f"emoji_{language}", "path": row["path"]})
    table = pa.Table.from_pylist(rows).replace_schema_metadata({b"openwit_worldwide": settings})
    atomic_write(str(out), lambda f: pq.write_table(table, f))
    print(f"[sample-data] worldwide pool: {len(rows)} pairs ({len(rows) - len(pool)} CLDR names in "
          f"{', '.join(LANGUAGES)}) -> {out}", flush=True)
    return {"sample_worldwide_pool": str(out)}
