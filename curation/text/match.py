"""Substring matching of captions against the query list (MetaCLIP's rule, compiled).

The rule (``queries/text.py``): an entry matches a text when ``" " + entry + " "`` is a substring
of ``space_text(text)``. Equivalently, with the spaced text split on single spaces, the entry's
``split(" ")`` words occur as a consecutive run of the text's pieces (the first and last piece
are always empty). :class:`QueryMatcher` uses that equivalence in one pass over the UTF-8 bytes
of an Arrow batch, in a numba-compiled kernel (no per-caption Python, no spaced copy of the text):

1. the pieces of ``space_text(text)`` are produced straight from the raw bytes: space, tab, CR
   and LF end a piece; each of ``, . ; : ? !`` and the backtick ends a piece and is a piece of its
   own (that is what wrapping it in spaces does). All separators are ASCII and UTF-8 continuation
   bytes never are, so working on bytes is exact;
2. each piece is mapped to a vocabulary id (the words of the entries) through an open-addressing
   hash table whose 32-byte slots hold a tag (hash fingerprint + length), the word's first 16
   bytes, its id and its trie-node info, so a lookup usually touches one cache line (words of at
   most 16 bytes are settled by the slot alone: exact length in the tag + packed bytes); longer
   words are compared byte for byte, so there are no collisions to fear. Empty pieces and unknown
   words get -1, which breaks every run. A row is split first, prefetching each piece's home slot,
   and looked up after, so that the table's cache misses overlap instead of queueing one by one;
3. from every piece position a token trie is walked while the run is a prefix of some entry
   (depth 1 comes with the word's slot, deeper transitions ``node * V + token`` from a second
   hash table whose slots also carry the child's node info; each walk's first slot is prefetched),
   and the ids of the entries ending at each visited node are collected;
4. each row's ids are sorted and de-duplicated in place and written into a ``list<int32>`` array.

Entries whose ``split(" ")`` contains an empty word (leading, trailing or doubled spaces, the
empty string) cannot be trie paths; they are rare and are matched by a literal
``match_substring`` on the spaced batch, one pass per such entry.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from queries.languages import is_no_space  # MetaCLIP 2's raw-substring languages: the query lists' own set
from queries.text import CHARS_TO_SPACE, PUNCT_TO_WRAP, space_texts

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
# byte classes of the spacing rule: 1 = becomes a space, 2 = wrapped in spaces, 0 = word byte
_BYTE_CLASS = np.zeros(256, dtype=np.uint8)
_BYTE_CLASS[[ord(c) for c in (" ", *CHARS_TO_SPACE)]] = 1
_BYTE_CLASS[[ord(c) for c in PUNCT_TO_WRAP]] = 2
# character mode (raw substring matching, scripts written without spaces): every UTF-8 lead byte
# starts a piece (3), continuation bytes (0b10xxxxxx) extend it: the pieces are the code points
_CHAR_CLASS = np.full(256, 3, dtype=np.uint8)
_CHAR_CLASS[0x80:0xC0] = 0


class QueryMatcher:
    """Matches texts against ``queries`` (query id = position in the sequence).

    Build once per worker (a 500k-entry list takes a few seconds; the first matcher in a process
    also loads or compiles the kernels); :meth:`match_arrow` takes a batch of texts and returns,
    per text, the sorted, distinct ids of the entries it matches. Null texts match nothing.
    Repeated entries match under each of their ids.

    ``characters=True`` is MetaCLIP 2's raw-substring rule for scripts written without spaces:
    every code point of a text is a piece (no spacing rule: the byte-class table makes each UTF-8
    lead byte start a piece) and an entry is the run of its code points, so an entry matches
    exactly when it is a substring of the text; the empty entry matches nothing.
    """

    def __init__(self, queries: Sequence[str], characters: bool = False):
        queries = list(queries)
        self.num_queries = len(queries)
        self.characters = characters
        self._byte_class = _CHAR_CLASS if characters else _BYTE_CLASS
        vocab: dict[str, int] = {}
        run_entries: list[tuple[int, list[int]]] = []
        literal: list[tuple[int, str]] = []
        for query_id, entry in enumerate(queries):
            if not isinstance(entry, str):
                raise TypeError(f"query {query_id} is {type(entry).__name__}, expected str")
            if characters:  # raw substring: the entry's code points as a run of pieces; "" matches nothing
                if entry:
                    run_entries.append((query_id, [vocab.setdefault(ch, len(vocab)) for ch in entry]))
                continue
            words = entry.split(" ")
            if "" in words:
                literal.append((query_id, f" {entry} "))
                continue
            run_entries.append((query_id, [vocab.setdefault(w, len(vocab)) for w in words]))
        self._literal = literal
        self._vocab_size = len(vocab)
        self._vocab_bytes, self._vocab_offsets = _string_buffers(pa.array(list(vocab), type=pa.string()))
        self._build_tables(run_entries)

    def _build_tables(self, run_entries: list[tuple[int, list[int]]]) -> None:
        """The token trie (node ids 0 .. V-1 are the depth-1 nodes, node == token id; deeper
        nodes follow) as two hash tables: vocabulary word -> (token id, depth-1 node info) and
        ``node * V + token`` -> (child, child's node info); entry ids ending at a node with
        several entries (repeated entries) go to ``term_ids`` in CSR form."""
        vocab_size = self._vocab_size
        transitions: dict[int, int] = {}
        node_ids: dict[int, list[int]] = {}
        starts = np.zeros(vocab_size, dtype=bool)
        next_node = vocab_size
        for query_id, tokens in run_entries:
            node = tokens[0]
            starts[node] = True
            for token in tokens[1:]:
                key = node * vocab_size + token
                child = transitions.get(key)
                if child is None:
                    child = transitions[key] = next_node
                    next_node += 1
                node = child
            node_ids.setdefault(node, []).append(query_id)
        num_nodes = next_node
        keys = np.fromiter(transitions.keys(), dtype=np.int64, count=len(transitions))
        children = np.fromiter(transitions.values(), dtype=np.int64, count=len(transitions))
        has_child = np.zeros(num_nodes, dtype=bool)
        has_child[keys // max(vocab_size, 1)] = True
        counts = np.zeros(num_nodes, dtype=np.int64)
        for node, ids in node_ids.items():
            counts[node] = len(ids)
        term_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        term_ids = np.empty(int(counts.sum()), dtype=np.int32)
        for node, ids in node_ids.items():
            term_ids[term_start[node] : term_start[node] + len(ids)] = sorted(ids)
        infos = _node_infos(counts, term_start, term_ids, has_child,
                            np.concatenate([starts, np.zeros(num_nodes - vocab_size, dtype=bool)]))
        self._term_ids = term_ids
        self._vocab_table = _build_vocab_table(self._vocab_bytes, self._vocab_offsets, infos,
                                               _zeros((_table_size(vocab_size), 4), np.uint64))
        self._edges = _build_edge_table(keys, children, infos,
                                        _zeros((_table_size(len(keys)), 3), np.int64) - 1)

    def match(self, texts: Sequence[str | None] | pa.Array | pa.ChunkedArray) -> list[list[int]]:
        """Per text, the sorted list of matched query ids (Python lists)."""
        return self.match_arrow(texts).to_pylist()

    def match_arrow(self, texts: Sequence[str | None] | pa.Array | pa.ChunkedArray) -> pa.ListArray:
        """Per text, the sorted distinct matched query ids as a ``list<int32>`` Arrow array."""
        texts = _as_string_array(texts)
        valid = np.ascontiguousarray(texts.is_valid().to_numpy(zero_copy_only=False), dtype=np.bool_)
        data, row_offsets = _string_buffers(texts)
        offsets, ids = _match_rows(
            data, row_offsets, valid, self._byte_class, self._vocab_table, self._vocab_bytes, self._vocab_offsets,
            self._edges, self._term_ids, self._vocab_size)
        if self._literal:
            offsets, ids = self._add_literal_matches(texts, valid, offsets, ids)
        return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(ids, pa.int32()))

    def _add_literal_matches(self, texts: pa.StringArray, valid: np.ndarray, offsets: np.ndarray,
                             ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Merge the literal (edge/double-space) entries' matches into the trie's per-row ids."""
        rows = len(texts)
        num = max(self.num_queries, 1)
        spaced = space_texts(pc.fill_null(texts, ""))
        row = np.repeat(np.arange(rows, dtype=np.int64), np.diff(offsets))
        keys = [row * num + ids]
        for query_id, pattern in self._literal:
            hit = np.asarray(pc.match_substring(spaced, pattern).to_numpy(zero_copy_only=False)) & valid
            keys.append(np.flatnonzero(hit).astype(np.int64) * num + query_id)
        keys = np.unique(np.concatenate(keys))
        row = keys // num
        offsets = np.zeros(rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(row, minlength=rows), out=offsets[1:])
        return offsets, (keys - row * num).astype(np.int32)


def _zeros(shape: tuple[int, int], dtype) -> np.ndarray:
    """A zeroed table allocated by NumPy, which asks Linux for huge pages on large arrays (numba's
    own allocator does not): random probes into a 16 MB table then miss the TLB far less."""
    return np.zeros(shape, dtype=dtype)


def _table_size(n: int) -> int:
    """A power of two at least ``n / 0.6`` (open-addressing load factor <= 0.6)."""
    size = 2
    while size * 3 < n * 5:
        size *= 2
    return size


# A trie node's info, packed into one int64 so that a probe touches one cache line:
# bit 0 = starts an entry (depth-1 nodes), bit 1 = has children, bits 2..19 = how many entries
# end here, bits 20.. = the entry id when exactly one ends here, else its start in ``term_ids``.
_COUNT_BITS, _VALUE_SHIFT = 18, 20


def _node_infos(counts: np.ndarray, term_start: np.ndarray, term_ids: np.ndarray, has_child: np.ndarray,
                starts: np.ndarray) -> np.ndarray:
    """Packed info per node (see ``_COUNT_BITS``)."""
    if counts.max(initial=0) >= 1 << _COUNT_BITS:
        raise ValueError(f"an entry is repeated {counts.max()} times (at most {(1 << _COUNT_BITS) - 1})")
    single = np.zeros(len(counts), dtype=np.int64)
    one = np.flatnonzero(counts == 1)
    single[one] = term_ids[term_start[one]]
    value = np.where(counts == 1, single, term_start[:-1])
    return (value << _VALUE_SHIFT) | (counts << 2) | (has_child.astype(np.int64) << 1) | starts.astype(np.int64)


@numba.njit(cache=True, nogil=True)
def _piece_key(data: np.ndarray, start: int, end: int) -> tuple[np.uint64, np.uint64]:
    """(first 8 bytes, next 8 bytes) of ``data[start:end]`` (little-endian, zero padded)."""
    w0, w1 = np.uint64(0), np.uint64(0)
    for i in range(start, min(end, start + 16)):
        c = np.uint64(data[i])
        if i - start < 8:
            w0 |= c << np.uint64(8 * (i - start))
        else:
            w1 |= c << np.uint64(8 * (i - start - 8))
    return w0, w1


@numba.njit(cache=True, nogil=True, inline="always")
def _piece_hash(w0: np.uint64, w1: np.uint64, length: int) -> np.uint64:
    """Hash of a piece from its packed first 16 bytes and its length (longer pieces sharing
    those are told apart by the byte comparison): the splitmix64 finaliser of a mix of the three."""
    z = w0 ^ (w1 * _M1) ^ (np.uint64(length) * _GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@numba.njit(cache=True, nogil=True, inline="always")
def _meta(h: np.uint64, length: int) -> np.uint64:
    """Slot tag without the id: 24-bit fingerprint (top of the hash) and the length capped at 255."""
    return ((h >> np.uint64(40)) << np.uint64(40)) | (np.uint64(min(length, 255)) << np.uint64(32))


@numba.njit(cache=True, nogil=True)
def _build_vocab_table(words: np.ndarray, offsets: np.ndarray, infos: np.ndarray,
                       table: np.ndarray) -> np.ndarray:
    """Fill ``table`` (zeros, a power of two of rows) as the open-addressing table of the vocabulary,
    one 32-byte row per slot: [tag | word id, first 8 bytes, next 8 bytes, node info] (tag 0 = empty)."""
    size = len(table)
    mask = np.uint64(size - 1)
    for word in range(len(offsets) - 1):
        w0, w1 = _piece_key(words, offsets[word], offsets[word + 1])
        h = _piece_hash(w0, w1, offsets[word + 1] - offsets[word])
        slot = h & mask
        while table[slot, 0] != 0:
            slot = (slot + np.uint64(1)) & mask
        table[slot, 0] = _meta(h, offsets[word + 1] - offsets[word]) | np.uint64(word)
        table[slot, 1] = w0
        table[slot, 2] = w1
        table[slot, 3] = np.uint64(infos[word])
    return table


@numba.njit(cache=True, nogil=True)
def _edge_slot(key: np.int64, mask: np.uint64) -> np.uint64:
    """Home slot of a transition key (Fibonacci hashing: keys ``node * V + token`` are dense)."""
    return ((np.uint64(key) * _GOLDEN) >> np.uint64(17)) & mask


@numba.njit(cache=True, nogil=True)
def _build_edge_table(keys: np.ndarray, children: np.ndarray, infos: np.ndarray,
                      table: np.ndarray) -> np.ndarray:
    """Fill ``table`` (all -1, a power of two of rows) as the open-addressing table of trie
    transitions, one row per slot: [key ``node * V + token`` (-1 = empty), child node, child's info]."""
    size = len(table)
    mask = np.uint64(size - 1)
    for i in range(len(keys)):
        slot = _edge_slot(keys[i], mask)
        while table[slot, 0] != -1:
            slot = (slot + np.uint64(1)) & mask
        table[slot, 0] = keys[i]
        table[slot, 1] = children[i]
        table[slot, 2] = infos[children[i]]
    return table


@intrinsic
def _prefetch(typingctx, array, index):
    """Hint the CPU to load the cache line of ``array[index]`` (2-D: its row), without waiting."""
    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        arr = context.make_array(array_type)(context, builder, args[0])
        zero = ir.Constant(ir.IntType(64), 0)
        indices = [args[1]] + [zero] * (array_type.ndim - 1)
        ptr = cgutils.get_item_pointer(context, builder, array_type, arr, indices, wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i8p, ir.IntType(32), ir.IntType(32), ir.IntType(32)])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        read, keep_in_all_levels, data_cache = (ir.Constant(ir.IntType(32), v) for v in (0, 3, 1))
        builder.call(fn, [builder.bitcast(ptr, i8p), read, keep_in_all_levels, data_cache])
        return context.get_dummy_value()

    return types.void(array, index), codegen


@numba.njit(cache=True, nogil=True, inline="always")
def _lookup_word(h, w0, w1, data, start, end, table, words, offsets, tokens, infos, n) -> None:
    """Write the vocabulary id and node info of ``data[start:end]`` (hash ``h``, packed first 16
    bytes ``w0``, ``w1``) to ``tokens[n]``, ``infos[n]`` (-1 and 0: not a word)."""
    tokens[n] = -1
    infos[n] = 0
    length = end - start
    if length == 0:
        return
    mask = np.uint64(len(table) - 1)
    tag = _meta(h, length)
    slot = h & mask
    while table[slot, 0] != 0:
        meta = table[slot, 0]
        if (meta & np.uint64(0xFFFFFFFF00000000)) == tag and table[slot, 1] == w0 and table[slot, 2] == w1:
            word = np.int64(meta & np.uint64(0xFFFFFFFF))
            # up to 16 bytes, the tag's exact length and the packed bytes settle it without
            # touching ``offsets`` (one cache miss fewer per hit)
            same = length <= 16 or offsets[word + 1] - offsets[word] == length
            if same and length > 16:
                base = offsets[word] - start
                for k in range(start + 16, end):
                    if words[base + k] != data[k]:
                        same = False
                        break
            if same:
                tokens[n] = word
                infos[n] = np.int64(table[slot, 3])
                return
        slot = (slot + np.uint64(1)) & mask


@numba.njit(cache=True, nogil=True, inline="always")
def _add_piece(start, end, w0, w1, table, n, starts, ends, keys0, keys1, hashes) -> None:
    """Record piece ``n`` and prefetch its home slot of ``table``."""
    starts[n] = start
    ends[n] = end
    keys0[n] = w0
    keys1[n] = w1
    h = _piece_hash(w0, w1, end - start)
    hashes[n] = h
    if end > start:
        _prefetch(table, np.int64(h & np.uint64(len(table) - 1)))


@numba.njit(cache=True, nogil=True, inline="always")
def _tokenize(data, start, end, byte_class, table, words, word_offsets, tokens, infos, starts, ends, keys0,
              keys1, hashes) -> int:
    """Vocabulary ids and node infos of the pieces of ``space_text(data[start:end])`` into
    ``tokens`` / ``infos`` (-1 / 0 for empty pieces and unknown words); returns the piece count.
    Two passes: split (prefetching each piece's slot), then look up."""
    n = 1
    piece = start
    w0, w1 = np.uint64(0), np.uint64(0)
    for i in range(start, end):
        c = np.uint64(data[i])
        kind = byte_class[data[i]]
        if kind == 0:
            at = i - piece
            if at < 8:
                w0 |= c << np.uint64(8 * at)
            elif at < 16:
                w1 |= c << np.uint64(8 * (at - 8))
            continue
        if kind == 3:  # character mode: every code point is a piece (its lead byte starts one)
            if i > piece:
                _add_piece(piece, i, w0, w1, table, n, starts, ends, keys0, keys1, hashes)
                n += 1
            piece = i
            w0, w1 = c, np.uint64(0)
            continue
        _add_piece(piece, i, w0, w1, table, n, starts, ends, keys0, keys1, hashes)
        n += 1
        if kind == 2:  # " P ": the punctuation is a piece of its own
            _add_piece(i, i + 1, c, np.uint64(0), table, n, starts, ends, keys0, keys1, hashes)
            n += 1
        piece = i + 1
        w0, w1 = np.uint64(0), np.uint64(0)
    _add_piece(piece, end, w0, w1, table, n, starts, ends, keys0, keys1, hashes)
    tokens[0] = -1  # the leading pad's empty piece
    infos[0] = 0
    for k in range(1, n + 1):
        _lookup_word(hashes[k], keys0[k], keys1[k], data, starts[k], ends[k], table, words, word_offsets,
                     tokens, infos, k)
    tokens[n + 1] = -1  # the trailing pad's empty piece
    infos[n + 1] = 0
    return n + 2


@numba.njit(cache=True, nogil=True)
def _match_rows(data, row_offsets, valid, byte_class, table, words, word_offsets, edges, term_ids, vocab_size):
    """Per-row sorted distinct matched ids: (list offsets int64, ids int32)."""
    rows = len(row_offsets) - 1
    longest = 0
    for r in range(rows):
        longest = max(longest, row_offsets[r + 1] - row_offsets[r])
    tokens = np.empty(2 * longest + 3, dtype=np.int64)
    infos = np.empty(2 * longest + 3, dtype=np.int64)
    starts = np.empty(2 * longest + 3, dtype=np.int64)
    ends = np.empty(2 * longest + 3, dtype=np.int64)
    keys0 = np.empty(2 * longest + 3, dtype=np.uint64)
    keys1 = np.empty(2 * longest + 3, dtype=np.uint64)
    hashes = np.empty(2 * longest + 3, dtype=np.uint64)
    out = np.empty(max(16, 4 * rows), dtype=np.int32)
    offsets = np.zeros(rows + 1, dtype=np.int64)
    count = 0
    edge_mask = np.uint64(len(edges) - 1)
    for r in range(rows):
        row_start = count
        if valid[r] and vocab_size > 0:
            n = _tokenize(data, row_offsets[r], row_offsets[r + 1], byte_class, table, words, word_offsets,
                          tokens, infos, starts, ends, keys0, keys1, hashes)
            for i in range(n - 1):  # prefetch the first transition of every walk that can take one
                if infos[i] & 3 == 3 and tokens[i + 1] >= 0:
                    _prefetch(edges, np.int64(_edge_slot(tokens[i] * vocab_size + tokens[i + 1], edge_mask)))
            for i in range(n):
                info = infos[i]
                if info & 1 == 0:  # not the first word of any entry
                    continue
                node = tokens[i]
                j = i + 1
                while True:
                    ending = (info >> 2) & ((1 << _COUNT_BITS) - 1)  # entries ending here
                    if ending:
                        if count + ending > len(out):
                            grown = np.empty(2 * (count + ending), dtype=np.int32)
                            grown[:count] = out[:count]
                            out = grown
                        value = info >> _VALUE_SHIFT
                        if ending == 1:
                            out[count] = value
                        else:
                            out[count : count + ending] = term_ids[value : value + ending]
                        count += ending
                    if info & 2 == 0 or j >= n or tokens[j] < 0:
                        break
                    key = node * vocab_size + tokens[j]
                    slot = _edge_slot(key, edge_mask)
                    while edges[slot, 0] != -1 and edges[slot, 0] != key:
                        slot = (slot + np.uint64(1)) & edge_mask
                    if edges[slot, 0] == -1:
                        break
                    node, info = edges[slot, 1], edges[slot, 2]
                    j += 1
        if count - row_start > 32:
            out[row_start:count].sort()
        elif count - row_start > 1:  # insertion sort: most rows hold a handful of ids
            for k in range(row_start + 1, count):
                value = out[k]
                m = k - 1
                while m >= row_start and out[m] > value:
                    out[m + 1] = out[m]
                    m -= 1
                out[m + 1] = value
        if count - row_start > 1:  # de-duplicate in place
            kept = row_start + 1
            for k in range(row_start + 1, count):
                if out[k] != out[kept - 1]:
                    out[kept] = out[k]
                    kept += 1
            count = kept
        offsets[r + 1] = count
    return offsets, out[:count].copy()


def _as_string_array(texts: Sequence[str | None] | pa.Array | pa.ChunkedArray) -> pa.StringArray:
    """One contiguous ``string`` array (chunks combined, large_string narrowed)."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks() if texts.num_chunks != 1 else texts.chunk(0)
    if not isinstance(texts, pa.Array):
        texts = pa.array(list(texts), type=pa.string())
    if not pa.types.is_string(texts.type):
        texts = texts.cast(pa.string())
    return texts


def _string_buffers(array: pa.StringArray) -> tuple[np.ndarray, np.ndarray]:
    """(utf-8 bytes, row offsets rebased to 0, int64) of a string array (a null row's bytes are
    whatever its offsets span; callers skip null rows)."""
    if len(array) == 0:
        return np.empty(0, dtype=np.uint8), np.zeros(1, dtype=np.int64)
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[array.offset : array.offset + len(array) + 1]
    buffer = array.buffers()[2]
    data = np.frombuffer(buffer, dtype=np.uint8) if buffer is not None else np.empty(0, dtype=np.uint8)
    return data[offsets[0] : offsets[-1]], (offsets - offsets[0]).astype(np.int64)


def load_queries(path: str) -> list[str]:
    """The query strings of a ``queries.parquet`` (``query_id``, ``query``) in id order, or of a
    text file with one query per line (id = line number)."""
    if not path.endswith(".parquet"):
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        return lines[:-1] if lines and lines[-1] == "" else lines
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["query_id", "query"]).sort_by("query_id")
    ids = table.column("query_id").to_numpy()
    if not np.array_equal(ids, np.arange(len(ids))):
        raise ValueError(f"{path}: query_id must be 0..{len(ids) - 1} without gaps")
    return table.column("query").to_pylist()


def load_query_languages(path: str) -> np.ndarray | None:
    """The ``language`` of each entry of a worldwide ``queries.parquet`` (object array, id
    order), or None for a list without that column (English-only: one matcher, one t)."""
    if not path.endswith(".parquet"):
        return None
    import pyarrow.parquet as pq

    if "language" not in pq.read_schema(path).names:
        return None
    table = pq.read_table(path, columns=["query_id", "language"]).sort_by("query_id")
    languages = np.asarray(table.column("language").to_pylist(), dtype=object)
    if any(lang is None or lang == "" for lang in languages):
        raise ValueError(f"{path}: an entry has no language")
    return languages


class WorldwideMatcher:
    """One matcher per language of a worldwide query list (MetaCLIP 2): a caption is matched
    only against its own language's entries -- by the spaced rule, or by raw substring for
    scripts written without spaces (:func:`is_no_space`): the same compiled matcher in character
    mode (``QueryMatcher(characters=True)``: every code point is a piece, so a run of pieces is
    exactly a substring). Returns global query ids (positions in the whole list), sorted."""

    def __init__(self, queries: Sequence[str], languages: Sequence[str]):
        queries = list(queries)
        languages = np.asarray(languages, dtype=object)
        if len(languages) != len(queries):
            raise ValueError(f"{len(queries)} entries but {len(languages)} languages")
        self.num_queries = len(queries)
        self.by_language: dict[str, tuple[np.ndarray, object]] = {}
        for language in sorted(set(languages.tolist())):
            ids = np.flatnonzero(languages == language).astype(np.int32)
            entries = [queries[i] for i in ids]
            matcher = QueryMatcher(entries, characters=is_no_space(language))
            self.by_language[language] = (ids, matcher)

    def match_arrow(self, texts, row_languages) -> pa.ListArray:
        """Per text, its language's matched entries as global ids (a row whose language has no
        entries, or none, matches nothing)."""
        texts = _as_string_array(texts)
        if isinstance(row_languages, pa.ChunkedArray):
            row_languages = row_languages.combine_chunks() if row_languages.num_chunks else pa.array([], pa.string())
        encoded = pc.dictionary_encode(pc.fill_null(pa.array(row_languages, pa.string()), ""))
        n = len(texts)
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        order = np.argsort(codes, kind="stable")  # the rows grouped by language, in one pass
        bounds = np.searchsorted(codes[order], np.arange(len(encoded.dictionary) + 1))
        lengths = np.zeros(n, dtype=np.int64)
        rows_of, values_of = [], []
        for code, language in enumerate(encoded.dictionary.to_pylist()):
            if language not in self.by_language:
                continue
            ids, matcher = self.by_language[language]
            rows = order[bounds[code]:bounds[code + 1]]
            local = matcher.match_arrow(texts.take(pa.array(rows)))
            counts = np.diff(local.offsets.to_numpy())
            lengths[rows] = counts
            rows_of.append(np.repeat(rows, counts))
            values_of.append(ids[pc.list_flatten(local).to_numpy(zero_copy_only=False).astype(np.int64)])
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        if rows_of:
            rows, values = np.concatenate(rows_of), np.concatenate(values_of)
            values = values[np.argsort(rows, kind="stable")]  # one language per row: its ids stay sorted
        else:
            values = np.zeros(0, np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int32()))


class MatchStage:
    """The match stage: adds ``query_ids`` (list<int32>, empty for rows rejected upstream) and
    marks live rows matching no entry as ``no_match``. Builds the matcher once, in ``__init__``:
    for a worldwide list (a ``language`` column) one per language, each row matched against its
    own ``language``'s entries (the text stage's language ID, ``--languages``)."""

    def __init__(self, queries_path: str):
        queries, languages = load_queries(queries_path), load_query_languages(queries_path)
        self.matcher = QueryMatcher(queries) if languages is None else WorldwideMatcher(queries, languages)

    def __call__(self, table: pa.Table) -> pa.Table:
        from curation.stage import live_mask, with_reasons

        table = with_reasons(table)
        live = live_mask(table)
        texts = pc.if_else(pa.array(live), table.column("text"), pa.scalar(None, pa.string()))
        if isinstance(self.matcher, WorldwideMatcher):
            if "language" not in table.column_names:
                raise ValueError("the query list is worldwide (it has a language column): the text stage must "
                                 "give each caption its language (--languages)")
            query_ids = self.matcher.match_arrow(texts, table.column("language"))
        else:
            query_ids = self.matcher.match_arrow(texts)
        if "query_ids" in table.column_names:
            table = table.drop_columns(["query_ids"])
        table = table.append_column("query_ids", query_ids)
        matched = pc.list_value_length(query_ids).to_numpy(zero_copy_only=False) > 0
        return with_reasons(table, np.where(matched, "", "no_match").astype(object))
