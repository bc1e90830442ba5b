"""Training batches from WebDataset shards (``<key>.jpg|png|webp`` + ``<key>.txt``).

Per rank and loader worker, a :class:`pretrain.stream.SlotStream` gives an endless, deterministic
sequence of raw samples whose position is recorded exactly (shard order per data epoch, block
shuffle, weighted mixing of ``::``-joined sources, online balancing: :mod:`pretrain.stream`);
samples are decoded, randomly cropped (the crop seeded by the sample's place in the stream, so a
resumed run crops as the uninterrupted one did), tokenised and batched into fixed-size batches
only, so every rank runs the same number of steps with the same batch shapes (ranks with
different step counts hang DDP, ray#66085).

Bad samples are skipped and counted, never fatal: ``missing_image``, ``missing_text``,
``bad_text`` (not UTF-8 / empty), ``corrupt_image`` (PIL cannot decode it, or a decompression
bomb); an unreadable tar file counts as ``unreadable_shard``. For samples, ``read == decoded +
sum(rejected) + not_sampled + no_query_ids`` + those waiting in a shuffle block. Each batch
carries the counts since the previous batch of its loader worker, the ids of its samples (json
``uid``, else the key) and its slot's state after its last sample.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import random
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import fsspec
import torch
import webdataset as wds
from PIL import Image
from webdataset.filters import pipelinefilter
from webdataset.tariterators import group_by_keys, tar_file_expander

from curation.text.balance import BALANCE_MODES
from pretrain.online import OnlineBalance
from pretrain.stream import SlotStream, SourceStream, initial_state, mix64
from pretrain.tokenizer import CaptionTokenizer
from pretrain.transform import ImageTransform
from storage.layout import expand_shards

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
MAX_CONSECUTIVE_FAILURES = 1000  # this many failures in a row, no success: the data is unusable


@dataclass
class TrainBatch:
    images: torch.Tensor  # (B, 3, S, S) normalised pixels
    texts: torch.Tensor  # (B, context_length) token ids
    counts: dict[str, int] = field(default_factory=dict)  # read / decoded / rejects since last batch
    ids: list[str] = field(default_factory=list)  # the samples' ids (json uid, else the key), in batch order
    slot: int = 0  # the (rank, loader worker) slot it came from
    state: dict = field(default_factory=dict)  # the slot's stream state after the batch's last sample
    epoch: int = 0  # the data epoch of its last sample

    def pin_memory(self) -> "TrainBatch":
        """The batch in page-locked memory (DataLoader's ``pin_memory`` calls this), so the copy
        to the GPU can overlap compute (``.to(device, non_blocking=True)``)."""
        return TrainBatch(self.images.pin_memory(), self.texts.pin_memory(), self.counts, self.ids, self.slot,
                          self.state, self.epoch)


class SampleDecoder:
    """WebDataset pipeline stage: raw tar samples -> (image tensor, caption, sample), counting
    rejects. Holds the per-worker counters (shared with the stream); the crop of each sample is
    drawn from a generator seeded by (seed, its slot, its index in the slot's stream)."""

    def __init__(self, transform: ImageTransform, seed: int):
        self.transform = transform
        self.seed = seed
        self.counts: Counter = Counter()
        self.consecutive_failures = 0
        self.last_error = ""

    def failed(self, reason: str, where: str) -> None:
        """Count a failure (``reason`` at ``where``); this many in a row with no success: an error."""
        self.counts[reason] += 1
        self.consecutive_failures += 1
        self.last_error = f"{reason} at {where}"
        if self.consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
            raise RuntimeError(
                f"{MAX_CONSECUTIVE_FAILURES} training samples/shards failed in a row "
                f"(last: {self.last_error}); counts so far: {dict(self.counts)}"
            )

    def decode(self, sample: dict) -> tuple[torch.Tensor, str] | None:
        """One raw sample -> (image, caption), or None after counting the reject reason."""
        if "__state__" in sample:  # the crop: a pure function of the sample's place in the stream
            self.transform.rng = random.Random(mix64(self.seed, sample["__slot__"], sample["__state__"]["k"]))
        where = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
        image_key = next((k for k in IMAGE_EXTENSIONS if k in sample), None)
        if image_key is None:
            return self.failed("missing_image", where)
        if "txt" not in sample:
            return self.failed("missing_text", where)
        try:
            caption = sample["txt"].decode("utf-8").strip()
        except UnicodeDecodeError:
            caption = ""
        if not caption:
            return self.failed("bad_text", where)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(sample[image_key])) as image:
                    pixels = self.transform(image)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning):
            return self.failed("corrupt_image", where)
        self.counts["decoded"] += 1
        if "__source__" in sample:  # a mixed stream's sample: which source it came from
            self.counts[f"source_{sample['__source__']}"] += 1
        self.consecutive_failures = 0
        return pixels, caption

    def __call__(self, samples: Iterator[dict]) -> Iterator[tuple[torch.Tensor, str, dict]]:
        for sample in samples:
            decoded = self.decode(sample)
            if decoded is not None:
                yield (*decoded, sample)


class Batcher:
    """WebDataset pipeline stage: (image, caption) pairs -> full ``TrainBatch``es only."""

    def __init__(self, decoder: SampleDecoder, tokenizer: CaptionTokenizer, batch_size: int):
        self.decoder = decoder  # the same object as the decode stage: its counts are read here
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.reported: Counter = Counter()  # decoder counts already attached to a batch

    def __call__(self, pairs: Iterator[tuple[torch.Tensor, str, dict]]) -> Iterator[TrainBatch]:
        images, captions, ids = [], [], []
        for pixels, caption, sample in pairs:
            images.append(pixels)
            captions.append(caption)
            ids.append(sample_id(sample))
            if len(images) == self.batch_size:
                counts = Counter(self.decoder.counts)
                counts.subtract(self.reported)
                self.reported = Counter(self.decoder.counts)
                yield TrainBatch(torch.stack(images), self.tokenizer(captions), {k: v for k, v in counts.items() if v},
                                 ids, sample.get("__slot__", 0), sample.get("__state__", {}), sample.get("__epoch__", 0))
                images, captions, ids = [], [], []


def sample_id(sample: dict) -> str:
    """A sample's id: the ``uid`` of its json member (curation's shards carry one; the online
    draw has read it already: ``__uid__``), else its key."""
    if "__uid__" in sample:
        return sample["__uid__"]
    if "json" in sample:
        try:
            uid = json.loads(sample["json"]).get("uid")
            if isinstance(uid, str) and uid:
                return uid
        except (ValueError, AttributeError):
            pass
    return str(sample.get("__key__", ""))


def open_shards(data: Iterator[dict], handler=wds.reraise_exception) -> Iterator[dict]:
    """Open each shard URL (a local path or any fsspec URI: ``s3://``, ``gs://``…) for streaming;
    ``pipe:`` commands keep webdataset's own opener."""
    for sample in data:
        url = sample["url"]
        try:
            stream = wds.gopen(url) if url.startswith("pipe:") else fsspec.open(url, "rb").open()
            yield {**sample, "stream": stream}
        except Exception as exn:  # noqa: BLE001  (the handler decides: count and skip, or raise)
            exn.args = exn.args + (url,)
            if not handler(exn):
                break


def _shard_samples(src: Iterator[dict], handler=wds.reraise_exception) -> Iterator[dict]:
    """Shard URLs -> WebDataset samples, the shards opened by :func:`open_shards`."""
    files = tar_file_expander(open_shards(src, handler=handler), handler=handler)
    return group_by_keys(files, handler=handler)


shard_samples = pipelinefilter(_shard_samples)


def read_shard(url: str, handler) -> Iterator[dict]:
    """One shard's samples (``handler`` decides on a read error: True skips the rest of the shard)."""
    return _shard_samples(iter([{"url": url}]), handler=handler)


def parse_weights(urls: str, weights: str) -> list[float]:
    """The mixing weights of the ``::``-joined sources of ``urls`` (``weights``: as many numbers,
    ``::``-joined or comma-separated); a count that differs or a weight that is not a positive
    number is an error naming both."""
    sources = urls.split("::")
    values = [w for w in weights.replace(",", "::").split("::") if w.strip()]
    try:
        parsed = [float(w) for w in values]
    except ValueError:
        parsed = []
    if len(parsed) != len(sources) or any(not w > 0 for w in parsed):
        raise ValueError(f"--train-data-weights {weights!r}: need {len(sources)} positive number(s), one per "
                         f"'::'-joined --train-data source ({len(sources)} given)")
    return parsed


class SlotSource(torch.utils.data.IterableDataset):
    """The first stage of a rank's pipeline: in each loader worker (or in the training process),
    the :class:`pretrain.stream.SlotStream` of its slot, ``rank * workers + (worker + rotation) %
    workers`` of ``world_size * workers``, started from ``start[slot]`` when given. ``rotation``
    (the step a run resumes at, mod ``workers``) keeps the batch order across a resume:
    DataLoader takes batches from its workers in turn, starting with worker 0."""

    def __init__(self, sources: list[list[str]], weights: list[float] | None, seed: int, block: int, resample: bool,
                 balances: list[OnlineBalance | None], decoder: SampleDecoder, rank: int = 0, world_size: int = 1,
                 workers: int = 1, rotation: int = 0, start: dict[int, dict] | None = None):
        self.sources, self.weights, self.seed, self.block, self.resample = sources, weights, seed, block, resample
        self.balances, self.decoder = balances, decoder
        self.rank, self.world_size, self.workers, self.rotation = rank, world_size, max(1, workers), rotation
        self.start = start or {}

    def slot(self) -> int:
        info = torch.utils.data.get_worker_info()
        if max(1, info.num_workers if info is not None else 1) != self.workers:
            raise ValueError(f"a pipeline made for {self.workers} loader worker(s) runs in "
                             f"{info.num_workers if info is not None else 0}: pass the same count to "
                             "make_train_pipeline(workers=) and train_batches()")
        worker = info.id if info is not None else 0
        return self.rank * self.workers + (worker + self.rotation) % self.workers

    def __iter__(self) -> Iterator[dict]:
        slot = self.slot()
        state = self.start.get(slot) or initial_state(slot, len(self.sources))
        streams = [SourceStream(shards, i, self.seed, slot, self.world_size * self.workers, self.block, self.resample,
                                self.balances[i], self.decoder.counts, read_shard, self.decoder.failed,
                                state["sources"][i])
                   for i, shards in enumerate(self.sources)]
        for sample in SlotStream(streams, self.weights, self.seed, slot, state["k"]):
            yield {**sample, "__slot__": slot}


def make_train_pipeline(
    urls: str | list[str],
    tokenizer: CaptionTokenizer,
    image_size: int,
    batch_size: int,
    seed: int = 0,
    resample: bool = True,
    shuffle_buffer: int = 1000,
    weights: str = "",
    balance: str = "offline",
    rank: int = 0,
    world_size: int = 1,
    workers: int = 0,
    rotation: int = 0,
    start: dict[int, dict] | None = None,
    sources: DataSources | None = None,
) -> wds.DataPipeline:
    """The per-rank WebDataset pipeline yielding ``TrainBatch``es forever (see module doc).

    ``urls``: a shard directory, brace pattern (``'shards/{00000..00009}.tar'``) or glob, local
    or URI (``s3://bucket/run/curation/shards/{00000..00009}.tar``), several joined by ``::``, or
    a list of files. Without ``weights`` the sources are one shard list; with them (one per
    ``::``-joined source) they are mixed sample by sample with those weights. ``balance``:
    ``online`` draws each data epoch's balanced sample of every source (each must be an online
    pool: :mod:`pretrain.online`). ``shuffle_buffer`` is the shuffle block's size in samples;
    ``workers`` the loader workers (0: in this process); ``rotation`` / ``start``: resume
    (:class:`SlotSource`, :mod:`pretrain.stream`); ``sources``: :func:`data_sources` of those
    arguments, when the caller has them already."""
    sources = sources or data_sources(urls, weights, balance)
    decoder = SampleDecoder(ImageTransform(image_size, train=True), seed)
    source = SlotSource(sources.files, sources.weights, seed, shuffle_buffer, resample, sources.balances, decoder, rank,
                        world_size, workers, rotation, start)
    return wds.DataPipeline(source, decoder, Batcher(decoder, tokenizer, batch_size))


@dataclass
class DataSources:
    """What a training run reads: each source's shard files, the mixing weights (None: one
    pooled source) and each source's online draw (None: offline)."""

    files: list[list[str]]
    weights: list[float] | None
    balances: list[OnlineBalance | None]

    def identity(self) -> list[dict]:
        """Per source: its shard count, a digest of their names and of its online draw — what a
        recorded stream position also depends on (a pattern whose files changed is another stream)."""
        return [{"shards": len(files), "files": hashlib.sha1("\n".join(files).encode()).hexdigest()[:16],
                 "balance": balance.digest if balance is not None else None}
                for files, balance in zip(self.files, self.balances)]


def source_specs(urls: str, weights: str = "") -> list[str]:
    """The sources of ``--train-data``: its ``::``-joined parts when mixed with weights, else one."""
    return urls.split("::") if weights else [urls]


def data_sources(urls: str | list[str], weights: str = "", balance: str = "offline") -> DataSources:
    """The :class:`DataSources` of ``urls`` (a shard spec, several ``::``-joined, or a list of
    files), ``weights`` and ``balance`` mode; an unknown mode, a weight count that does not match
    or a source that is no online pool under ``online`` is an error naming it."""
    if balance not in BALANCE_MODES:
        raise ValueError(f"--balance {balance!r}: use one of {', '.join(BALANCE_MODES)}")
    if isinstance(urls, str):
        files = [shard_files(spec) for spec in source_specs(urls, weights)]
        mix = parse_weights(urls, weights) if weights else None
    elif weights:
        raise ValueError("--train-data-weights mixes '::'-joined sources of a --train-data pattern, not a list of files")
    else:
        files, mix = [list(urls)], None
    return DataSources(files, mix, [online_balance(f) if balance == "online" else None for f in files])


def shard_files(spec: str) -> list[str]:
    """The files of a shard spec (:func:`storage.layout.expand_shards`; ``pipe:`` parts, brace
    patterns of commands, as webdataset expands them)."""
    files: list[str] = []
    for part in spec.split("::"):
        files += wds.shardlists.expand_urls(part) if part.startswith("pipe:") else expand_shards(part)
    return files


def online_balance(files: list[str]) -> OnlineBalance:
    """The online draw of one source: the balance files beside its shards, which must all be in
    one pool directory (several pools: join them with ``::`` and mix them with weights)."""
    directories = sorted({posixpath.dirname(f) for f in files})
    if len(directories) > 1:
        raise ValueError(f"--balance online: a source's shards must be one pool's ({directories[0]} and "
                         f"{directories[1]}); join pools with '::' and --train-data-weights")
    return OnlineBalance.from_shards(files[0])


def train_batches(pipeline: wds.DataPipeline, num_workers: int, pin_memory: bool = False) -> Iterator[TrainBatch]:
    """Iterate ``pipeline`` in ``num_workers`` loader processes (0 = in this process; the same
    count the pipeline was made for); with ``pin_memory`` (a CUDA run) the batches arrive in
    page-locked memory. Batches come from the workers in turn (DataLoader's order)."""
    if num_workers == 0:
        return (batch.pin_memory() for batch in pipeline) if pin_memory else iter(pipeline)
    loader = wds.WebLoader(
        pipeline, batch_size=None, num_workers=num_workers, persistent_workers=True, prefetch_factor=4,
        pin_memory=pin_memory,
    )
    return iter(loader)


def read_captions(urls: str | list[str], limit: int) -> list[str]:
    """Up to ``limit`` captions (``.txt`` members, decoded as UTF-8) from the shards in order,
    for training the tokenizer; unreadable shards and undecodable captions are skipped.
    Raises ``ValueError`` naming the pattern if no caption is found."""
    captions: list[str] = []
    samples = wds.DataPipeline(
        wds.SimpleShardList(urls), shard_samples(handler=wds.warn_and_continue)
    )
    for sample in samples:
        try:
            text = sample.get("txt", b"").decode("utf-8").strip()
        except UnicodeDecodeError:
            continue
        if text:
            captions.append(text)
            if len(captions) >= limit:
                break
    if not captions:
        raise ValueError(f"{urls}: no captions (.txt members) found to train the tokenizer")
    return captions
