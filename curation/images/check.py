"""Decode, guard and resize downloaded images; compute the hashes image dedup needs.

:class:`ImageChecker` takes an Arrow table ``(uid, image: binary)`` of fetched bytes and returns

- kept rows: ``uid, jpg`` (the resized JPEG), ``width, height, original_width,
  original_height, pixel_hash`` (xxh3-128 of the decoded pixels + their shape, for exact dedup),
  ``phash`` (64-bit perceptual hash, 8 bytes, for near-duplicate dedup);
- rejected rows: ``uid, reason`` with reason one of ``not_an_image`` (HTML, text, unknown
  format), ``missing_image`` (no bytes), ``decompression_bomb`` (more than ``max_pixels`` pixels, refused from the header
  before any pixel is decoded), ``corrupt_image`` (truncated or broken data), ``image_too_small``
(shorter side under ``min_image_size``), ``aspect_ratio`` (longer side over ``max_aspect_ratio``
times the shorter) -- both from the header, before decoding;
- with the release-safety checks (:class:`ImageChecker` ``safety``): ``hashlist_match`` and
  ``nsfw`` rejects, the hash-list matches, and the kept rows' digests, PDQ hash, NSFW score and
  face boxes (:mod:`curation.images.safety`).

Nothing raises on bad bytes: every row ends up kept or rejected with a reason.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
import pyarrow as pa
import xxhash
from PIL import Image, ImageFile, UnidentifiedImageError

from curation.images.phash import phash_code

RESIZE_MODES = ("border", "keep_ratio")
KEPT_SCHEMA = pa.schema([
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("original_width", pa.int32()),
    ("original_height", pa.int32()),
    ("pixel_hash", pa.binary(16)),
    ("phash", pa.binary(8)),
    ("jpg", pa.binary()),
])


@dataclass(frozen=True)
class ImageCheckConfig:
    """How images are validated and resized."""

    image_size: int = 256  # output side: longest side for "border" (padded square), shortest for "keep_ratio"
    resize_mode: str = "border"  # "border": fit in a white square (img2dataset's "border", white); "keep_ratio": shortest side
    max_pixels: int = 89_478_485  # decompression-bomb limit, width*height (Pillow's default)
    min_image_size: int = 32  # reject images whose shorter side is smaller, in px (DataComp's basic filter: 200)
    max_aspect_ratio: float = 3.0  # reject images whose longer side is more than this times the shorter (DataComp's: 3)
    jpeg_quality: int = 95  # quality of the re-encoded JPEG (img2dataset's default)

    def __post_init__(self):
        if self.min_image_size < 1 or self.max_aspect_ratio < 1:
            raise ValueError("min_image_size must be >= 1 and max_aspect_ratio >= 1")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")


def _decode(data: bytes, header: Image.Image) -> np.ndarray | None:
    """Pixels as uint8 HxW, HxWx3 (BGR) or HxWx4 (BGRA): OpenCV first (fast), Pillow for
    what OpenCV cannot read (e.g. GIF); None when neither can (corrupt / truncated data)."""
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        try:
            header.seek(0)  # first frame of animations
            header.load()
            rgba = header.convert("RGBA")
        except (OSError, SyntaxError, ValueError, EOFError):
            return None
        pixels = cv2.cvtColor(np.asarray(rgba), cv2.COLOR_RGBA2BGRA)
    if pixels.dtype != np.uint8:  # 16-bit PNG/TIFF
        pixels = (pixels >> 8).astype(np.uint8) if pixels.dtype == np.uint16 else pixels.astype(np.uint8)
    return pixels


def _to_bgr(pixels: np.ndarray) -> np.ndarray:
    """3-channel BGR, transparency composited on white (as img2dataset's alpha matting)."""
    if pixels.ndim == 2:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    if pixels.shape[2] == 4:  # bgr * a/255 + (255 - a), in saturating uint8 OpenCV ops (fast)
        alpha = cv2.merge([pixels[:, :, 3]] * 3)
        return cv2.add(cv2.multiply(pixels[:, :, :3], alpha, scale=1 / 255), cv2.bitwise_not(alpha))
    return pixels


def _scale(pixels: np.ndarray, config: ImageCheckConfig) -> np.ndarray:
    """The image scaled to its shard size (longest side ``image_size`` for "border", shortest
    for "keep_ratio"), before any border."""
    height, width = pixels.shape[:2]
    side = config.image_size
    scale = side / (min(width, height) if config.resize_mode == "keep_ratio" else max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LANCZOS4)


def _pad(scaled: np.ndarray, config: ImageCheckConfig) -> np.ndarray:
    """"border": the scaled image centred in a white ``image_size`` square; "keep_ratio": as is."""
    if config.resize_mode == "keep_ratio":
        return scaled
    side = config.image_size
    height, width = scaled.shape[:2]
    top, left = (side - height) // 2, (side - width) // 2
    return cv2.copyMakeBorder(scaled, top, side - height - top, left, side - width - left,
                              cv2.BORDER_CONSTANT, value=(255, 255, 255))


def check_image(data: bytes, config: ImageCheckConfig, inspect=None) -> dict | str:
    """Check and resize one image: a dict of the :data:`KEPT_SCHEMA` fields, or a reject reason.

    The size comes from the header (Pillow, lazy) and is checked *before* any pixel is decoded.
    ``inspect`` (:class:`curation.images.safety.SafetyInspector`) sees the image scaled to its
    shard size, before the border: its fields are added to the result, and the image it returns
    (faces blurred) is the one stored; it may raise :class:`~curation.images.safety.Rejected`.
    The pHash (dedup) is the unblurred image's."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            header = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return "decompression_bomb"
    except UnidentifiedImageError:
        return "not_an_image"
    except (OSError, SyntaxError, ValueError):
        return "corrupt_image"
    width, height = header.size
    if width * height > config.max_pixels:
        return "decompression_bomb"
    if min(width, height) < config.min_image_size:
        return "image_too_small"
    if max(width, height) > config.max_aspect_ratio * min(width, height):
        return "aspect_ratio"
    pixels = _decode(data, header)
    if pixels is None:
        return "corrupt_image"
    digest = xxhash.xxh3_128(repr(pixels.shape).encode())
    digest.update(np.ascontiguousarray(pixels).data)
    scaled = _scale(_to_bgr(pixels), config)
    resized = _pad(scaled, config)
    rgb = Image.fromarray(cv2.cvtColor(resized, cv2.COLOR_BGR2RGB))
    phash = phash_code(rgb)
    fields: dict = {}
    if inspect is not None:
        fields, replaced = inspect(scaled)
        if replaced is not None:
            resized = _pad(replaced, config)
    ok, jpg = cv2.imencode(".jpg", resized, [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality])
    if not ok:
        return "corrupt_image"
    return {
        "width": resized.shape[1], "height": resized.shape[0],
        "original_width": width, "original_height": height,
        "pixel_hash": digest.digest(), "phash": phash, "jpg": jpg.tobytes(), **fields,
    }


SAFETY_SCHEMA = pa.schema([  # what the release-safety checks add (curation/images/safety.py)
    ("md5", pa.string()),
    ("sha1", pa.string()),
    ("sha256", pa.string()),
    ("pdq", pa.string()),
    ("pdq_quality", pa.int16()),
    ("nsfw_score", pa.float64()),
    ("face_bboxes", pa.list_(pa.list_(pa.float64()))),
])
REMOVED_SCHEMA = pa.schema([("uid", pa.string()), ("list", pa.string()), ("kind", pa.string()),
                            ("hash", pa.string()), ("distance", pa.int32())])


class ImageChecker:
    """Callable over an Arrow table ``(uid, image)`` → (kept, rejected, removed) tables; see the
    module docstring for the kept and rejected columns.

    With ``safety`` (:class:`curation.images.safety.SafetyConfig`) every image's bytes are
    hashed (MD5, SHA-1, SHA-256) and matched against the hash lists before anything else, the
    checked image is inspected (:class:`~curation.images.safety.SafetyInspector`: PDQ + its
    match, NSFW score, faces), the kept rows carry :data:`SAFETY_SCHEMA`'s fields, and
    ``removed`` holds the hash-list matches (:data:`REMOVED_SCHEMA`; their reason is
    ``hashlist_match``)."""

    def __init__(self, config: ImageCheckConfig, safety=None, list_digests: tuple[str, ...] = ()):
        self.config, self.safety = config, safety
        ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never grey pixels
        cv2.setNumThreads(1)  # one worker per core: parallelism comes from the engine
        self.inspector = None
        if safety is not None:
            from curation.images.safety import SafetyInspector

            self.inspector = SafetyInspector(safety, list_digests)

    @property
    def blurred(self) -> int:
        """Images whose faces were blurred by this checker so far (a worker's checker lives long:
        read it before and after a call)."""
        return self.inspector.blurred if self.inspector is not None else 0

    def _check(self, data: bytes) -> tuple[dict | str, object]:
        """One image: (kept fields or reason, the hash-list match or None)."""
        if self.inspector is None:
            return check_image(data, self.config), None
        from curation.images.safety import Rejected, digests

        digest = digests(data)
        match = self.inspector.lists.match_digests(digest)
        if match is not None:
            return "hashlist_match", match
        try:
            result = check_image(data, self.config, self.inspector)
        except Rejected as rejected:
            return rejected.reason, rejected.match
        if isinstance(result, dict):
            result.update({kind: value.hex() for kind, value in digest.items()})
        return result, None

    def __call__(self, table: pa.Table) -> tuple[pa.Table, pa.Table, pa.Table]:
        uids = table.column("uid")
        kept_idx, kept_rows, rejected_idx, reasons, removed = [], [], [], [], []
        for i, data in enumerate(table.column("image").to_pylist()):
            result, match = ("missing_image", None) if data is None else self._check(data)
            if isinstance(result, str):
                rejected_idx.append(i)
                reasons.append(result)
                if match is not None:
                    removed.append({"uid": str(uids[i]), "list": match.list, "kind": match.kind,
                                    "hash": match.hash, "distance": match.distance})
            else:
                kept_idx.append(i)
                kept_rows.append(result)
        schema = KEPT_SCHEMA if self.inspector is None else pa.unify_schemas([KEPT_SCHEMA, SAFETY_SCHEMA])
        kept = pa.Table.from_pylist(kept_rows, schema=schema)
        kept = kept.add_column(0, "uid", uids.take(pa.array(kept_idx, pa.int64())))
        rejected = pa.table({"uid": uids.take(pa.array(rejected_idx, pa.int64())),
                             "reason": pa.array(reasons, pa.string())})
        return kept, rejected, pa.Table.from_pylist(removed, schema=REMOVED_SCHEMA)
