"""Image check (decode, bomb guard, resize, hashes) and image de-duplication."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from curation.images.check import ImageCheckConfig, ImageChecker, check_image
from curation.images.dedup import ImageDedupConfig, deduplicate, near_duplicate_pairs
from tests.curation.images.conftest import jpeg_bytes, png_bomb, textured_png


def test_check_rejects_bad_bytes_with_reasons():
    jpeg = jpeg_bytes(1)
    table = pa.table({
        "uid": ["ok", "trunc", "html", "bomb", "missing", "empty"],
        "image": pa.array([jpeg, jpeg[: len(jpeg) // 2], b"<html>x</html>", png_bomb(), None, b""], pa.binary()),
    })
    kept, rejected, removed = ImageChecker(ImageCheckConfig(image_size=64))(table)
    assert kept.column("uid").to_pylist() == ["ok"] and len(removed) == 0
    assert dict(zip(rejected.column("uid").to_pylist(), rejected.column("reason").to_pylist())) == {
        "trunc": "corrupt_image", "html": "not_an_image", "bomb": "decompression_bomb",
        "missing": "missing_image", "empty": "not_an_image"}


def test_bomb_limit_is_the_configured_one():
    image = textured_png(3, (200, 100))
    assert check_image(image, ImageCheckConfig(max_pixels=19_999)) == "decompression_bomb"
    assert isinstance(check_image(image, ImageCheckConfig(max_pixels=20_000)), dict)


@pytest.mark.parametrize("mode,expected", [("border", (64, 64)), ("keep_ratio", (128, 64))])
def test_resize_and_alpha(mode, expected):
    rgba = Image.new("RGBA", (200, 100), (255, 0, 0, 0))  # fully transparent -> white
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    result = check_image(buf.getvalue(), ImageCheckConfig(image_size=64, resize_mode=mode))
    out = Image.open(io.BytesIO(result["jpg"]))
    assert out.size == expected == (result["width"], result["height"])
    assert (result["original_width"], result["original_height"]) == (200, 100)
    assert min(out.convert("RGB").getpixel((32, 32))) > 240
    with pytest.raises(ValueError):
        ImageCheckConfig(resize_mode="stretch")


def test_pixel_hash_ignores_encoding_but_not_pixels():
    png = textured_png(7)
    as_rgb_png = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(as_rgb_png, format="PNG", compress_level=1)
    a, b = check_image(png, ImageCheckConfig()), check_image(as_rgb_png.getvalue(), ImageCheckConfig())
    assert a["pixel_hash"] == b["pixel_hash"] and a["phash"] == b["phash"]
    assert check_image(textured_png(8), ImageCheckConfig())["pixel_hash"] != a["pixel_hash"]


def _table(uids, pixel, codes):
    return pa.table({"uid": uids, "pixel_hash": pa.array(pixel, pa.binary(16)),
                     "phash": pa.array([np.uint64(c).tobytes() for c in codes], pa.binary(8))})


def test_dedup_keeps_smallest_uid_and_records_it():
    table = _table(
        ["d", "a", "c", "b", "e"],
        [b"1" * 16, b"1" * 16, b"2" * 16, b"3" * 16, b"4" * 16],
        [0x0, 0x0, 0xFFFF0000FFFF0000, 0x0000000000000007, 0xF0F0F0F0F0F0F0F0],
    )
    kept, rejected = deduplicate(table, ImageDedupConfig(threshold=4))
    assert kept.column("uid").to_pylist() == ["a", "c", "e"]
    assert sorted(zip(*(rejected.column(c).to_pylist() for c in ("uid", "reason", "duplicate_of")))) == [
        ("b", "near_duplicate", "a"), ("d", "exact_duplicate", "a")]
    kept_exact, rejected_exact = deduplicate(table, ImageDedupConfig(threshold=-1))
    assert kept_exact.column("uid").to_pylist() == ["a", "b", "c", "e"]
    assert rejected_exact.column("reason").to_pylist() == ["exact_duplicate"]


def test_dedup_groups_do_not_chain():
    # a~b (3 bits), b~c (3 bits), a and c 6 bits apart: c survives beside a
    table = _table(["a", "b", "c"], [b"a" * 16, b"b" * 16, b"c" * 16], [0b0, 0b111, 0b111111])
    kept, rejected = deduplicate(table, ImageDedupConfig(threshold=4))
    assert kept.column("uid").to_pylist() == ["a", "c"]
    assert rejected.column("duplicate_of").to_pylist() == ["a"]


def test_dedup_is_order_independent():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 40, dtype=np.uint64)
    codes = np.concatenate([base, base[:20] ^ np.uint64(0b1011)])  # 20 near copies
    uids = [f"u{i:03d}" for i in range(len(codes))]
    pixel = [i.to_bytes(16, "big") for i in range(len(codes))]
    first = deduplicate(_table(uids, pixel, codes), ImageDedupConfig(threshold=3))
    perm = rng.permutation(len(codes))
    second = deduplicate(_table([uids[i] for i in perm], [pixel[i] for i in perm], codes[perm]),
                         ImageDedupConfig(threshold=3))
    assert first[0].column("uid").to_pylist() == second[0].column("uid").to_pylist()
    assert len(first[0]) == 40 and len(first[1]) == 20


@pytest.mark.parametrize("threshold", [0, 2, 5, 9])
def test_multi_index_hashing_matches_brute_force(threshold):
    rng = np.random.default_rng(threshold)
    centres = rng.integers(0, 256, (30, 8), dtype=np.uint8)
    noise = rng.random((30, 6, 64)) < 0.06
    codes = (np.unpackbits(centres, axis=1)[:, None, :] ^ noise).reshape(-1, 64)
    packed = np.packbits(codes, axis=1)
    limits, neighbours = near_duplicate_pairs(packed, threshold)
    found = {(i, int(j)) for i in range(len(packed)) for j in neighbours[limits[i]:limits[i + 1]]}
    expected = {(i, j) for i, j in itertools.product(range(len(codes)), repeat=2)
                if np.count_nonzero(codes[i] != codes[j]) <= threshold}
    assert found == expected
