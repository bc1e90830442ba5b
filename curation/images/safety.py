"""Release safety: hash-list removal, NSFW scores and filter, faces (boxes and blur), caption words.

Three accounted stages of the image half (:data:`curation.stage.IMAGE_STAGES`):

- ``safetytext`` (before the download, with ``--nsfw-words``): a caption holding a listed word or
  phrase (whole words, case-insensitive) is rejected, reason ``nsfw_caption``, and never fetched;
- ``hashlist`` (right after the download, on every fetched image): the MD5, SHA-1 and SHA-256 of
  the bytes as fetched and the PDQ hash of the decoded image are matched against user-supplied
  hash lists (``--hash-list KIND:URI``); a match is rejected (``hashlist_match``) and recorded in
  the removed-links ledger (``curation/removed/``: uid, URL, list name, kind, the list's matched
  hash, distance) -- never its bytes, which are deleted from the run's scratch with the rest of the
  download shard's fetched bytes. The lists are read by each worker and never written anywhere:
  the run records only their identity (:meth:`HashLists.identity`: name, kind, entries, SHA-256);
- ``safety`` (after the image check, on every kept image): NudeNet's detector (its ONNX model
  ships in the ``nudenet`` wheel; CPU, one thread per worker) gives ``nsfw_score``, the highest
  score of its exposed-nudity classes (0 when none is detected at its 0.2 floor); above
  ``--nsfw-threshold`` the image is rejected (``nsfw``). OpenCV's frontal-face Haar cascade (it
  ships in the OpenCV wheel) gives ``face_bboxes`` (DataComp's convention: ``[x0, y0, x1, y1]``
  as fractions of the image's width and height), and with ``--blur-faces`` the boxes are blurred
  in the shard image.

Every fetched image also carries its ``md5``, ``sha1``, ``sha256`` and ``pdq`` (hex) into the
shards' index, so a later takedown by hash (``pipelines/takedown.py``) can find it.

The models see the checked image at its shard size (``--image-size``, before the border), so
faces smaller than about 24 px there are not found. Scores are rounded (2 decimals for NSFW, 4
for box fractions) so shard bytes do not depend on float noise (:class:`NsfwScorer` says where
that still can reach them). A PDQ hash of quality under ``pdq_min_quality`` (a flat, near-blank
image) is not matched: its bits say little and would match any other blank; PDQ is computed for
images the check can decode, so a listed image that is, say, too small is rejected by the check
(the digests match it before that, whatever it is).
"""

from __future__ import annotations

import functools
import hashlib
import posixpath
import re
from dataclasses import dataclass

import numpy as np

HASH_KINDS = ("md5", "sha1", "sha256", "pdq")
HEX_DIGITS = {"md5": 32, "sha1": 40, "sha256": 64, "pdq": 64}
NSFW_CLASSES = ("FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED",
                "BUTTOCKS_EXPOSED", "ANUS_EXPOSED")  # NudeNet's classes that make an image NSFW here
NSFW_DETECTOR = "nudenet 3.4 (320n.onnx), highest score of " + ", ".join(NSFW_CLASSES)
FACE_DETECTOR = "OpenCV haarcascade_frontalface_default (scale 1.1, 5 neighbours, >= 24 px)"
FACE_MIN_SIZE = 24  # px, at the shard image's size


@dataclass(frozen=True)
class SafetyConfig:
    """The release-safety stages' settings."""

    hash_lists: tuple[str, ...] = ()  # KIND:URI (KIND md5|sha1|sha256|pdq; one hex hash per line, # comments); matches are removed (hashlist_match), the lists never copied into the run
    pdq_threshold: int = 31  # a PDQ hash matches a list entry within this Hamming distance (of 256 bits; ThreatExchange's 31)
    pdq_min_quality: int = 50  # PDQ hashes of lower quality (flat, near-blank images) are not matched (ThreatExchange's advice)
    nsfw: bool = True  # score every checked image with NudeNet's detector (nsfw_score in the metadata)
    nsfw_threshold: float = 0.6  # reject images whose nsfw_score is above this (reason nsfw); 1: score only
    nsfw_words: str | None = None  # caption word list (one word or phrase per line): such captions are rejected before download (nsfw_caption)
    faces: bool = True  # detect faces (OpenCV's frontal-face cascade) and record face_bboxes
    blur_faces: bool = False  # blur the detected faces in the shard images

    def __post_init__(self):
        for spec in self.hash_lists:
            parse_hash_list_spec(spec)
        if not 0 <= self.pdq_threshold <= 128:
            raise ValueError(f"pdq_threshold must be in 0..128, got {self.pdq_threshold}")
        if not 0 <= self.nsfw_threshold <= 1:
            raise ValueError(f"nsfw_threshold must be in 0..1, got {self.nsfw_threshold}")
        if self.blur_faces and not self.faces:
            raise ValueError("blur_faces needs faces (the detector finds what to blur)")


def parse_hash_list_spec(spec: str) -> tuple[str, str]:
    """``KIND:URI`` → (kind, uri); an unknown kind is an error naming the flag's value."""
    kind, sep, uri = spec.partition(":")
    if not sep or kind.lower() not in HASH_KINDS or not uri:
        raise ValueError(f"--hash-list {spec!r}: expected KIND:PATH with KIND one of {', '.join(HASH_KINDS)}")
    return kind.lower(), uri


def read_list_file(uri: str, what: str = "") -> bytes:
    """A list file's bytes (a path or fsspec URI); an unreadable one is FileNotFoundError naming
    it and ``what`` it is, never its content."""
    import fsspec

    try:
        with fsspec.open(uri, "rb") as f:
            return f.read()
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"{uri}: cannot read{' ' + what if what else ''} ({type(err).__name__})") from None


def file_identity(uri: str, data: bytes, **extra) -> dict:
    """What a run records of a list it was given: its file name (no directory, no query string:
    a signed URL's token stays out), size and SHA-256, never its content."""
    from urllib.parse import urlsplit

    return {"name": posixpath.basename(urlsplit(uri).path.rstrip("/")) or "list", **extra, "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def read_hash_list(kind: str, uri: str) -> tuple[np.ndarray, dict]:
    """The distinct hashes of one list (bytes, sorted) and its identity. One hex hash per line;
    blank lines and ``#`` comments are skipped and a CSV line counts by its first field. A line
    that is not a ``kind`` hash is an error naming the file and line number -- never the line,
    which may hold a listed hash."""
    data = read_list_file(uri)
    width = HEX_DIGITS[kind]
    hashes = []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        field = line.split("#", 1)[0].split(",", 1)[0].strip().lower()
        if not field:
            continue
        if len(field) != width or re.fullmatch(r"[0-9a-f]+", field) is None:
            raise ValueError(f"{uri}: line {number} is not a {kind} hash ({width} hex digits expected)")
        hashes.append(bytes.fromhex(field))
    distinct = np.unique(np.array(hashes, dtype=f"S{width // 2}")) if hashes else np.zeros(0, f"S{width // 2}")
    return distinct, file_identity(uri, data, kind=kind, entries=len(distinct))


def list_identities(config: SafetyConfig) -> dict:
    """The identity of every list the run was given (:func:`file_identity`: name, kind,
    entries, bytes, SHA-256), read here once (the fingerprint and the stats record them)."""
    hash_lists = []
    for spec in config.hash_lists:
        kind, uri = parse_hash_list_spec(spec)
        hash_lists.append(read_hash_list(kind, uri)[1])
    words = read_words(config.nsfw_words)[1] if config.nsfw_words else None
    return {"hash_list_files": hash_lists, "nsfw_words_file": words}


def safety_fingerprint(config: SafetyConfig) -> dict:
    """The settings that decide the safety stages' results, the lists by identity (their
    digests), never by path: a run dir must not hold a list's location (a signed URL, say)."""
    from dataclasses import asdict

    return {**{k: v for k, v in asdict(config).items() if k not in ("hash_lists", "nsfw_words")},
            **list_identities(config)}


@dataclass(frozen=True)
class Match:
    """A hash-list match: the list's name and kind, the listed hash (hex) and the distance."""

    list: str
    kind: str
    hash: str
    distance: int = 0


class HashLists:
    """The run's hash lists, loaded once per worker: exact sets for the digests, a faiss binary
    index for PDQ (all entries within ``pdq_threshold`` bits are found; the nearest one, then the
    first list, is the match)."""

    def __init__(self, specs: tuple[str, ...], pdq_threshold: int = 31, expected: tuple[str, ...] = ()):
        self.pdq_threshold = pdq_threshold
        self.exact: dict[str, dict[bytes, str]] = {k: {} for k in ("md5", "sha1", "sha256")}
        self.identity: list[dict] = []
        pdq_codes, pdq_names = [], []
        for spec in specs:
            kind, uri = parse_hash_list_spec(spec)
            hashes, identity = read_hash_list(kind, uri)
            if expected and identity["sha256"] != expected[len(self.identity)]:
                raise ValueError(f"hash list {identity['name']} changed since the run recorded it "
                                 "(its SHA-256 differs): start the run again")
            self.identity.append(identity)
            if kind == "pdq":
                pdq_codes.append(hashes)
                pdq_names += [identity["name"]] * len(hashes)
            else:
                for h in hashes.tolist():
                    self.exact[kind].setdefault(h, identity["name"])
        self.pdq_names = pdq_names
        self.pdq_codes = (np.frombuffer(b"".join(c.tobytes() for c in pdq_codes), np.uint8).reshape(-1, 32)
                          if pdq_names else np.zeros((0, 32), np.uint8))
        self.index = None
        if pdq_names:
            import faiss

            self.index = faiss.IndexBinaryFlat(256)
            self.index.add(self.pdq_codes)

    def __bool__(self) -> bool:
        return bool(self.identity)

    def match_digests(self, digests: dict[str, bytes]) -> Match | None:
        for kind in ("sha256", "sha1", "md5"):
            name = self.exact[kind].get(digests[kind])
            if name is not None:
                return Match(name, kind, digests[kind].hex())
        return None

    def match_pdq(self, code: bytes) -> Match | None:
        """The nearest listed PDQ hash within the threshold: the match records the image's own
        hash and the distance (never the listed entry, which only the list's holder has)."""
        if self.index is None:
            return None
        query = np.frombuffer(code, np.uint8).reshape(1, 32)
        _, distances, ids = self.index.range_search(query, self.pdq_threshold + 1)  # distance < radius
        if not len(ids):
            return None
        best = int(np.lexsort((ids, distances))[0])
        return Match(self.pdq_names[int(ids[best])], "pdq", code.hex(), int(distances[best]))


def digests(data: bytes) -> dict[str, bytes]:
    """MD5, SHA-1 and SHA-256 of the bytes as fetched (the hash-sharing bodies' cryptographic hashes)."""
    return {"md5": hashlib.md5(data).digest(), "sha1": hashlib.sha1(data).digest(),
            "sha256": hashlib.sha256(data).digest()}


def pdq_hash(bgr: np.ndarray) -> tuple[bytes, int]:
    """Meta's PDQ hash (``pdqhash``, ThreatExchange's C++ through Cython) of a BGR image: 32
    bytes and the hash's quality (0-100)."""
    import pdqhash

    bits, quality = pdqhash.compute(np.ascontiguousarray(bgr[:, :, ::-1]))
    return np.packbits(bits.astype(np.uint8)).tobytes(), int(quality)


def read_words(uri: str) -> tuple[re.Pattern | None, dict]:
    """A caption word list: one word or phrase per line (``#`` comments, blank lines skipped),
    matched as whole words, case-insensitively; returns the compiled pattern and the list's identity."""
    data = read_list_file(uri)
    words = sorted({line.split("#", 1)[0].strip().lower() for line in data.decode("utf-8").splitlines()} - {""})
    pattern = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(w) for w in words) + r")(?!\w)",
                         re.IGNORECASE) if words else None
    return pattern, file_identity(uri, data, entries=len(words))


@functools.lru_cache(maxsize=4)
def worker_words(uri: str) -> tuple[re.Pattern | None, dict]:
    """The caption word list, read once per worker process."""
    return read_words(uri)


@functools.lru_cache(maxsize=4)
def worker_hash_lists(specs: tuple[str, ...], pdq_threshold: int, expected: tuple[str, ...] = ()) -> HashLists:
    """The run's hash lists, read once per worker process (the engine ships a fresh task
    object with every task; this cache lives as long as the worker) and checked against the
    digests the run recorded (``expected``), so every worker matches against the same lists."""
    return HashLists(specs, pdq_threshold, expected)


def caption_rejects(texts: list, words_uri: str | None) -> np.ndarray:
    """Which captions hold a listed word (``nsfw_caption``); all False without a list."""
    if not words_uri:
        return np.zeros(len(texts), bool)
    pattern, _ = worker_words(words_uri)
    if pattern is None:
        return np.zeros(len(texts), bool)
    return np.array([bool(t) and pattern.search(t) is not None for t in texts], bool)


class NsfwScorer:
    """NudeNet's detector on one CPU thread: ``score(bgr)`` = the highest confidence of the
    :data:`NSFW_CLASSES` it detects, rounded to 2 decimals (0.0 when none). Rounded because
    onnxruntime's CPU kernels differ in the last float bits between instruction sets: on one
    kind of CPU the score is exact and repeatable; across kinds, a score on a rounding (or
    threshold) boundary could still differ -- a cluster of mixed CPUs should be told so."""

    def __init__(self):
        import os

        import nudenet
        import onnxruntime
        from nudenet import NudeDetector

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1  # one worker per core
        self.detector = NudeDetector.__new__(NudeDetector)  # its pre/post-processing, our session
        self.detector.onnx_session = onnxruntime.InferenceSession(
            os.path.join(os.path.dirname(nudenet.__file__), "320n.onnx"), options, providers=["CPUExecutionProvider"])
        self.detector.input_width = self.detector.input_height = 320
        self.detector.input_name = self.detector.onnx_session.get_inputs()[0].name

    def score(self, bgr: np.ndarray) -> float:
        found = [d["score"] for d in self.detector.detect(bgr) if d["class"] in NSFW_CLASSES]
        return round(float(max(found)), 2) if found else 0.0


class FaceDetector:
    """OpenCV's frontal-face Haar cascade: ``boxes(bgr)`` → ``[[x0, y0, x1, y1], …]`` as
    fractions of the width and height (4 decimals), sorted top to bottom, left to right. Run on
    the image before its border, the fractions are those of the original image (DataComp's
    ``face_bboxes``), not of a "border"-mode shard JPEG's padded square."""

    def __init__(self):
        import cv2

        self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
        if self.cascade.empty():
            raise RuntimeError("OpenCV's haarcascade_frontalface_default.xml did not load")

    def boxes(self, bgr: np.ndarray) -> list[list[float]]:
        import cv2

        height, width = bgr.shape[:2]
        if min(height, width) < FACE_MIN_SIZE:
            return []
        found = self.cascade.detectMultiScale(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), scaleFactor=1.1,
                                              minNeighbors=5, minSize=(FACE_MIN_SIZE, FACE_MIN_SIZE))
        boxes = sorted((int(y), int(x), int(w), int(h)) for x, y, w, h in (found if len(found) else []))
        return [[round(x / width, 4), round(y / height, 4), round((x + w) / width, 4), round((y + h) / height, 4)]
                for y, x, w, h in boxes]


def blur_boxes(bgr: np.ndarray, boxes: list[list[float]]) -> np.ndarray:
    """``bgr`` with each box (fractions) replaced by a strong Gaussian blur of itself (sigma a
    quarter of the box's shorter side), so a face is no longer recognisable; pixels outside the
    boxes are unchanged."""
    import cv2

    out = bgr.copy()
    height, width = bgr.shape[:2]
    for x0, y0, x1, y1 in boxes:
        left, top = max(0, int(np.floor(x0 * width))), max(0, int(np.floor(y0 * height)))
        right, bottom = min(width, int(np.ceil(x1 * width))), min(height, int(np.ceil(y1 * height)))
        if right <= left or bottom <= top:
            continue
        sigma = max(2.0, min(right - left, bottom - top) / 4)
        out[top:bottom, left:right] = cv2.GaussianBlur(np.ascontiguousarray(bgr[top:bottom, left:right]), (0, 0),
                                                       sigmaX=sigma, borderType=cv2.BORDER_REPLICATE)
    return out


class Rejected(Exception):
    """An image a safety check removes: ``reason`` and, for a hash-list match, the :class:`Match`."""

    def __init__(self, reason: str, match: Match | None = None):
        super().__init__(reason)
        self.reason, self.match = reason, match


class SafetyInspector:
    """The per-image safety work inside the image check, on the checked image at its shard size
    (before the border): the PDQ hash and its list match (:class:`Rejected` ``hashlist_match``),
    the NSFW score (:class:`Rejected` ``nsfw`` above the threshold), the face boxes and, with
    ``blur_faces``, the blurred image. ``__call__(bgr)`` → (metadata fields, image to store or
    None when unchanged)."""

    def __init__(self, config: SafetyConfig, list_digests: tuple[str, ...] = ()):
        self.config = config
        self.lists = worker_hash_lists(config.hash_lists, config.pdq_threshold, list_digests)
        self.nsfw = NsfwScorer() if config.nsfw else None
        self.faces = FaceDetector() if config.faces else None
        self.blurred = 0  # images whose faces this inspector blurred

    def __call__(self, bgr: np.ndarray) -> tuple[dict, np.ndarray | None]:
        code, quality = pdq_hash(bgr)
        match = self.lists.match_pdq(code) if quality >= self.config.pdq_min_quality else None
        if match is not None:
            raise Rejected("hashlist_match", match)
        fields = {"pdq": code.hex(), "pdq_quality": quality, "nsfw_score": None, "face_bboxes": None}
        if self.nsfw is not None:
            fields["nsfw_score"] = score = self.nsfw.score(bgr)  # 2 decimals: see NsfwScorer
            if score > self.config.nsfw_threshold:
                raise Rejected("nsfw")
        replaced = None
        if self.faces is not None:
            fields["face_bboxes"] = boxes = self.faces.boxes(bgr)
            if boxes and self.config.blur_faces:
                replaced = blur_boxes(bgr, boxes)
                self.blurred += 1
        return fields, replaced
