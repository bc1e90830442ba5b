"""Decode, guard and resize downloaded images; compute the hashes image dedup needs.

:class:`ImageChecker` takes an Arrow table ``(uid, image: binary)`` of fetched bytes and returns

- kept rows: ``uid, jpg`` (the resized JPEG), ``width, height, original_width,
  original_height, pixel_hash`` (xxh3-128 of the decoded RGB pixels + size, for exact dedup),
  ``phash`` (64-bit perceptual hash, 8 bytes, for near-duplicate dedup);
- rejected rows: ``uid, reason`` with reason one of ``not_an_image`` (HTML, text, unknown
  format), ``missing_image`` (no bytes), ``decompression_bomb`` (more than ``max_pixels`` pixels, refused from the header
  before any pixel is decoded), ``corrupt_image`` (truncated or broken data), ``image_too_small``.

Nothing raises on bad bytes: every row ends up kept or rejected with a reason.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import imagehash
import numpy as np
import pyarrow as pa
import xxhash
from PIL import Image, ImageFile, UnidentifiedImageError

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
    resize_mode: str = "border"  # "border": fit in a white square; "keep_ratio": shortest side = image_size
    max_pixels: int = 89_478_485  # decompression-bomb limit, width*height (Pillow's default)
    min_image_size: int = 1  # reject images whose shorter side is smaller
    jpeg_quality: int = 95  # quality of the re-encoded JPEG (img2dataset's default)

    def __post_init__(self):
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB with any transparency composited on white (like img2dataset's alpha matting)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _resize(image: Image.Image, config: ImageCheckConfig) -> Image.Image:
    width, height = image.size
    side = config.image_size
    if config.resize_mode == "keep_ratio":
        scale = side / min(width, height)
        return image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.LANCZOS)
    scale = side / max(width, height)
    fitted = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.LANCZOS)
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(fitted, ((side - fitted.width) // 2, (side - fitted.height) // 2))
    return canvas


def check_image(data: bytes, config: ImageCheckConfig) -> dict | str:
    """Check and resize one image: a dict of the :data:`KEPT_SCHEMA` fields, or a reject reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return "decompression_bomb"
    except UnidentifiedImageError:
        return "not_an_image"
    except (OSError, SyntaxError, ValueError):
        return "corrupt_image"
    width, height = image.size
    if width * height > config.max_pixels:
        return "decompression_bomb"
    if min(width, height) < config.min_image_size:
        return "image_too_small"
    try:
        image.seek(0)  # first frame of animations
        image.load()
        rgb = _to_rgb(image)
    except (OSError, SyntaxError, ValueError, EOFError):
        return "corrupt_image"
    pixels = xxhash.xxh3_128(f"{width}x{height}".encode() + rgb.tobytes()).digest()
    resized = _resize(rgb, config)
    phash = np.packbits(imagehash.phash(resized).hash.flatten()).tobytes()
    out = io.BytesIO()
    resized.save(out, format="JPEG", quality=config.jpeg_quality)
    return {
        "width": resized.width, "height": resized.height,
        "original_width": width, "original_height": height,
        "pixel_hash": pixels, "phash": phash, "jpg": out.getvalue(),
    }


class ImageChecker:
    """Callable over an Arrow table ``(uid, image)`` → (kept table, rejected table); see the
    module docstring for the columns."""

    def __init__(self, config: ImageCheckConfig):
        self.config = config
        ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never grey pixels

    def __call__(self, table: pa.Table) -> tuple[pa.Table, pa.Table]:
        uids = table.column("uid")
        kept_idx, kept_rows, rejected_idx, reasons = [], [], [], []
        for i, data in enumerate(table.column("image").to_pylist()):
            result = "missing_image" if data is None else check_image(data, self.config)
            if isinstance(result, str):
                rejected_idx.append(i)
                reasons.append(result)
            else:
                kept_idx.append(i)
                kept_rows.append(result)
        kept = pa.Table.from_pylist(kept_rows, schema=KEPT_SCHEMA)
        kept = kept.add_column(0, "uid", uids.take(pa.array(kept_idx, pa.int64())))
        rejected = pa.table({"uid": uids.take(pa.array(rejected_idx, pa.int64())),
                             "reason": pa.array(reasons, pa.string())})
        return kept, rejected
