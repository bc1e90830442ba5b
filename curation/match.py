"""Substring matching of captions against the query list (MetaCLIP's rule, vectorised).

The rule (``queries/text.py``): an entry matches a text when ``" " + entry + " "`` is a substring
of ``space_text(text)``. Equivalently, with the spaced text split on single spaces, the entry's
``split(" ")`` words occur as a consecutive run of the text's pieces, excluding the first and last
piece (always empty). :class:`QueryMatcher` uses that equivalence over a whole Arrow batch:

1. space the batch with the shared rule (``space_texts``), one buffer for all rows;
2. cut the buffer at every space into pieces ``" word"`` (zero-copy Arrow string array) and map
   each piece to a vocabulary id: the batch's distinct pieces are found with one hash pass
   (``dictionary_encode``) and the vocabulary is looked up in that small set (``index_in``);
   pieces that are no entry's word, empty pieces and row boundaries become ``-1`` and break
   every run;
3. walk a token trie level by level: level 1 maps a token to its trie node with an array lookup;
   level n extends only the positions whose (n-1)-gram is a prefix of some entry, looking up the
   int64 key ``node * V + next_token`` in the trie's transition table (again ``index_in``);
4. matched (row, entry id) pairs are sorted and de-duplicated in one numpy pass.

No hashing of strings into fixed-width keys, so there are no collisions to verify: the trie is
exact. Entries whose ``split(" ")`` contains an empty word (leading, trailing or doubled spaces,
the empty string) cannot be trie paths; they are rare and are matched by a literal
``match_substring`` on the spaced batch, one pass per such entry.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from queries.text import space_texts

_SPACE = 32  # ord(" ")


class QueryMatcher:
    """Matches texts against ``queries`` (query id = position in the sequence).

    Build once per worker (a 500k-entry list takes a few seconds); :meth:`match_arrow` takes a
    batch of texts and returns, per text, the sorted, distinct ids of the entries it matches.
    Null texts match nothing. Repeated entries match under each of their ids.
    """

    def __init__(self, queries: Sequence[str]):
        queries = list(queries)
        self.num_queries = len(queries)
        vocab: dict[str, int] = {}
        run_entries: list[tuple[int, list[int]]] = []
        literal: list[tuple[int, str]] = []
        for query_id, entry in enumerate(queries):
            if not isinstance(entry, str):
                raise TypeError(f"query {query_id} is {type(entry).__name__}, expected str")
            words = entry.split(" ")
            if "" in words:
                literal.append((query_id, f" {entry} "))
                continue
            run_entries.append((query_id, [vocab.setdefault(w, len(vocab)) for w in words]))
        self._literal = literal
        self._vocab_size = len(vocab)
        self._vocab_pieces = pa.array([" " + w for w in vocab], type=pa.string())
        self._build_trie(run_entries)

    def _build_trie(self, run_entries: list[tuple[int, list[int]]]) -> None:
        vocab_size = self._vocab_size
        # node ids: 0 .. V-1 are the depth-1 nodes (node == token id); deeper nodes follow.
        transitions: dict[int, int] = {}
        node_ids: dict[int, list[int]] = {}
        first = np.full(vocab_size + 1, -1, dtype=np.int64)  # [-1] is the "unknown token" slot
        next_node = vocab_size
        for query_id, tokens in run_entries:
            node = tokens[0]
            first[node] = node
            for token in tokens[1:]:
                key = node * vocab_size + token
                child = transitions.get(key)
                if child is None:
                    child = transitions[key] = next_node
                    next_node += 1
                node = child
            node_ids.setdefault(node, []).append(query_id)
        num_nodes = next_node
        self._first_node = first
        keys = np.fromiter(transitions.keys(), dtype=np.int64, count=len(transitions))
        children = np.fromiter(transitions.values(), dtype=np.int64, count=len(transitions))
        self._transition_keys = pa.array(keys)
        self._transition_child = np.append(children, -1)  # index -1 (no transition) -> -1
        has_child = np.zeros(num_nodes, dtype=bool)
        has_child[keys // max(vocab_size, 1)] = True
        self._has_child = has_child
        # terminal ids in CSR form; most nodes carry zero or one id.
        counts = np.zeros(num_nodes, dtype=np.int64)
        for node, ids in node_ids.items():
            counts[node] = len(ids)
        self._term_start = np.concatenate([[0], np.cumsum(counts)])
        flat = np.empty(int(counts.sum()), dtype=np.int64)
        for node, ids in node_ids.items():
            flat[self._term_start[node] : self._term_start[node] + len(ids)] = sorted(ids)
        self._term_ids = flat
        self._term_count = counts
        self._single = bool(counts.max(initial=0) <= 1)
        self._node_entry = np.full(num_nodes, -1, dtype=np.int64)
        if self._single and len(flat):
            terminal = np.flatnonzero(counts)
            self._node_entry[terminal] = flat[self._term_start[terminal]]

    def match(self, texts: Sequence[str | None] | pa.Array | pa.ChunkedArray) -> list[list[int]]:
        """Per text, the sorted list of matched query ids (Python lists)."""
        return self.match_arrow(texts).to_pylist()

    def match_arrow(self, texts: Sequence[str | None] | pa.Array | pa.ChunkedArray) -> pa.ListArray:
        """Per text, the sorted distinct matched query ids as a ``list<int32>`` Arrow array."""
        texts = _as_string_array(texts)
        rows = len(texts)
        spaced = space_texts(pc.fill_null(texts, ""))
        keys = [self._trie_matches(spaced)]
        valid = np.asarray(texts.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        for query_id, pattern in self._literal:
            hit = np.asarray(pc.match_substring(spaced, pattern).to_numpy(zero_copy_only=False)) & valid
            keys.append(np.flatnonzero(hit).astype(np.int64) * self.num_queries + query_id)
        keys = np.sort(np.concatenate(keys)) if len(keys) > 1 else np.sort(keys[0])
        if len(keys) > 1:
            distinct = np.empty(len(keys), dtype=bool)
            distinct[0] = True
            np.not_equal(keys[1:], keys[:-1], out=distinct[1:])
            keys = keys[distinct]
        row = keys // max(self.num_queries, 1)
        ids = (keys - row * self.num_queries).astype(np.int32)
        offsets = np.zeros(rows + 1, dtype=np.int32)
        np.cumsum(np.bincount(row, minlength=rows), out=offsets[1:])
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids, type=pa.int32()))

    def _trie_matches(self, spaced: pa.StringArray) -> np.ndarray:
        """Keys ``row * num_queries + query_id`` of every trie match (unsorted, may repeat)."""
        if self._vocab_size == 0 or len(spaced) == 0:
            return np.empty(0, dtype=np.int64)
        data, row_offsets = _string_buffers(spaced)
        spaces = np.flatnonzero(data == _SPACE)
        # piece i = data[spaces[i]:spaces[i+1]] = " " + token (the last space closes the last row)
        pieces = pa.StringArray.from_buffers(
            len(spaces) - 1, pa.py_buffer(spaces.astype(np.int32)), pa.py_buffer(data)
        )
        tokens = np.append(self._token_ids(pieces), -1)
        hits_pos: list[np.ndarray] = []
        hits_node: list[np.ndarray] = []
        # level 1: a token's depth-1 node is itself when it starts some entry
        nodes = self._first_node[tokens[:-1]]
        pos = np.flatnonzero(nodes >= 0)
        nodes = nodes[pos]
        depth = 1
        while len(pos):
            hits_pos.append(pos)
            hits_node.append(nodes)
            extend = self._has_child[nodes]
            pos, nodes = pos[extend], nodes[extend]
            nxt = tokens[pos + depth]
            known = nxt >= 0
            pos, nodes, nxt = pos[known], nodes[known], nxt[known]
            index = pc.index_in(pa.array(nodes * self._vocab_size + nxt), value_set=self._transition_keys)
            child = self._transition_child[pc.fill_null(index, -1).to_numpy()]
            found = child >= 0
            pos, nodes = pos[found], child[found]
            depth += 1
        pos = np.concatenate(hits_pos) if hits_pos else np.empty(0, dtype=np.int64)
        nodes = np.concatenate(hits_node) if hits_node else np.empty(0, dtype=np.int64)
        pos, ids = self._terminal_ids(pos, nodes)
        first_piece = np.searchsorted(spaces, row_offsets[:-1])
        row = np.searchsorted(first_piece, pos, side="right") - 1
        return row * self.num_queries + ids

    def _token_ids(self, pieces: pa.StringArray) -> np.ndarray:
        """Vocabulary id of each piece (-1: no entry's word). The batch's distinct pieces are
        hashed once (``dictionary_encode``) and the vocabulary is probed against that small set:
        much cheaper than hashing the 100k+-word vocabulary for every batch."""
        encoded = pc.dictionary_encode(pieces)
        in_batch = pc.fill_null(pc.index_in(self._vocab_pieces, value_set=encoded.dictionary), -1).to_numpy()
        vocab_of_code = np.full(len(encoded.dictionary) + 1, -1, dtype=np.int64)
        present = np.flatnonzero(in_batch >= 0)
        vocab_of_code[in_batch[present]] = present
        return vocab_of_code[encoded.indices.to_numpy()]

    def _terminal_ids(self, pos: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Expand (position, node) pairs into (position, query id) for nodes that end entries."""
        if self._single:
            ids = self._node_entry[nodes]
            keep = ids >= 0
            return pos[keep], ids[keep]
        counts = self._term_count[nodes]
        keep = counts > 0
        pos, nodes, counts = pos[keep], nodes[keep], counts[keep]
        starts = np.repeat(self._term_start[nodes], counts)
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return np.repeat(pos, counts), self._term_ids[starts + within]


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
    """(utf-8 bytes, row offsets rebased to 0) of a null-free string array."""
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[array.offset : array.offset + len(array) + 1]
    data = np.frombuffer(array.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    return data, (offsets - offsets[0]).astype(np.int64)


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


class MatchStage:
    """The match stage: adds ``query_ids`` (list<int32>, empty for rows rejected upstream) and
    marks live rows matching no entry as ``no_match``. Builds the matcher once, in ``__init__``."""

    def __init__(self, queries_path: str):
        self.matcher = QueryMatcher(load_queries(queries_path))

    def __call__(self, table: pa.Table) -> pa.Table:
        from curation.stage import live_mask, with_reasons

        table = with_reasons(table)
        live = live_mask(table)
        texts = pc.if_else(pa.array(live), table.column("text"), pa.scalar(None, pa.string()))
        query_ids = self.matcher.match_arrow(texts)
        if "query_ids" in table.column_names:
            table = table.drop_columns(["query_ids"])
        table = table.append_column("query_ids", query_ids)
        matched = pc.list_value_length(query_ids).to_numpy(zero_copy_only=False) > 0
        return with_reasons(table, np.where(matched, "", "no_match").astype(object))
