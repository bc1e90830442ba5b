"""Streaming training data from WebDataset shards (``<key>.jpg|png|webp`` + ``<key>.txt``).

Per rank: shards are resampled with replacement (seeded by rank and loader worker, so ranks
read different streams) or, with ``resample=False``, split by node and by worker and repeated;
samples are shuffled in a buffer, decoded, randomly cropped, tokenised and batched into
fixed-size batches only (no partial batch), so every rank runs the same number of steps with
the same batch shapes (ranks with different step counts hang DDP, ray#66085).

Bad samples are skipped and counted, never fatal: ``missing_image``, ``missing_text``,
``bad_text`` (not UTF-8 / empty), ``corrupt_image`` (PIL cannot decode it, or a
decompression bomb); an unreadable tar file counts as ``unreadable_shard``. For samples,
``read == decoded + sum(rejected)``; without resampling, the decoded samples left over at the
end of each pass over the shards (less than a batch) count as ``partial_batch``. Each batch
carries the counts since the previous batch.
"""

from __future__ import annotations

import io
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

from pretrain.tokenizer import CaptionTokenizer
from pretrain.transform import ImageTransform

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
MAX_CONSECUTIVE_FAILURES = 1000  # this many failures in a row, no success: the data is unusable


@dataclass
class TrainBatch:
    images: torch.Tensor  # (B, 3, S, S) normalised pixels
    texts: torch.Tensor  # (B, context_length) token ids
    counts: dict[str, int] = field(default_factory=dict)  # read / decoded / rejects since last batch

    def pin_memory(self) -> "TrainBatch":
        """The batch in page-locked memory (DataLoader's ``pin_memory`` calls this), so the copy
        to the GPU can overlap compute (``.to(device, non_blocking=True)``)."""
        return TrainBatch(self.images.pin_memory(), self.texts.pin_memory(), self.counts)


class SampleDecoder:
    """WebDataset pipeline stage: raw tar samples -> (image tensor, caption), counting rejects.

    Holds the per-worker state (transform RNG, counters); reseeded per rank and loader worker
    when iteration starts so augmentations differ between workers."""

    def __init__(self, transform: ImageTransform, seed: int):
        self.transform = transform
        self.seed = seed
        self.counts: Counter = Counter()
        self.consecutive_failures = 0
        self.last_error = ""

    def _failed(self, reason: str, where: str) -> None:
        self.counts[reason] += 1
        self.consecutive_failures += 1
        self.last_error = f"{reason} at {where}"
        if self.consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
            raise RuntimeError(
                f"{MAX_CONSECUTIVE_FAILURES} training samples/shards failed in a row "
                f"(last: {self.last_error}); counts so far: {dict(self.counts)}"
            )

    def on_tar_error(self, exn: Exception) -> bool:
        """webdataset handler for unreadable tar files: count, then continue."""
        self._failed("unreadable_shard", f"{exn}")
        return True

    def decode(self, sample: dict) -> tuple[torch.Tensor, str] | None:
        """One raw sample -> (image, caption), or None after counting the reject reason."""
        where = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
        image_key = next((k for k in IMAGE_EXTENSIONS if k in sample), None)
        if image_key is None:
            return self._failed("missing_image", where)
        if "txt" not in sample:
            return self._failed("missing_text", where)
        try:
            caption = sample["txt"].decode("utf-8").strip()
        except UnicodeDecodeError:
            caption = ""
        if not caption:
            return self._failed("bad_text", where)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(sample[image_key])) as image:
                    pixels = self.transform(image)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning):
            return self._failed("corrupt_image", where)
        self.counts["decoded"] += 1
        if "__source__" in sample:  # a mixed stream's sample: which source it came from
            self.counts[f"source_{sample['__source__']}"] += 1
        self.consecutive_failures = 0
        return pixels, caption

    def __call__(self, samples: Iterator[dict]) -> Iterator[tuple[torch.Tensor, str]]:
        self.transform.rng = random.Random(self.seed * 100_003 + wds.utils.pytorch_worker_seed())
        for sample in samples:
            self.counts["read"] += 1
            decoded = self.decode(sample)
            if decoded is not None:
                yield decoded


class Batcher:
    """WebDataset pipeline stage: (image, caption) pairs -> full ``TrainBatch``es only."""

    def __init__(self, decoder: SampleDecoder, tokenizer: CaptionTokenizer, batch_size: int):
        self.decoder = decoder  # the same object as the decode stage: its counts are read here
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.reported: Counter = Counter()  # decoder counts already attached to a batch

    def __call__(self, pairs: Iterator[tuple[torch.Tensor, str]]) -> Iterator[TrainBatch]:
        images, captions = [], []
        for pixels, caption in pairs:
            images.append(pixels)
            captions.append(caption)
            if len(images) == self.batch_size:
                counts = Counter(self.decoder.counts)
                counts.subtract(self.reported)
                self.reported = Counter(self.decoder.counts)
                yield TrainBatch(torch.stack(images), self.tokenizer(captions), dict(counts))
                images, captions = [], []
        # end of a finite pass (resample=False): the decoded remainder is not trained on
        self.decoder.counts["partial_batch"] += len(images)


def require_shards(shards: Iterator[dict]) -> Iterator[dict]:
    """Pass shards through; raise if this rank/worker got none (fewer shards than
    ranks x loader workers without resampling would otherwise repeat an empty epoch forever)."""
    empty = True
    for shard in shards:
        empty = False
        yield shard
    if empty:
        rank, world_size, worker, num_workers = wds.utils.pytorch_worker_info()
        raise ValueError(
            f"rank {rank}/{world_size}, loader worker {worker}/{num_workers} got no shard: "
            "use at least ranks x loader workers shards, or resample=True"
        )


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


class MixedSources(torch.utils.data.IterableDataset):
    """Weighted mixing of several shard sources (open_clip's long-asked ``--train-data``
    weights): each source is an endless stream (shards resampled with replacement, its own
    shuffle buffer), and every sample is drawn from source ``i`` with probability ``w_i / sum w``
    by a generator seeded by ``seed`` and the rank/loader worker (deterministic, different per
    worker). Samples carry ``__source__``, which the decoder counts (``source_<i>``)."""

    def __init__(self, sources: list[str], weights: list[float], seed: int, shuffle_buffer: int, handler):
        self.sources, self.weights, self.seed = sources, weights, seed
        self.shuffle_buffer, self.handler = shuffle_buffer, handler

    def __iter__(self) -> Iterator[dict]:
        streams = [iter(wds.DataPipeline(wds.ResampledShards(source, seed=self.seed + 7919 * i, deterministic=True),
                                         shard_samples(handler=self.handler),
                                         wds.shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 100))))
                   for i, source in enumerate(self.sources)]
        rng = random.Random(self.seed * 1_000_003 + wds.utils.pytorch_worker_seed())
        choices = list(range(len(streams)))
        while True:
            i = rng.choices(choices, weights=self.weights)[0]
            yield {**next(streams[i]), "__source__": i}


def make_train_pipeline(
    urls: str | list[str],
    tokenizer: CaptionTokenizer,
    image_size: int,
    batch_size: int,
    seed: int = 0,
    resample: bool = True,
    shuffle_buffer: int = 1000,
    weights: str = "",
) -> wds.DataPipeline:
    """The per-rank WebDataset pipeline yielding ``TrainBatch``es forever (see module doc).

    ``urls`` is a brace pattern (``'shards/{00000..00009}.tar'``, several joined by ``::``)
    or a list of paths/URIs (``s3://bucket/run/curation/shards/{00000..00009}.tar``). With
    ``weights`` (one per ``::``-joined source) the sources are mixed sample by sample with
    those weights (:class:`MixedSources`; resampling only); without, they are one shard list."""
    decoder = SampleDecoder(ImageTransform(image_size, train=True), seed)
    if weights:
        if not resample or not isinstance(urls, str):
            raise ValueError("--train-data-weights mixes '::'-joined sources of a resampled stream (resample=True)")
        return wds.DataPipeline(MixedSources(urls.split("::"), parse_weights(urls, weights), seed, shuffle_buffer,
                                             decoder.on_tar_error),
                                decoder, Batcher(decoder, tokenizer, batch_size))
    if resample:
        shards = [wds.ResampledShards(urls, seed=seed, deterministic=True)]
    else:
        shards = [wds.SimpleShardList(urls), wds.split_by_node, wds.split_by_worker, require_shards]
    pipeline = wds.DataPipeline(
        *shards,
        shard_samples(handler=decoder.on_tar_error),
        wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 100)),
        decoder,
        Batcher(decoder, tokenizer, batch_size),
    )
    return pipeline if resample else pipeline.repeat(nepochs=-1)


def train_batches(pipeline: wds.DataPipeline, num_workers: int, pin_memory: bool = False) -> Iterator[TrainBatch]:
    """Iterate ``pipeline`` in ``num_workers`` loader processes (0 = in this process); with
    ``pin_memory`` (a CUDA run) the batches arrive in page-locked memory."""
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
