"""XXH3-64 (seed 0, default secret) over the bytes of an Arrow string/binary column, compiled.

Bit-identical to ``xxhash.xxh3_64_intdigest(value)`` for every input length (0, 1-3, 4-8, 9-16,
17-128, 129-240 and > 240 bytes, i.e. the "long" striped path too), but one numba pass over the
column's offsets and data buffers instead of one Python call per row: no ``bytes`` objects, no
per-row interpreter work. Written from the XXH3 specification (xxHash's ``xxhash.h``,
``XXH3_64bits``): the same constants, secret windows and mixing steps, with wrapping uint64
arithmetic and a 64x64 -> 128-bit multiply done in LLVM ``i128``. Words are read with unaligned
native loads, so the kernel runs on little-endian machines (x86-64, arm64); elsewhere the column
is hashed by ``xxhash`` row by row (same values).

:func:`xxh3_64_column` accepts ``string``, ``large_string``, ``binary`` and ``large_binary``
arrays, sliced arrays (their offset is honoured), chunked arrays and lists of ``str``. Null rows
either raise (``nulls="error"``, the default: a uid is never null) or hash as the empty string
(``nulls="empty"``, what ``xxh3_64((v or "").encode())`` gives).
"""

from __future__ import annotations

import sys

import numba
import numpy as np
import pyarrow as pa
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

_SECRET = np.array([
    0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c,
    0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f,
    0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21,
    0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c,
    0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3,
    0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8,
    0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d,
    0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64,
    0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb,
    0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e,
    0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce,
    0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
], dtype=np.uint8)
# the little-endian 64-bit word of the secret starting at every byte offset (the code reads the
# secret at unaligned offsets: 3, 7, 11, 119, ...)
_SECRET64 = np.array([int.from_bytes(_SECRET[i:i + 8].tobytes(), "little") for i in range(len(_SECRET) - 7)],
                     dtype=np.uint64)
_SECRET32_0 = np.uint64(int.from_bytes(_SECRET[0:4].tobytes(), "little") ^ int.from_bytes(_SECRET[4:8].tobytes(), "little"))

_P32_1 = np.uint64(0x9E3779B1)
_P32_2 = np.uint64(0x85EBCA77)
_P32_3 = np.uint64(0xC2B2AE3D)
_P64_1 = np.uint64(0x9E3779B185EBCA87)
_P64_2 = np.uint64(0xC2B2AE3D27D4EB4F)
_P64_3 = np.uint64(0x165667B19E3779F9)
_P64_4 = np.uint64(0x85EBCA77C2B2AE63)
_P64_5 = np.uint64(0x27D4EB2F165667C5)
_MX1 = np.uint64(0x165667919E3779F9)
_MX2 = np.uint64(0x9FB21C651E98DF25)
_M32 = np.uint64(0xFFFFFFFF)
# constant parts of the short paths (seed 0): secret words xor-ed together
_FLIP_0 = np.uint64(int(_SECRET64[56]) ^ int(_SECRET64[64]))  # len 0
_FLIP_4 = np.uint64(int(_SECRET64[8]) ^ int(_SECRET64[16]))  # len 4-8
_FLIP_9A = np.uint64(int(_SECRET64[24]) ^ int(_SECRET64[32]))  # len 9-16, low word
_FLIP_9B = np.uint64(int(_SECRET64[40]) ^ int(_SECRET64[48]))  # len 9-16, high word


@intrinsic
def _fold128(typingctx, a, b):
    """``lo ^ hi`` of the 128-bit product of two uint64 (XXH3_mul128_fold64)."""
    def codegen(context, builder, signature, args):
        i64, i128 = ir.IntType(64), ir.IntType(128)
        product = builder.mul(builder.zext(args[0], i128), builder.zext(args[1], i128))
        high = builder.trunc(builder.lshr(product, ir.Constant(i128, 64)), i64)
        return builder.xor(builder.trunc(product, i64), high)

    return types.uint64(types.uint64, types.uint64), codegen


@intrinsic
def _bswap64(typingctx, a):
    """Byte-swap a uint64."""
    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        fn = builder.module.declare_intrinsic("llvm.bswap", [i64])
        return builder.call(fn, [args[0]])

    return types.uint64(types.uint64), codegen


def _load(width):
    """An intrinsic: the little-endian unsigned ``width``-bit word at byte ``i`` of a uint8 array
    (one unaligned load; the caller keeps ``i + width / 8`` within the array)."""

    @intrinsic
    def load(typingctx, array, index):
        def codegen(context, builder, signature, args):
            arr = context.make_array(signature.args[0])(context, builder, args[0])
            ptr = builder.gep(arr.data, [args[1]])
            word = ir.IntType(width)
            value = builder.load(builder.bitcast(ptr, word.as_pointer()), align=1)
            return value if width == 64 else builder.zext(value, ir.IntType(64))

        return types.uint64(array, types.intp), codegen

    return load


_r64 = _load(64)
_r32 = _load(32)


@numba.njit(cache=True, nogil=True, inline="always")
def _avalanche(h):
    """XXH3_avalanche."""
    h ^= h >> np.uint64(37)
    h *= _MX1
    return h ^ (h >> np.uint64(32))


@numba.njit(cache=True, nogil=True, inline="always")
def _avalanche64(h):
    """XXH64_avalanche."""
    h ^= h >> np.uint64(33)
    h *= _P64_2
    h ^= h >> np.uint64(29)
    h *= _P64_3
    return h ^ (h >> np.uint64(32))


@numba.njit(cache=True, nogil=True, inline="always")
def _mix16(d, i, s64, s):
    """XXH3_mix16B (seed 0): 16 input bytes at ``i`` against the secret at byte ``s``."""
    return _fold128(_r64(d, i) ^ s64[s], _r64(d, i + 8) ^ s64[s + 8])


@numba.njit(cache=True, nogil=True, inline="always")
def _accumulate512(acc, d, i, s64, s):
    """XXH3_accumulate_512 (scalar): one 64-byte stripe at ``i``, secret at byte ``s``."""
    for lane in range(8):
        value = _r64(d, i + 8 * lane)
        key = value ^ s64[s + 8 * lane]
        acc[lane ^ 1] += value
        acc[lane] += (key & _M32) * (key >> np.uint64(32))


@numba.njit(cache=True, nogil=True)
def _hash_long(d, start, length, s64, acc):
    """XXH3_hashLong_64b with the default 192-byte secret (length > 240)."""
    acc[0] = _P32_3
    acc[1] = _P64_1
    acc[2] = _P64_2
    acc[3] = _P64_3
    acc[4] = _P64_4
    acc[5] = _P32_2
    acc[6] = _P64_5
    acc[7] = _P32_1
    stripes_per_block = (192 - 64) // 8
    block_len = 64 * stripes_per_block
    blocks = (length - 1) // block_len
    for b in range(blocks):
        base = start + b * block_len
        for stripe in range(stripes_per_block):
            _accumulate512(acc, d, base + 64 * stripe, s64, 8 * stripe)
        for lane in range(8):  # scramble with the secret's last 64 bytes
            a = acc[lane]
            a ^= a >> np.uint64(47)
            a ^= s64[192 - 64 + 8 * lane]
            acc[lane] = a * _P32_1
    base = start + blocks * block_len
    stripes = ((length - 1) - block_len * blocks) // 64
    for stripe in range(stripes):
        _accumulate512(acc, d, base + 64 * stripe, s64, 8 * stripe)
    _accumulate512(acc, d, start + length - 64, s64, 192 - 64 - 7)
    result = np.uint64(length) * _P64_1
    for k in range(4):
        result += _fold128(acc[2 * k] ^ s64[11 + 16 * k], acc[2 * k + 1] ^ s64[11 + 16 * k + 8])
    return _avalanche(result)


@numba.njit(cache=True, nogil=True, inline="always")
def _hash_17to128(d, start, length, s64):
    """XXH3_len_17to128_64b (seed 0)."""
    h = np.uint64(length) * _P64_1
    if length > 32:
        if length > 64:
            if length > 96:
                h += _mix16(d, start + 48, s64, 96)
                h += _mix16(d, start + length - 64, s64, 112)
            h += _mix16(d, start + 32, s64, 64)
            h += _mix16(d, start + length - 48, s64, 80)
        h += _mix16(d, start + 16, s64, 32)
        h += _mix16(d, start + length - 32, s64, 48)
    h += _mix16(d, start, s64, 0)
    h += _mix16(d, start + length - 16, s64, 16)
    return _avalanche(h)


@numba.njit(cache=True, nogil=True)
def _xxh3_64(d, start, length, s64, acc):
    """XXH3_64bits(d[start:start + length]) with seed 0."""
    n = np.uint64(length)
    if length <= 16:
        if length > 8:
            lo = _r64(d, start) ^ _FLIP_9A
            hi = _r64(d, start + length - 8) ^ _FLIP_9B
            return _avalanche(n + _bswap64(lo) + hi + _fold128(lo, hi))
        if length >= 4:
            x = (_r32(d, start + length - 4) + (_r32(d, start) << np.uint64(32))) ^ _FLIP_4
            x ^= ((x << np.uint64(49)) | (x >> np.uint64(15))) ^ ((x << np.uint64(24)) | (x >> np.uint64(40)))
            x *= _MX2
            x ^= (x >> np.uint64(35)) + n
            x *= _MX2
            return x ^ (x >> np.uint64(28))
        if length > 0:
            combined = ((np.uint64(d[start]) << np.uint64(16)) | (np.uint64(d[start + (length >> 1)]) << np.uint64(24))
                        | np.uint64(d[start + length - 1]) | (n << np.uint64(8)))
            return _avalanche64(combined ^ _SECRET32_0)
        return _avalanche64(_FLIP_0)
    if length <= 128:
        return _hash_17to128(d, start, length, s64)
    if length <= 240:
        h = n * _P64_1
        for k in range(8):
            h += _mix16(d, start + 16 * k, s64, 16 * k)
        h = _avalanche(h)
        for k in range(8, length // 16):
            h += _mix16(d, start + 16 * k, s64, 16 * (k - 8) + 3)
        h += _mix16(d, start + length - 16, s64, 136 - 17)
        return _avalanche(h)
    return _hash_long(d, start, length, s64, acc)


@numba.njit(cache=True, nogil=True)
def _hash_rows(data, offsets, valid, s64):
    """xxh3_64 of each row ``data[offsets[r]:offsets[r + 1]]`` (a row with ``valid[r]`` False
    hashes as empty; ``valid`` may be empty: all valid)."""
    rows = len(offsets) - 1
    out = np.empty(rows, dtype=np.uint64)
    acc = np.empty(8, dtype=np.uint64)
    check = len(valid) > 0
    for r in range(rows):
        start = np.int64(offsets[r])
        length = np.int64(offsets[r + 1]) - start
        if check and not valid[r]:
            length = 0
        if 16 < length <= 128:  # uids (32 hex chars) and most keys: inlined, the loop stays tight
            out[r] = _hash_17to128(data, start, length, s64)
        else:  # a call: inlining every length class into the loop makes it ~4x slower
            out[r] = _xxh3_64(data, start, length, s64, acc)
    return out


def _hash_array(array: pa.Array, nulls: str) -> np.ndarray:
    """One (non-chunked) array's hashes."""
    kind = array.type
    if pa.types.is_string(kind) or pa.types.is_binary(kind):
        offset_type = np.int32
    elif pa.types.is_large_string(kind) or pa.types.is_large_binary(kind):
        offset_type = np.int64
    else:
        raise TypeError(f"xxh3_64 of a {kind} column: expected string or binary")
    n = len(array)
    if n == 0:
        return np.empty(0, dtype=np.uint64)
    valid = np.empty(0, dtype=np.bool_)
    if array.null_count:
        if nulls == "error":
            raise ValueError(f"cannot hash {array.null_count} null value(s)")
        valid = np.ascontiguousarray(array.is_valid().to_numpy(zero_copy_only=False), dtype=np.bool_)
    buffers = array.buffers()
    offsets = np.frombuffer(buffers[1], dtype=offset_type)[array.offset:array.offset + n + 1]
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(8, dtype=np.uint8)
    return _hash_rows(data, offsets, valid, _SECRET64)  # int32 or int64 offsets, as stored


def xxh3_64_column(values: pa.Array | pa.ChunkedArray | list[str], nulls: str = "error") -> np.ndarray:
    """``xxh3_64`` (seed 0) of each value's bytes (UTF-8 for strings) as uint64, equal to
    ``xxhash.xxh3_64_intdigest`` row for row. ``nulls``: "error" (raise on a null) or "empty"
    (a null hashes as the empty string)."""
    if nulls not in ("error", "empty"):
        raise ValueError(f"nulls must be 'error' or 'empty', not {nulls!r}")
    if isinstance(values, list):
        values = pa.array(values, pa.string())
    if sys.byteorder != "little":  # the kernel's loads are little-endian
        return _hash_python(values, nulls)
    if isinstance(values, pa.ChunkedArray):
        parts = [_hash_array(chunk, nulls) for chunk in values.chunks]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.uint64)
    return _hash_array(values, nulls)


def _hash_python(values: pa.Array | pa.ChunkedArray, nulls: str) -> np.ndarray:
    """The same hashes through ``xxhash``, one Python call per row (big-endian machines)."""
    import xxhash

    if values.null_count and nulls == "error":
        raise ValueError(f"cannot hash {values.null_count} null value(s)")
    binary = pa.large_binary() if pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type) \
        else pa.binary()
    rows = [v or b"" for v in values.cast(binary).to_pylist()]
    return np.fromiter(map(xxhash.xxh3_64_intdigest, rows), dtype=np.uint64, count=len(rows))
