"""The few-shot classifier's training: a linear head on frozen features, the paper's schedule and synthetic mixing.

Every random draw of a trial comes from its own stream ([`pipeline_dalda.seeding.stream`]): which real images a
step draws, which of them are replaced by synthetic images, and which views they are seen in. So a trial's real
draws and views are the same whatever the synthetic probability p, and real-only (p = 0) and augmented runs of one
seed form a matched pair.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline_dalda.seeding import stream

from .backbones import HeadRecipe
from .metrics import balanced_accuracy, top1_accuracy
from .views import ROTATION_STEP, draw_views, nearest_grid_views, view_grid


ViewSampling = Literal["grid", "continuous"]


@dataclass
class TrainingSchedule:
    """The paper's schedule (Table 4): 50 epochs of 200 iterations of 32 images."""

    epochs: int = 50
    iterations_per_epoch: int = 200
    batch_size: int = 32


@dataclass
class TrainingPool:
    """The training items: the real images first, then every synthetic image, grouped by the real image they were
    made from. `labels` holds every item's class."""

    labels: np.ndarray
    synthetic_offsets: np.ndarray
    """Per real image: the item index of its first synthetic image."""
    synthetic_counts: np.ndarray
    """Per real image: how many synthetic images it has."""

    @classmethod
    def from_groups(cls, real_labels: list[int], synthetic_counts: list[int]) -> "TrainingPool":
        counts = np.asarray(synthetic_counts, dtype=np.int64)
        offsets = len(real_labels) + np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        labels = np.concatenate([real_labels, np.repeat(real_labels, counts)]).astype(np.int64)
        return cls(labels, offsets, counts)

    @property
    def num_reals(self) -> int:
        return len(self.synthetic_counts)


@dataclass
class Draws:
    """What each training step sees, as arrays of shape `(epochs, iterations, batch)`."""

    items: np.ndarray
    is_synthetic: np.ndarray
    flips: np.ndarray
    angles: np.ndarray
    grid: np.ndarray | None
    """The views as indices into the [`view_grid`] (grid sampling), or None (continuous sampling)."""


class Step(NamedTuple):
    """One training step's draws: the items and their views (grid indices on the device where there are any)."""

    items: torch.Tensor
    grid: torch.Tensor | None
    flips: np.ndarray
    angles: np.ndarray


def draw_training_batches(
    pool: TrainingPool,
    schedule: TrainingSchedule,
    seed: int,
    synthetic_probability: float,
    view_sampling: ViewSampling = "grid",
    rotation_step: float = ROTATION_STEP,
) -> Draws:
    r"""
    The paper's sampling for one trial.

    Each step draws `batch_size` real images uniformly with replacement. Each drawn real image r is replaced, with
    probability p, by one of its own synthetic images, chosen uniformly: `item = s_r[⌊u · |s_r|⌋]`, u ~ U[0, 1)
    (a real image without synthetic images stays). Each item is then seen in a random view: a fair flip and an
    angle uniform in [−15°, 15°] (`"continuous"`, the released code's `RandomRotation`), or the nearest view of
    [`view_grid`] of `rotation_step` to that same draw (`"grid"`, what the feature cache holds).
    """
    shape = (schedule.epochs, schedule.iterations_per_epoch, schedule.batch_size)
    reals = stream("training_draws", seed).integers(0, pool.num_reals, size=shape)
    mixing = stream("mixing", seed)
    replace, choice = mixing.random(shape) < synthetic_probability, mixing.random(shape)
    counts = pool.synthetic_counts[reals]
    replace &= counts > 0
    synthetic_items = pool.synthetic_offsets[reals] + np.floor(choice * counts).astype(np.int64)
    items = np.where(replace, synthetic_items, reals)

    flips, angles = draw_views(stream("views", seed), shape)
    grid = None
    if view_sampling == "grid":
        grid = nearest_grid_views(flips, angles, rotation_step)
        angles = np.array([view.angle for view in view_grid(rotation_step)])[grid]
    return Draws(items, replace, flips, angles, grid)


FeatureSource = Callable[[Step], torch.Tensor]
"""`step -> (B, D)` features of a training step's views."""


class CachedFeatures:
    """Training features looked up in a table of every item's grid views `(items, len(view_grid), D)`, kept on the
    training device so that a step is one gather."""

    def __init__(self, table: torch.Tensor, device: torch.device):
        self.table = table.to(device)

    def __call__(self, step: Step) -> torch.Tensor:
        if step.grid is None:
            raise ValueError("Cached features exist for the grid views only; draw views with view_sampling='grid'.")
        return self.table[step.items, step.grid]


@dataclass
class LabelledFeatures:
    """Features of evaluation images (their identity view) and their classes."""

    features: torch.Tensor
    labels: np.ndarray

    def to(self, device: torch.device) -> "LabelledFeatures":
        return LabelledFeatures(self.features.to(device), self.labels)

    def scores(self, head: torch.nn.Linear) -> tuple[float, float]:
        """(balanced accuracy, top-1) of the head's predictions."""
        with torch.no_grad():
            predictions = head(self.features).argmax(dim=1).cpu().numpy()
        return balanced_accuracy(predictions, self.labels), top1_accuracy(predictions, self.labels)


def train_linear_head(
    head: torch.nn.Linear,
    recipe: HeadRecipe,
    features_of: FeatureSource,
    pool: TrainingPool,
    draws: Draws,
    test: LabelledFeatures,
    validation: LabelledFeatures | None = None,
    description: str = "training",
) -> list[dict]:
    """
    Trains `head` in place with cross-entropy on the drawn steps and scores it after every epoch.

    Returns:
        One record per epoch: `epoch`, `train_loss` (mean over the epoch), `test_balanced_accuracy`, `test_top1` and,
        with a validation set, `validation_balanced_accuracy`, `validation_top1`.
    """
    device = head.weight.device
    optimizer_class = torch.optim.AdamW if recipe.optimizer == "adamw" else torch.optim.Adam
    optimizer = optimizer_class(
        head.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay, fused=device.type == "cuda"
    )
    # Every draw goes to the device once, so a step copies nothing between host and device.
    items = torch.as_tensor(draws.items, device=device)
    grid = torch.as_tensor(draws.grid, device=device) if draws.grid is not None else None
    labels = torch.as_tensor(pool.labels, device=device)[items]
    test, validation = test.to(device), validation.to(device) if validation is not None else None
    epochs, iterations, _ = draws.items.shape
    history = []
    for epoch in tqdm(range(epochs), desc=description, unit="epoch", leave=False):
        losses = torch.zeros((), device=device)
        for index in range(iterations):
            step = Step(
                items[epoch, index],
                grid[epoch, index] if grid is not None else None,
                draws.flips[epoch, index],
                draws.angles[epoch, index],
            )
            loss = torch.nn.functional.cross_entropy(head(features_of(step).to(device)), labels[epoch, index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses += loss.detach()
        record = {"epoch": epoch + 1, "train_loss": float(losses) / iterations}
        record["test_balanced_accuracy"], record["test_top1"] = test.scores(head)
        if validation is not None:
            record["validation_balanced_accuracy"], record["validation_top1"] = validation.scores(head)
        history.append(record)
    return history
