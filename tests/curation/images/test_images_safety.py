"""Release safety (curation/images/safety.py): hash-list removal (SHA-256 and PDQ), the removed-links
ledger and no retained bytes; NSFW scores and threshold; caption word list; faces recorded and
blurred -- on real photographs (scikit-image's bundled ones: ``astronaut`` has a face) and real
sample images, through the image stages as a run executes them."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import skimage.data
from PIL import Image

from curation.images.check import ImageCheckConfig, _decode, _scale, _to_bgr
from curation.images.download import DownloadConfig
from curation.images.politeness import PolitenessConfig
from curation.images.recipe import ImageStagesConfig, run_image_stages
from curation.images.safety import (
    FaceDetector,
    HashLists,
    NsfwScorer,
    SafetyConfig,
    blur_boxes,
    caption_rejects,
    pdq_hash,
    read_hash_list,
)
from curation.images.shards import ShardConfig
from curation.images.urlguard import UrlGuardConfig
from curation.stage import in_process, pipelined_in_process
from pipelines.serve_images import serving
from storage.layout import RunLayout

# Eileen Collins' face in skimage's astronaut (512 x 512), labelled by hand: x0, y0, x1, y1 as fractions
ASTRONAUT_FACE = (170 / 512, 60 / 512, 275 / 512, 170 / 512)


def jpeg(rgb: np.ndarray, quality: int = 90, scale: float = 1.0) -> bytes:
    image = Image.fromarray(rgb).convert("RGB")
    if scale != 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def bgr(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def laplacian_energy(gray: np.ndarray) -> float:
    return float(cv2.Laplacian(gray.astype(np.float64), cv2.CV_64F).var())


# -- the parts ---------------------------------------------------------------------------------


def test_hash_list_files_errors_name_the_line_never_its_content(tmp_path):
    good = tmp_path / "list.txt"
    digest = hashlib.sha256(b"x").hexdigest()
    good.write_text(f"# a comment\n\n{digest.upper()},extra,columns\n{digest}\n")
    hashes, identity = read_hash_list("sha256", str(good))
    assert hashes.tolist() == [bytes.fromhex(digest)]  # CSV first field, case-folded, distinct
    assert identity == {"name": "list.txt", "kind": "sha256", "entries": 1, "bytes": good.stat().st_size,
                        "sha256": hashlib.sha256(good.read_bytes()).hexdigest()}
    secret = "ab" * 20  # a SHA-1, not a SHA-256: the error must not repeat it
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{digest}\n{secret}\n")
    with pytest.raises(ValueError, match=r"bad.txt: line 2 is not a sha256 hash") as err:
        read_hash_list("sha256", str(bad))
    assert secret not in str(err.value)
    with pytest.raises(ValueError, match="KIND:PATH"):
        SafetyConfig(hash_lists=("photodna:x",))


def test_pdq_matches_within_the_threshold_only(tmp_path):
    rng = np.random.default_rng(0)
    listed = rng.integers(0, 256, (50, 32), dtype=np.uint8)
    path = tmp_path / "pdq.txt"
    path.write_text("\n".join(code.tobytes().hex() for code in listed))
    lists = HashLists((f"pdq:{path}",), pdq_threshold=31)
    target = listed[7]
    for flips, expected in ((0, True), (31, True), (32, False)):
        bits = np.unpackbits(target)
        bits[rng.choice(256, flips, replace=False)] ^= 1
        query = np.packbits(bits).tobytes()
        match = lists.match_pdq(query)
        assert (match is not None) == expected, flips
        if match:  # the image's own hash and its distance, never the listed entry
            assert (match.hash, match.distance, match.list, match.kind) == (query.hex(), flips, "pdq.txt", "pdq")


def test_caption_words_are_whole_words_case_insensitive(tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("# reviewed list\nnude\nadult content\n")
    texts = ["A NUDE study", "nudes", "denuded hillside", "adult  content", "Adult content, sample", None, ""]
    assert caption_rejects(texts, str(words)).tolist() == [True, False, False, False, True, False, False]
    assert caption_rejects(texts, None).tolist() == [False] * len(texts)


def test_face_found_on_the_astronaut_and_blurred_only_there():
    photo = bgr(skimage.data.astronaut())
    boxes = FaceDetector().boxes(photo)
    assert len(boxes) == 1 and iou(boxes[0], ASTRONAUT_FACE) > 0.5, boxes
    for name in ("coffee", "rocket", "immunohistochemistry"):  # no face in these photographs
        assert FaceDetector().boxes(bgr(getattr(skimage.data, name)())) == [], name
    blurred = blur_boxes(photo, boxes)
    x0, y0 = (int(np.floor(v * 512)) for v in boxes[0][:2])  # the box rounded outwards, as blur_boxes does
    x1, y1 = (int(np.ceil(v * 512)) for v in boxes[0][2:])
    inside = (slice(y0, y1), slice(x0, x1))
    gray, gray_blurred = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY), cv2.cvtColor(blurred, cv2.COLOR_BGR2GRAY)
    assert laplacian_energy(gray_blurred[inside]) < laplacian_energy(gray[inside]) / 20
    outside = np.ones(gray.shape, bool)
    outside[inside] = False
    assert np.array_equal(photo[outside], blurred[outside])


def test_nsfw_scores_are_recorded_for_photographs():
    scorer = NsfwScorer()
    for name in ("astronaut", "coffee", "chelsea"):
        score = scorer.score(bgr(getattr(skimage.data, name)()))
        assert 0.0 <= score <= 1.0 and score == round(score, 3)
        assert score < 0.2, (name, score)  # none of NudeNet's exposed classes in these


# -- through the image stages ------------------------------------------------------------------

SCALE = ImageCheckConfig()  # the default shard size (256): faces of >= 24 px at that size are found


@pytest.fixture(scope="module")
def site(tmp_path_factory, sample_images):
    """Files served on 127.0.0.1: real sample images (emoji, clip art) and photographs --
    two listed by SHA-256 (served as listed), two listed by PDQ (the list holds the originals'
    PDQ; the server has re-encoded, resized copies, so only the perceptual hash can match), the
    astronaut (a face) -- and the lists, the word list and the expected safety results."""
    root = tmp_path_factory.mktemp("safety-site")
    files: dict[str, bytes] = {}
    for rel in sample_images:
        files[f"sample/{rel}"] = (Path(sample_images.root) / rel).read_bytes()
    photos = {name: getattr(skimage.data, name)() for name in ("coffee", "chelsea", "rocket",
                                                                "immunohistochemistry", "astronaut")}
    files["photo/coffee.jpg"] = jpeg(photos["coffee"])
    files["photo/chelsea.jpg"] = jpeg(photos["chelsea"])
    files["photo/rocket.jpg"] = jpeg(photos["rocket"], quality=70, scale=0.7)
    files["photo/immunohistochemistry.jpg"] = jpeg(photos["immunohistochemistry"], quality=70, scale=0.7)
    files["photo/astronaut.jpg"] = jpeg(photos["astronaut"])
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    lists = root.parent / f"{root.name}-lists"
    lists.mkdir()
    decoy = hashlib.sha256(b"not served anywhere").hexdigest()
    (lists / "sha.txt").write_text("\n".join([hashlib.sha256(files["photo/coffee.jpg"]).hexdigest(),
                                              hashlib.sha256(files["photo/chelsea.jpg"]).hexdigest(), decoy]) + "\n")
    pdq = {name: pdq_hash(bgr(photos[name]))[0].hex() for name in ("rocket", "immunohistochemistry")}
    (lists / "pdq.txt").write_text("\n".join(pdq.values()) + "\n")
    (lists / "words.txt").write_text("nude\n")
    return {"root": root, "files": files, "lists": lists, "decoy": decoy, "pdq": pdq}


@pytest.fixture(scope="module")
def sample_images(request):
    """A few real sample images (emoji and clip art) from the sample data, the one that NudeNet
    scores highest among them first (it gives the threshold test a real reject)."""
    sample = request.getfixturevalue("sample")
    pool = pq.read_table(sample["sample_pool"]).to_pylist()
    picked = sorted({r["path"] for r in pool if r["source"] == "emoji"})[:6]
    picked += sorted({r["path"] for r in pool if r["source"] == "openclipart"})[:6]
    picked += ["emoji/a9-fe0f.png"]  # the copyright sign: NudeNet's highest score in the sample data (a false positive)

    class Images(list):
        root = sample["sample_images_dir"]

    return Images(picked)


def scaled(data: bytes) -> np.ndarray:
    """The image as the safety checks see it: decoded and scaled to the shard size, no border."""
    return _scale(_to_bgr(_decode(data, Image.open(io.BytesIO(data)))), SCALE)


def run(out: Path, site: dict, safety: SafetyConfig, paths: list[str]) -> tuple[RunLayout, dict]:
    layout = RunLayout(str(out))
    with serving(site["root"], port=0) as base:
        urls = [f"{base}/{p}" for p in paths]
        captions = [f"picture of {p.rsplit('/', 1)[-1].split('.')[0]}" for p in paths]
        captions[0] = "a nude figure study"  # the caption word list's one hit
        layout.write_parquet(pa.table({"uid": [f"{i:032x}" for i in range(len(paths))], "url": urls, "text": captions,
                                       "query_ids": pa.array([[i % 3] for i in range(len(paths))], pa.list_(pa.int32())),
                                       "source": ["test"] * len(paths)}), layout.part(0))
        config = ImageStagesConfig(
            guard=UrlGuardConfig(allow_networks=("127.0.0.1",)),
            download=DownloadConfig(processes=1, threads=4, shard_size=8, distributor="multiprocessing",
                                    politeness=PolitenessConfig(unlimited_hosts=("127.0.0.1",))),
            shards=ShardConfig(shard_size=8), safety=safety, report=False)
        run_image_stages(layout, config, pipelined_in_process, map_tasks=in_process)
    return layout, dict(zip(paths, (f"{i:032x}" for i in range(len(paths)))))


def shard_samples(layout: RunLayout) -> dict[str, dict]:
    """uid → {json, jpg} of every sample in the final shards."""
    out = {}
    for tar in layout.list(layout.split_dir("shards"), ".tar"):
        members: dict[str, dict] = {}
        with tarfile.open(layout.path(tar)) as f:
            for m in f.getmembers():
                key, _, ext = m.name.partition(".")
                members.setdefault(key, {})[ext] = f.extractfile(m).read()
        for sample in members.values():
            meta = json.loads(sample["json"])
            out[meta["uid"]] = {"json": meta, "jpg": sample["jpg"]}
    return out


def rows_of(layout: RunLayout, directory: str) -> list[dict]:
    files = layout.list(directory, ".parquet")
    return [r for f in files for r in layout.read_parquet(f).to_pylist()]


def test_release_safety_through_the_image_stages(tmp_path, site):
    paths = sorted(site["files"], key=lambda p: (p.startswith("photo/"), p))  # a sample image first: its caption hits
    words = str(site["lists"] / "words.txt")
    # the threshold just under the highest NSFW score among the images: at least one real reject
    scores = {p: NsfwScorer().score(scaled(site["files"][p])) for p in paths}
    threshold = round(max(scores.values()) - 0.01, 3)
    assert threshold > 0.2
    safety = SafetyConfig(hash_lists=(f"sha256:{site['lists'] / 'sha.txt'}", f"pdq:{site['lists'] / 'pdq.txt'}"),
                          nsfw_threshold=threshold, nsfw_words=words)
    layout, uid = run(tmp_path / "run", site, safety, paths)
    stats = {s: layout.read_json(layout.stats(s)) for s in
             ("safetytext", "urlguard", "download", "hashlist", "imagecheck", "safety", "imagededup", "shards")}

    # the caption word list: the first row, never fetched
    assert [r["uid"] for r in rows_of(layout, layout.rejects_dir("safetytext"))] == [uid[paths[0]]]
    assert stats["safetytext"]["rejected"] == {"nsfw_caption": 1}
    assert stats["safetytext"]["words"]["entries"] == 1 and stats["urlguard"]["in"] == len(paths) - 1

    # hash lists: exactly the four listed photographs removed, with the matched hash, in the ledger
    listed = {"photo/coffee.jpg": "sha256", "photo/chelsea.jpg": "sha256", "photo/rocket.jpg": "pdq",
              "photo/immunohistochemistry.jpg": "pdq"}
    rejected = {r["uid"]: r["reason"] for r in rows_of(layout, layout.rejects_dir("hashlist"))}
    assert rejected == {uid[p]: "hashlist_match" for p in listed}
    ledger = {r["uid"]: r for r in rows_of(layout, layout.removed_dir)}
    assert set(ledger) == set(rejected)
    for path, kind in listed.items():
        row = ledger[uid[path]]
        assert row["kind"] == kind and row["source"] == "download" and row["url"].endswith(path)
        if kind == "sha256":
            assert row["hash"] == hashlib.sha256(site["files"][path]).hexdigest() and row["distance"] == 0
            assert row["list"] == "sha.txt"
        else:  # a re-encoded, resized copy: only PDQ matches, at a non-zero distance; the ledger holds the
            # image's own PDQ (never the list's entry), its distance to the listed one
            own = pdq_hash(scaled(site["files"][path]))[0]
            listed_code = bytes.fromhex(site["pdq"][path.rsplit("/", 1)[-1].split(".")[0]])
            distance = int(np.unpackbits(np.frombuffer(own, np.uint8) ^ np.frombuffer(listed_code, np.uint8)).sum())
            assert row["hash"] == own.hex() and row["distance"] == distance and 0 < distance <= 31
            assert row["list"] == "pdq.txt"
    assert [x["name"] for x in stats["hashlist"]["lists"]] == ["sha.txt", "pdq.txt"]
    assert stats["hashlist"]["lists"][0]["entries"] == 3 and stats["hashlist"]["rejected"] == {"hashlist_match": 4}

    # none of their bytes, nor the lists, anywhere in the run dir; no fetched bytes kept at all
    everything = [(p, p.read_bytes()) for p in Path(layout.root).rglob("*") if p.is_file()]
    assert not [p for p in Path(layout.root, "curation", "download").rglob("*.tar")]
    for path in listed:
        assert not [p for p, data in everything if site["files"][path] in data], path
    for listed_hash in [site["decoy"], *site["pdq"].values()]:  # no list entry (unless an image's own hash)
        assert not [p for p, data in everything if listed_hash.encode() in data or bytes.fromhex(listed_hash) in data]
    assert str(site["lists"]) not in (Path(layout.root) / "curation" / "images_fingerprint.json").read_text()
    checked_uids = {r["uid"] for f in layout.list(layout.cur("checked"), ".parquet")
                    for r in layout.read_parquet(f, ["uid"]).to_pylist()}
    assert not checked_uids & set(rejected)

    # NSFW: every kept image scored; exactly the images over the threshold rejected
    over = {uid[p] for p, s in scores.items() if s > threshold and p != paths[0] and p not in listed}
    assert over and {r["uid"] for r in rows_of(layout, layout.rejects_dir("safety"))} == over
    assert stats["safety"]["rejected"] == {"nsfw": len(over)}
    assert stats["safety"]["scored"] == stats["safety"]["in"] and stats["safety"]["nsfw_threshold"] == threshold

    # every sample carries its digest, score and face boxes; the astronaut's face is found
    samples = shard_samples(layout)
    for path, u in uid.items():
        if u in samples:
            meta = samples[u]["json"]
            assert meta["sha256"] == hashlib.sha256(site["files"][path]).hexdigest()
            assert meta["nsfw_score"] == scores[path] and isinstance(meta["face_bboxes"], list)
    face = samples[uid["photo/astronaut.jpg"]]["json"]["face_bboxes"]
    assert len(face) == 1 and iou(face[0], ASTRONAUT_FACE) > 0.5
    assert stats["safety"]["images_with_faces"] >= 1 and stats["safety"]["faces"] >= 1
    index = pq.read_table(layout.path(layout.shard_index(0))).column_names
    assert {"md5", "sha1", "sha256", "pdq", "nsfw_score", "face_bboxes"} <= set(index)

    # the ledgers balance and chain
    chain = list(stats)
    for a, b in zip(chain, chain[1:]):
        assert stats[a]["out"] == stats[b]["in"], (a, b)
    for name, s in stats.items():
        assert s["in"] == s["out"] + sum(s["rejected"].values()), name

    # the run's datasheet carries the same numbers
    sheet = json.loads(Path(layout.datasheet_json).read_text())
    assert {s["stage"]: [s["in"], s["out"], s["rejected"]] for s in sheet["stages"]}["hashlist"] == [
        stats["hashlist"]["in"], stats["hashlist"]["out"], stats["hashlist"]["rejected"]]
    assert "sha.txt" in Path(layout.datasheet_md).read_text() and site["decoy"] not in Path(layout.datasheet_md).read_text()

    # --blur-faces: the astronaut's face region blurred in the shard image, the rest unchanged
    blur, blur_uid = run(tmp_path / "blurred", site, SafetyConfig(blur_faces=True, nsfw_threshold=1.0),
                         ["photo/coffee.jpg", "photo/astronaut.jpg"])
    plain = cv2.imdecode(np.frombuffer(samples[uid["photo/astronaut.jpg"]]["jpg"], np.uint8), cv2.IMREAD_GRAYSCALE)
    blurred = cv2.imdecode(np.frombuffer(shard_samples(blur)[blur_uid["photo/astronaut.jpg"]]["jpg"], np.uint8),
                           cv2.IMREAD_GRAYSCALE)
    x0, y0 = (int(np.floor(v * 256)) for v in face[0][:2])  # as blur_boxes rounds the box: outwards
    x1, y1 = (int(np.ceil(v * 256)) for v in face[0][2:])
    assert laplacian_energy(blurred[y0:y1, x0:x1]) < laplacian_energy(plain[y0:y1, x0:x1]) / 10
    # JPEG codes 16 x 16 blocks on their own: blocks clear of the box decode to the same pixels
    mask = np.ones(plain.shape, bool)
    mask[y0 // 16 * 16:-(-y1 // 16) * 16, x0 // 16 * 16:-(-x1 // 16) * 16] = False
    assert np.array_equal(plain[mask], blurred[mask])
    assert blur.read_json(blur.stats("safety"))["blur_faces"] is True
