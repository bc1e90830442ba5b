"""A learned copy detector (CLIP App. C, sized for CPU): which images are augmented copies of each other.

Model (:class:`CopyDetector`): a small residual ConvNet at ``image_size`` px (64 by default) with
**weight norm instead of batch norm** (batch statistics would leak duplicates inside a batch),
**GELU**, and **anti-aliased downsampling** (a fixed 3x3 binomial blur before every stride-2
step, Zhang 2019); GeM pooling (SSCD), a weight-normed projection, L2-normalised output. Each
input is standardised per image (mean 0, std 1 over its pixels), which makes the detector blind
to global brightness.

Training (:func:`train_copy_detector`): CLIP's InfoNCE at a **fixed temperature of 0.07** matching
each image with an augmented view of itself against every other image of the batch (both
directions). Views (:func:`augment`, OpenCV + Pillow + NumPy, no torchvision): random crop/zoom
with aspect distortion, down-and-up scaling with a random interpolation, small rotation, JPEG
re-encoding, HSV jitter, text and image overlays and blur (SSCD's additions). From the second
epoch, batches are groups of mutual nearest neighbours under the current model
(:func:`neighbour_batches`): look-alike distinct images (keycap emoji, similar shirts) are what
a detector confuses with copies, so they are made each other's negatives.

Search side: an eval image is embedded as 19 views (:func:`query_crops`: whole, and 85% / 75%
crops on a 3x3 grid) and scores the best of them against each training image, since a training
copy is usually a crop of the original; blank views (:func:`blank_views`) are not searched.
Training images are compared without the white bars curation's border resize added
(:func:`unborder`). Inputs smaller than the model's side are enlarged bicubically (:func:`_fit`).

The shipped detector ``contamination/assets/copy_detector.pt`` is trained by
``pipelines/demo/train_copy_detector.py`` on the sample data. Checkpoints: ``torch.save({"config":
asdict(cfg), "model": state_dict, ...})``, loaded with ``torch.load(weights_only=True)``
(:func:`load_copy_detector`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from storage.files import atomic_write

SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "assets" / "copy_detector.pt"  # trained by pipelines/demo/train_copy_detector.py

INTERPOLATIONS = (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA)
_WORDS = ("sale", "new", "photo", "2024", "wow", "lol", "copyright", "HD", "free", "best", "#1")


@dataclass(frozen=True)
class CopyDetectorConfig:
    """Architecture and training settings of the copy detector."""

    image_size: int = 64  # model input side, pixels
    width: int = 16  # channels of the stem (doubled by each of the 3 following stages)
    blocks: int = 1  # residual blocks (two weight-normed 3x3 convs) per stage
    embed_dim: int = 128  # output embedding size
    temperature: float = 0.07  # fixed InfoNCE temperature (CLIP App. C)
    batch_size: int = 64  # images per step (2 views each)
    lr: float = 2e-3  # AdamW peak learning rate (cosine decay)
    epochs: int = 4  # passes over the training images
    max_seconds: float = 0.0  # stop training after this long (0 = no limit)
    hard_negatives: bool = True  # from the 2nd epoch, batches of mutual nearest neighbours
    group: int = 8  # images per neighbour group in a hard-negative batch
    seed: int = 0  # seed of the model init and the augmentations


class BlurPool(nn.Module):
    """Anti-aliased stride-2 downsampling: a fixed depthwise [1,2,1]x[1,2,1]/16 blur, stride 2."""

    def __init__(self, channels: int):
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("kernel", (k[:, None] * k[None, :] / 16).expand(channels, 1, 3, 3).clone())
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.kernel, stride=2, groups=self.channels)


def _conv(cin: int, cout: int) -> nn.Module:
    return weight_norm(nn.Conv2d(cin, cout, 3, padding=1))


class Residual(nn.Module):
    """x + (conv, GELU, conv)(GELU(x)) / 2 with weight-normed 3x3 convs (no normalisation layer)."""

    def __init__(self, channels: int):
        super().__init__()
        self.a, self.b = _conv(channels, channels), _conv(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.5 * self.b(F.gelu(self.a(F.gelu(x))))


def gem(x: torch.Tensor, p: float = 3.0) -> torch.Tensor:
    """Generalised-mean pooling over the spatial axes (SSCD's pooling; p=1 is the average)."""
    return x.clamp_min(1e-6).pow(p).mean(dim=(2, 3)).pow(1 / p)


class CopyDetector(nn.Module):
    """(B, 3, S, S) float images in [0, 1] -> (B, embed_dim) L2-normalised embeddings: a stem
    conv and 3 stages (conv to twice the channels, ``blocks`` residual blocks, GELU, anti-aliased
    stride 2 but for the last), GeM pooling of the GELU'd features, a weight-normed projection."""

    def __init__(self, cfg: CopyDetectorConfig):
        super().__init__()
        w = cfg.width
        layers: list[nn.Module] = [_conv(3, w), nn.GELU(), BlurPool(w)]  # S -> S/2
        for cin, cout in ((w, 2 * w), (2 * w, 4 * w), (4 * w, 8 * w)):
            layers += [_conv(cin, cout), *(Residual(cout) for _ in range(cfg.blocks)), nn.GELU()]
            layers += [BlurPool(cout)] if cout < 8 * w else []
        self.features = nn.Sequential(*layers)  # (B, 8w, S/8, S/8)
        self.proj = weight_norm(nn.Linear(8 * w, cfg.embed_dim))
        self.cfg = cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
        h = gem(F.gelu(self.features((x - mean) / std)))  # (B, 8w)
        return F.normalize(self.proj(h), dim=-1)


def to_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB of a PIL image or a grey/RGB/RGBA array (alpha composited on white)."""
    if isinstance(image, Image.Image):
        if image.mode in ("RGBA", "LA", "P"):
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, rgba)
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image, dtype=np.uint8)
    return np.repeat(array[:, :, None], 3, axis=2) if array.ndim == 2 else array[:, :, :3]


def _crop(img: np.ndarray, rng: np.random.Generator, min_area: float) -> np.ndarray:
    """Random crop covering ``min_area``..1 of the image with aspect ratio 3/4..4/3."""
    h, w = img.shape[:2]
    area = rng.uniform(min_area, 1.0) * h * w
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    ch, cw = min(h, max(1, int(round(np.sqrt(area / aspect))))), min(w, max(1, int(round(np.sqrt(area * aspect)))))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    return img[y:y + ch, x:x + cw]


def _hsv_jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-10, 10)) % 180
    hsv[..., 1] *= rng.uniform(0.7, 1.3)
    hsv[..., 2] *= rng.uniform(0.6, 1.4)
    return cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB)


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _text_overlay(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    pil = Image.fromarray(img)
    size = max(8, int(min(pil.size) * rng.uniform(0.1, 0.25)))
    font = ImageFont.load_default(size=size)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    xy = (int(rng.uniform(0, 0.6) * pil.width), int(rng.uniform(0, 0.8) * pil.height))
    ImageDraw.Draw(pil).text(xy, str(rng.choice(_WORDS)), fill=colour, font=font)
    return np.asarray(pil)


def _image_overlay(img: np.ndarray, other: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Paste a small (10-25% side) copy of ``other`` somewhere on ``img`` (an emoji-like sticker)."""
    h, w = img.shape[:2]
    side = max(2, int(min(h, w) * rng.uniform(0.1, 0.25)))
    patch = cv2.resize(other, (side, side), interpolation=cv2.INTER_AREA)
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    out = img.copy()
    out[y:y + side, x:x + side] = patch
    return out


def augment(img: np.ndarray, rng: np.random.Generator, size: int, other: np.ndarray | None = None,
            strength: float = 1.0) -> np.ndarray:
    """One augmented ``size`` x ``size`` RGB view of ``img`` (HxWx3 uint8); ``other`` feeds the
    image overlay. ``strength`` (0..1] scales how often each transform is applied."""
    p = lambda q: rng.random() < q * strength  # noqa: E731
    out = _crop(img, rng, 0.4) if p(0.8) else img
    if p(0.5):  # down-and-up scaling, random interpolation each way
        f = rng.uniform(0.25, 0.9)
        small = (max(4, int(out.shape[1] * f)), max(4, int(out.shape[0] * f)))
        out = cv2.resize(out, small, interpolation=int(rng.choice(INTERPOLATIONS)))
    out = cv2.resize(out, (size, size), interpolation=int(rng.choice(INTERPOLATIONS)))
    if p(0.3):
        m = cv2.getRotationMatrix2D((size / 2, size / 2), rng.uniform(-10, 10), 1.0)
        out = cv2.warpAffine(out, m, (size, size), borderMode=cv2.BORDER_REPLICATE)
    if p(0.6):
        out = _hsv_jitter(out, rng)
    if p(0.2):
        out = _text_overlay(out, rng)
    if other is not None and p(0.15):
        out = _image_overlay(out, other, rng)
    if p(0.2):
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.3, 1.2))
    if p(0.5):
        out = _jpeg(out, int(rng.integers(20, 95)))
    return out


def copy_source(img: np.ndarray, min_side: int = 112) -> np.ndarray:
    """RGB ``img`` (grey or RGB uint8) upscaled 4x per step with bicubic interpolation until its
    short side is at least ``min_side``: a copy of a thumbnail-sized eval image (Fashion-MNIST's
    28 px) found on the web is an enlargement, so planted copies start from one."""
    out = to_rgb_array(img)
    while min(out.shape[:2]) < min_side:
        out = cv2.resize(out, (out.shape[1] * 4, out.shape[0] * 4), interpolation=cv2.INTER_CUBIC)
    return out


def make_copy(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A planted near-copy of RGB ``img``: crop keeping 70-95% of each side, resize to a random
    side of 0.5-3x the original's (random interpolation), brightness x0.75-1.25, JPEG q 40-90."""
    h, w = img.shape[:2]
    ch, cw = max(2, int(h * rng.uniform(0.7, 0.95))), max(2, int(w * rng.uniform(0.7, 0.95)))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    side = max(16, int(max(h, w) * rng.uniform(0.5, 3.0)))
    out = cv2.resize(img[y:y + ch, x:x + cw], (side, max(2, side * ch // cw)),
                     interpolation=int(rng.choice(INTERPOLATIONS)))
    out = np.clip(out.astype(np.float32) * rng.uniform(0.75, 1.25), 0, 255).astype(np.uint8)
    return _jpeg(out, int(rng.integers(40, 90)))


def _fit(a: np.ndarray, size: int) -> np.ndarray:
    """``a`` resized to ``size`` x ``size``: area averaging to shrink, bicubic to enlarge (a
    28 px thumbnail or a crop of one enlarged by area/nearest is blocky, unlike its web copies)."""
    if a.shape[:2] == (size, size):
        return a
    small = min(a.shape[:2]) < size
    return cv2.resize(a, (size, size), interpolation=cv2.INTER_CUBIC if small else cv2.INTER_AREA)


def to_tensor(arrays: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """(B, 3, size, size) float in [0, 1] from RGB uint8 arrays (resized by :func:`_fit`)."""
    batch = np.stack([_fit(a, size) for a in arrays])
    return torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255)


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """CLIP's symmetric InfoNCE between paired L2-normalised rows of ``a`` and ``b`` at a fixed temperature."""
    logits = a @ b.T / temperature
    target = torch.arange(len(a))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def neighbour_batches(model: CopyDetector, base: Sequence[np.ndarray], cfg: CopyDetectorConfig,
                      rng: np.random.Generator) -> np.ndarray:
    """An epoch's image order in which consecutive runs of ``cfg.group`` images are nearest
    neighbours under the current model (hard negatives for each other in a batch): visit images
    in random order, each unused one opening a group with its unused nearest neighbours."""
    import faiss

    model.eval()
    with torch.no_grad():
        emb = np.concatenate([model(to_tensor(base[s:s + 512], cfg.image_size)).numpy()
                              for s in range(0, len(base), 512)])
    model.train()
    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(emb)
    _, neighbours = index.search(emb, min(len(base), 4 * cfg.group))
    used, order = np.zeros(len(base), bool), []
    for i in rng.permutation(len(base)):
        if used[i]:
            continue
        group = [i] + [int(j) for j in neighbours[i] if not used[j] and j != i][: cfg.group - 1]
        used[group] = True
        order += group
    return np.asarray(order)


def train_copy_detector(images: Sequence[np.ndarray], cfg: CopyDetectorConfig,
                        log: Callable[[str], None] | None = None) -> tuple[CopyDetector, dict]:
    """Train a :class:`CopyDetector` from scratch on RGB uint8 ``images`` (each at any size;
    pre-shrunk to 2x ``image_size`` once). Returns the model (eval mode) and a summary
    (steps, epochs, seconds, last loss, images)."""
    if len(images) < 2:
        raise ValueError(f"the copy detector needs at least 2 training images, got {len(images)}")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    base = [cv2.resize(im, (2 * cfg.image_size, 2 * cfg.image_size), interpolation=cv2.INTER_AREA) for im in images]
    model = CopyDetector(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    bs = min(cfg.batch_size, len(base))
    steps_per_epoch = max(1, len(base) // bs)
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=max(total, 1), pct_start=0.1)
    started, step, loss = time.time(), 0, torch.tensor(float("nan"))
    model.train()
    for epoch in range(cfg.epochs):
        order = neighbour_batches(model, base, cfg, rng) if cfg.hard_negatives and epoch else rng.permutation(len(base))
        for s in range(steps_per_epoch):
            idx = order[s * bs:(s + 1) * bs]
            others = rng.permutation(idx)
            v1 = to_tensor([augment(base[i], rng, cfg.image_size, base[o]) for i, o in zip(idx, others)], cfg.image_size)
            v2 = to_tensor([augment(base[i], rng, cfg.image_size, base[o]) for i, o in zip(idx, others[::-1])],
                           cfg.image_size)
            loss = info_nce(model(v1), model(v2), cfg.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if log and step % 50 == 0:
                log(f"[copydetect] epoch {epoch} step {step}/{total} loss {loss.item():.3f}")
            if cfg.max_seconds and time.time() - started > cfg.max_seconds:
                break
        if cfg.max_seconds and time.time() - started > cfg.max_seconds:
            break
    model.eval()
    return model, {"steps": step, "epochs_planned": cfg.epochs, "seconds": round(time.time() - started, 2),
                   "loss": float(loss.item()), "images": len(base)}


@torch.no_grad()
def embed_images(model: CopyDetector, images: Sequence[np.ndarray | Image.Image], batch_size: int = 256) -> np.ndarray:
    """(N, embed_dim) float32 L2-normalised embeddings of RGB arrays / PIL images."""
    model.eval()
    size = model.cfg.image_size
    out = [np.zeros((0, model.cfg.embed_dim), np.float32)]
    for start in range(0, len(images), batch_size):
        batch = [to_rgb_array(im) for im in images[start:start + batch_size]]
        out.append(model(to_tensor(batch, size)).numpy())
    return np.concatenate(out).astype(np.float32)


def unborder(img: np.ndarray, white: int = 245, min_share: float = 0.02) -> np.ndarray:
    """RGB ``img`` without the white bars curation's border resize added (``curation.images.check``
    fits an image into a white square: equal bars on two opposite sides, along one axis only).
    Trimmed only when exactly one axis has white edge rows/columns (every pixel >= ``white``,
    JPEG-tolerant), of thickness differing by at most 2 px and covering at least ``min_share``
    of the side: a drawing on a white background (white on all four sides) is left alone."""
    bright = img.min(axis=2) >= white
    rows, cols = bright.all(axis=1), bright.all(axis=0)

    def bars(line: np.ndarray) -> tuple[int, int]:
        if line.all():
            return 0, 0
        lead = int(np.argmin(line))
        return lead, int(np.argmin(line[::-1]))

    (top, bottom), (left, right) = bars(rows), bars(cols)
    if (top or bottom) and not (left or right) and abs(top - bottom) <= 2 and top + bottom >= min_share * len(rows):
        return img[top:len(rows) - bottom]
    if (left or right) and not (top or bottom) and abs(left - right) <= 2 and left + right >= min_share * len(cols):
        return img[:, left:len(cols) - right]
    return img


def content_mask(img: np.ndarray, median: np.ndarray | None = None) -> np.ndarray:
    """HxW mask of the pixels of RGB ``img`` farther than 24 (in some channel) from its median
    colour (``median``, when the caller has it)."""
    median = np.median(img.reshape(-1, 3), axis=0) if median is None else median
    return np.abs(img.astype(np.int16) - median.astype(np.int16)).max(axis=2) > 24


def content_share(img: np.ndarray) -> float:
    """Share of the pixels of RGB ``img`` that are content (:func:`content_mask`)."""
    return float(content_mask(img).mean())


MIN_CONTENT = 0.03  # a view with less of its pixels off its median colour is blank (not searched)
QUERY_CROPS = ((1.0, 1), (0.85, 3), (0.75, 3))  # (side fraction, positions per axis) of each query crop


def query_crops(image: np.ndarray) -> list[np.ndarray]:
    """The views of an eval image searched for its copies: the whole image and crops keeping
    85% and 75% of each side on a 3x3 grid of positions (19 in all). A training copy cropped
    from the eval image matches one of them much better than the whole (its score is the best
    over the views)."""
    h, w = image.shape[:2]
    out = []
    for frac, steps in QUERY_CROPS:
        ch, cw = max(1, int(h * frac)), max(1, int(w * frac))
        for y in np.linspace(0, h - ch, steps).round().astype(int):
            for x in np.linspace(0, w - cw, steps).round().astype(int):
                out.append(image[y:y + ch, x:x + cw])
    return out


def blank_views(crops: Sequence[np.ndarray], size: int) -> np.ndarray:
    """Which of one image's query ``crops`` are blank at the model's input ``size`` (content
    share < ``MIN_CONTENT`` after :func:`_fit`, a no-op on crops already at ``size``): a 75% crop
    of a sparse drawing can be plain background, and the per-image standardisation makes any two
    blank views alike (score ~1.0). The whole image (the first crop) is never blank-masked, so
    every eval image keeps at least one view."""
    mask = np.array([content_share(_fit(c, size)) < MIN_CONTENT for c in crops])
    mask[0] = False
    return mask


@torch.no_grad()
def embed_queries(model: CopyDetector, images: Sequence[np.ndarray | Image.Image], batch_size: int = 32) -> np.ndarray:
    """(N, views, embed_dim) embeddings of each image's :func:`query_crops`; a blank view
    (:func:`blank_views`) is all zeros, so it scores 0 against every training image."""
    views = len(query_crops(np.zeros((8, 8, 3), np.uint8)))
    out = [np.zeros((0, views, model.cfg.embed_dim), np.float32)]
    for start in range(0, len(images), batch_size):
        size = model.cfg.image_size  # each crop resized once: the blank test and the model see the same pixels
        per_image = [[_fit(c, size) for c in query_crops(to_rgb_array(im))] for im in images[start:start + batch_size]]
        crops = [c for cs in per_image for c in cs]
        emb = embed_images(model, crops, batch_size=len(crops)).reshape(-1, views, model.cfg.embed_dim)
        emb[np.stack([blank_views(cs, size) for cs in per_image])] = 0.0
        out.append(emb)
    return np.concatenate(out)


def save_copy_detector(model: CopyDetector, path: str | Path, summary: dict | None = None) -> None:
    """Write the detector (config + state dict + training summary) to ``path`` (a local path or
    URI), atomically."""
    state = {"config": asdict(model.cfg), "model": model.state_dict(), "summary": summary or {}}
    atomic_write(str(path), lambda f: torch.save(state, f))


def load_copy_detector(path: str | Path) -> CopyDetector:
    """A detector saved by :func:`save_copy_detector` (a path or an fsspec URI; loaded with
    ``weights_only=True``), in eval mode. No file is a ``FileNotFoundError``, an unreadable one a
    :class:`pretrain.checkpoint.CheckpointError`, each naming it."""
    import fsspec

    from pretrain.checkpoint import CheckpointNotFoundError, read_weights

    try:
        with fsspec.open(str(path), "rb") as f:
            state = read_weights(f, path, what="copy-detector checkpoint", keys=("config", "model"))
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"{path}: no copy-detector weights there") from None
    model = CopyDetector(CopyDetectorConfig(**state["config"]))
    model.load_state_dict(state["model"])
    return model.eval()
