"""Frozen-backbone features of image views, computed once and cached on disk.

A backbone is frozen, so the feature of an (image, view) pair never changes: computing it once and keeping it lets
every seed, every synthetic probability, every method evaluated on the same images and every rerun train its
linear head on stored features in seconds, instead of running the backbone at each of the 10,000 training steps.

Layout: `<cache_dir>/<key>/<hash[:2]>/<hash>.npz`, one file per image holding one float32 vector per view name.
The key digests the backbone's weights, the input size and the normalisation; the hash digests the image's decoded
pixels. A file is written atomically, so a killed run leaves no half-written entry.
"""

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from tqdm.auto import tqdm

from pipeline_dalda.atomic import atomic_output

from .backbones import FrozenBackbone
from .views import IDENTITY, View, render


CACHE_FORMAT = 1
"""Bumped when the meaning of a cached vector changes (rendering, pooling), so old entries are not reused."""


@dataclass(frozen=True)
class PreparedImage:
    """A decoded image, ready for its views: its content hash and its squashed pixels."""

    content_hash: str
    image: PIL.Image.Image


class FeatureCache:
    """Feature vectors on disk, per image content and view, for one backbone configuration (see module docstring)."""

    def __init__(self, cache_dir: str | os.PathLike, key: str):
        self.directory = Path(cache_dir, key)

    def _path(self, content_hash: str) -> Path:
        return self.directory / content_hash[:2] / f"{content_hash}.npz"

    def load(self, content_hash: str) -> dict[str, np.ndarray]:
        path = self._path(content_hash)
        if not path.exists():
            return {}
        with np.load(path) as stored:
            return {name: stored[name] for name in stored.files}

    def save(self, content_hash: str, vectors: dict[str, np.ndarray]) -> None:
        """Writes the image's entry: every view vector it has, those loaded earlier included."""
        with atomic_output(self._path(content_hash)) as temporary:
            with open(temporary, "wb") as file:
                np.savez(file, **vectors)


class FeatureExtractor:
    r"""
    Runs a frozen backbone on views of prepared images, through a [`FeatureCache`] when one is given.

    Args:
        backbone ([`FrozenBackbone`]): the frozen model.
        mean, std: the per-channel normalisation of the pixels.
        cache ([`FeatureCache`], *optional*): where features are kept; None computes every feature.
        batch_size (`int`): views per backbone call.
    """

    def __init__(
        self,
        backbone: FrozenBackbone,
        mean: Sequence[float],
        std: Sequence[float],
        cache: FeatureCache | None = None,
        batch_size: int = 64,
    ):
        self.backbone, self.mean, self.std, self.cache, self.batch_size = (
            backbone,
            tuple(mean),
            tuple(std),
            cache,
            batch_size,
        )

    @staticmethod
    def cache_key(backbone: FrozenBackbone, image_size: int, mean: Sequence[float], std: Sequence[float]) -> str:
        """What a cached vector depends on besides the image and the view."""
        settings = {"backbone": backbone.fingerprint, "image_size": image_size, "mean": list(mean), "std": list(std)}
        payload = json.dumps({**settings, "format": CACHE_FORMAT}, sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()[:24]

    def features(self, images: Sequence[PIL.Image.Image], views: Sequence[View]) -> torch.Tensor:
        """The features of `views[i]` of `images[i]`, computed now (never cached): `(len(images), D)` float32."""
        chunks = []
        for start in range(0, len(images), self.batch_size):
            pixels = torch.stack(
                [
                    render(image, view, self.mean, self.std)
                    for image, view in zip(
                        images[start : start + self.batch_size], views[start : start + self.batch_size]
                    )
                ]
            )
            chunks.append(self.backbone.features(pixels).cpu())
        return torch.cat(chunks) if chunks else torch.empty(0, self.backbone.feature_dim)

    def extract(
        self, images: Iterable[PreparedImage], views: Sequence[View], total: int | None = None, description: str = ""
    ) -> torch.Tensor:
        """
        Every view of every image, from the cache where it has them.

        Args:
            images: the prepared images; read once, in order, so they can be decoded lazily.
            views: the views to compute for each image.
            total: how many images to expect, for the progress bar.

        Returns:
            `torch.Tensor` of shape `(number of images, len(views), D)`, float32, on the CPU.
        """
        rows: list[torch.Tensor] = []
        pending: list[tuple[int, PreparedImage, dict[str, np.ndarray]]] = []
        with tqdm(total=total, desc=description or "features", unit="img") as bar:
            for prepared in images:
                stored = self.cache.load(prepared.content_hash) if self.cache else {}
                rows.append(None)
                if all(view.name in stored for view in views):
                    rows[-1] = torch.from_numpy(np.stack([stored[view.name] for view in views]))
                    bar.update(1)
                    continue
                pending.append((len(rows) - 1, prepared, stored))
                if len(pending) * len(views) >= self.batch_size:
                    self._compute(pending, views, rows)
                    bar.update(len(pending))
                    pending = []
            self._compute(pending, views, rows)
            bar.update(len(pending))
        return torch.stack(rows) if rows else torch.empty(0, len(views), self.backbone.feature_dim)

    def _compute(self, pending: list, views: Sequence[View], rows: list) -> None:
        """Computes the missing views of `pending` images in batches, fills their `rows` and updates the cache."""
        jobs = [
            (prepared, stored, view) for _, prepared, stored in pending for view in views if view.name not in stored
        ]
        vectors = self.features([prepared.image for prepared, _, _ in jobs], [view for _, _, view in jobs])
        for (_, stored, view), vector in zip(jobs, vectors):
            stored[view.name] = vector.numpy()
        for slot, prepared, stored in pending:
            rows[slot] = torch.from_numpy(np.stack([stored[view.name] for view in views]))
            if self.cache is not None:
                self.cache.save(prepared.content_hash, stored)


class RenderedFeatures:
    """Training features computed from the pixels at every step, as the released code does: no cache. The reference
    the cached path is checked against, what `--no_feature_cache` trains on, and, with a backbone whose batch-norm
    layers are in training mode, the paper's ResNet-50 classifier ([`TrainModeBatchNormFeatures`])."""

    def __init__(self, extractor: FeatureExtractor, images: Sequence[PIL.Image.Image]):
        self.extractor, self.images = extractor, images

    def __call__(self, step) -> torch.Tensor:
        heads, batch = step.items.shape
        views = [View(bool(flip), float(angle)) for flip, angle in zip(step.flips.ravel(), step.angles.ravel())]
        features = self.extractor.features([self.images[item] for item in step.items.reshape(-1).tolist()], views)
        return features.view(heads, batch, -1)


class TrainModeBatchNormFeatures(RenderedFeatures):
    r"""
    The released code's ResNet-50 classifier: frozen weights, **batch-norm layers in training mode** while the head
    trains, running statistics at test time. (The released code puts its whole ResNet-50 in training mode; ResNet-50
    has no dropout, so only its batch norm acts differently, and only batch norm is switched here.)

    The released `train_classifier.py` calls `model.train()` and runs the backbone under `torch.no_grad()`: each step
    normalises with its own batch's statistics (half of an augmented batch synthetic) and moves the running
    statistics (`r ← (1 − momentum) · r + momentum · batch statistic`, momentum 0.1); at every epoch's evaluation,
    `model.eval()` normalises with those running statistics. The backbone is a copy of its own, starting from the
    pretrained statistics, so one classifier's steps never reach another's; it trains one head at a time.
    """

    def __init__(self, extractor: FeatureExtractor, images: Sequence[PIL.Image.Image]):
        own = extractor.backbone.with_own_batch_norm_statistics()
        super().__init__(FeatureExtractor(own, extractor.mean, extractor.std, None, extractor.batch_size), images)

    def __call__(self, step) -> torch.Tensor:
        """The step's features from one forward pass in training mode: the batch statistics are the whole batch's."""
        if step.items.shape[0] != 1:
            raise ValueError(
                "Batch statistics are per classifier: train one head at a time in batch-norm mode 'paper'."
            )
        extractor = self.extractor
        pixels = torch.stack(
            [
                render(self.images[item], View(bool(flip), float(angle)), extractor.mean, extractor.std)
                for item, flip, angle in zip(step.items[0].tolist(), step.flips[0], step.angles[0])
            ]
        )
        # Only the batch-norm layers train: a backbone's dropout or drop-path, if it has any, stays off.
        batch_norms = [
            m for m in extractor.backbone.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        ]
        for layer in batch_norms:
            layer.train()
        try:
            return extractor.backbone.features(pixels).cpu().unsqueeze(0)
        finally:
            for layer in batch_norms:
                layer.eval()

    def identity_features(self, images: Sequence[PIL.Image.Image]) -> torch.Tensor:
        """Test-time features (identity view, running statistics) of `images`, as the classifier now stands."""
        return self.extractor.features(images, [IDENTITY] * len(images))
