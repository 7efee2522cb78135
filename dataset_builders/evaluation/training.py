"""The few-shot classifiers' training: linear heads on frozen features, the paper's schedule and synthetic mixing.

Every random draw of a classifier comes from its own stream ([`pipeline_dalda.seeding.stream`]) keyed by its seed:
which real images a step draws, which of them are replaced by synthetic images, and which views they are seen in. So
the real draws and views are the same whatever the synthetic probability p and whichever synthetic images may be
drawn, and the real-only (p = 0) and augmented classifiers of one trial (each synthetic-score threshold's among them)
are matched. The heads of every trial and arm train together ([`StackedLinearHeads`]).
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
    made from. `labels` holds every item's class. The synthetic images a draw may pick are `synthetic_items`, grouped
    the same way: all of them, or those a [`restricted`] pool keeps (the items, their indices and their features stay
    the same)."""

    labels: np.ndarray
    synthetic_items: np.ndarray
    """The item indices of the synthetic images that may be drawn, real image by real image."""
    synthetic_offsets: np.ndarray
    """Per real image: where its synthetic images start in `synthetic_items`."""
    synthetic_counts: np.ndarray
    """Per real image: how many of its synthetic images may be drawn."""

    @classmethod
    def from_groups(cls, real_labels: list[int], synthetic_counts: list[int]) -> "TrainingPool":
        counts = np.asarray(synthetic_counts, dtype=np.int64)
        labels = np.concatenate([real_labels, np.repeat(real_labels, counts)]).astype(np.int64)
        items = np.arange(len(real_labels), len(labels), dtype=np.int64)
        return cls(labels, items, _starts(counts), counts)

    @property
    def num_reals(self) -> int:
        return len(self.synthetic_counts)

    @property
    def num_synthetic(self) -> int:
        """Every synthetic item of the pool, whether it may be drawn or not."""
        return len(self.labels) - self.num_reals

    def restricted(self, keep: np.ndarray) -> "TrainingPool":
        """The pool whose draws may pick only the synthetic images that `keep` (one flag per synthetic item, in item
        order) marks, among those this pool may draw; a real image left without any is never replaced."""
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (self.num_synthetic,):
            raise ValueError(f"`keep` needs one flag per synthetic item ({self.num_synthetic}), got {keep.shape}.")
        kept = keep[self.synthetic_items - self.num_reals]
        owners = np.repeat(np.arange(self.num_reals), self.synthetic_counts)
        counts = np.bincount(owners[kept], minlength=self.num_reals).astype(np.int64)
        return TrainingPool(self.labels, self.synthetic_items[kept], _starts(counts), counts)


def _starts(counts: np.ndarray) -> np.ndarray:
    """Where each group of `counts` starts when the groups are laid end to end."""
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


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
    """One training step's draws for K heads at once, each of shape `(K, batch)`: the items (indices into the feature
    source's images), their grid views (on the device, where there are any), flips and angles."""

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
    probability p, by one of its own synthetic images that the pool may draw, chosen uniformly:
    `item = s_r[⌊u · |s_r|⌋]`, u ~ U[0, 1) (a real image without any stays). Each item is then seen in a random
    view: a fair flip and an angle uniform in [−15°, 15°] (`"continuous"`, the released code's `RandomRotation`),
    or the nearest view of [`view_grid`] of `rotation_step` to that same draw (`"grid"`, what the feature cache
    holds).

    The real images, the replacement coins, u and the views are drawn whatever the pool's `s_r`, so pools that keep
    different synthetic images ([`TrainingPool.restricted`]) give paired draws: the same real images, coins and
    views at every step; only which synthetic image, if any, replaces a drawn real image differs.
    """
    shape = (schedule.epochs, schedule.iterations_per_epoch, schedule.batch_size)
    reals = stream("training_draws", seed).integers(0, pool.num_reals, size=shape)
    mixing = stream("mixing", seed)
    replace, choice = mixing.random(shape) < synthetic_probability, mixing.random(shape)
    counts = pool.synthetic_counts[reals]
    replace &= counts > 0
    picked = pool.synthetic_offsets[reals] + np.floor(choice * counts).astype(np.int64)
    items = reals.copy()
    items[replace] = pool.synthetic_items[picked[replace]]

    flips, angles = draw_views(stream("views", seed), shape)
    grid = None
    if view_sampling == "grid":
        grid = nearest_grid_views(flips, angles, rotation_step)
        angles = np.array([view.angle for view in view_grid(rotation_step)])[grid]
    return Draws(items, replace, flips, angles, grid)


FeatureSource = Callable[[Step], torch.Tensor]
"""`step -> (K, batch, D)` features of a training step's views, for each of the K heads."""


class CachedFeatures:
    """Training features looked up in a table of every item's grid views `(items, len(view_grid), D)`, kept on the
    training device so that a step of every head is one gather."""

    def __init__(self, table: torch.Tensor, device: torch.device):
        self.views = table.shape[1]
        self.table = table.to(device).reshape(-1, table.shape[2])  # (item, view) → row item · views + view

    def __call__(self, step: Step) -> torch.Tensor:
        if step.grid is None:
            raise ValueError("Cached features exist for the grid views only; draw views with view_sampling='grid'.")
        rows = (step.items * self.views + step.grid).reshape(-1)
        return self.table.index_select(0, rows).view(*step.items.shape, -1)


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


class StackedLinearHeads(torch.nn.Module):
    r"""
    K independent linear heads `Linear(D, C)` trained as one batched computation.

    `logits_k = x_k W_kᵀ + b_k` for every head k at once (one `baddbmm`; the weights are kept as `W_kᵀ`, `(K, D, C)`,
    so that no pass copies a transposed tensor). Each head's gradient is its own loss's gradient
    ([`cross_entropy_gradients`]), and Adam and AdamW act element by element, so one optimiser over the stacked
    weights takes every head's own step. Training K heads this way gives what K separate trainings give (to float
    rounding), at little more than the cost of one.
    """

    def __init__(self, heads: list[torch.nn.Linear]):
        super().__init__()
        self.weight_t = torch.nn.Parameter(torch.stack([head.weight.detach().T for head in heads]).contiguous())
        self.bias = torch.nn.Parameter(torch.stack([head.bias.detach() for head in heads]).clone())

    def __len__(self) -> int:
        return self.weight_t.shape[0]

    @property
    def device(self) -> torch.device:
        return self.weight_t.device

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """`(K, B, D)` features → `(K, B, C)` logits."""
        return torch.baddbmm(self.bias.unsqueeze(1), features, self.weight_t)

    @torch.no_grad()
    def cross_entropy_gradients(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        r"""
        Each head's mean cross-entropy on its batch, with its gradient written to `.grad` in closed form:

            p = softmax(x Wᵀ + b),   L_k = −(1/B) Σ_i log p_{i, y_i},
            ∂L_k/∂z = (p − onehot(y)) / B  (z the logits),   ∂L_k/∂Wᵀ = xᵀ ∂L_k/∂z,   ∂L_k/∂b = Σ_i ∂L_k/∂z_i.

        This is what autograd computes for `cross_entropy(head(x), y)`, without building a graph at every step.

        Args:
            features: `(K, B, D)`, head k's batch.
            targets: `(K, B)`, their classes.

        Returns:
            `(K, B)`: every item's loss.
        """
        batch = features.shape[1]
        log_probabilities = torch.log_softmax(self(features), dim=-1)
        targets = targets.unsqueeze(-1)
        losses = -log_probabilities.gather(-1, targets).squeeze(-1)
        logit_gradients = log_probabilities.exp_()
        logit_gradients.scatter_add_(-1, targets, torch.full_like(logit_gradients[..., :1], -1.0))
        logit_gradients.div_(batch)
        self.weight_t.grad = torch.bmm(features.transpose(1, 2), logit_gradients)
        self.bias.grad = logit_gradients.sum(dim=1)
        return losses

    def head(self, index: int) -> torch.nn.Linear:
        """A copy of head `index` as a `torch.nn.Linear`."""
        in_features, out_features = self.weight_t.shape[1:]
        # Not initialised: it is overwritten at once, and a random initialisation would draw from torch's global RNG.
        head = torch.nn.utils.skip_init(torch.nn.Linear, in_features, out_features, device=self.device)
        with torch.no_grad():
            head.weight.copy_(self.weight_t[index].T)
            head.bias.copy_(self.bias[index])
        return head


EpochScorer = Callable[[StackedLinearHeads], list[dict[str, float]]]
"""`heads -> one record per head` of the epoch's evaluation figures (test, and validation where there is one)."""


def held_out_scorer(test: list[LabelledFeatures], validation: list[LabelledFeatures | None]) -> EpochScorer:
    """Scores head k on `test[k]` (and `validation[k]`): fixed features, as a frozen backbone gives."""

    def score(heads: StackedLinearHeads) -> list[dict[str, float]]:
        records = []
        for index in range(len(heads)):
            head, record = heads.head(index), {}
            record["test_balanced_accuracy"], record["test_top1"] = test[index].scores(head)
            if validation[index] is not None:
                record["validation_balanced_accuracy"], record["validation_top1"] = validation[index].scores(head)
            records.append(record)
        return records

    return score


def head_optimizer(heads: torch.nn.Module, recipe: HeadRecipe) -> torch.optim.Optimizer:
    """The recipe's Adam or AdamW over the heads: the fused implementation where this torch has one for the device
    (one kernel per step instead of one per operation), else the plain one."""
    optimizer_class = torch.optim.AdamW if recipe.optimizer == "adamw" else torch.optim.Adam
    settings = {"lr": recipe.learning_rate, "weight_decay": recipe.weight_decay}
    try:
        return optimizer_class(heads.parameters(), fused=True, **settings)
    except RuntimeError:  # no fused kernel for this device in this torch (CPU before torch 2.4)
        return optimizer_class(heads.parameters(), **settings)


def train_linear_heads(
    heads: StackedLinearHeads,
    recipe: HeadRecipe,
    features_of: FeatureSource,
    draws: list[Draws],
    labels: list[np.ndarray],
    score: EpochScorer,
    offsets: list[int] | None = None,
    description: str = "training",
) -> list[list[dict]]:
    """
    Trains K heads in place with cross-entropy on their drawn steps, and scores every head after every epoch.

    Args:
        heads: the K heads, on the training device.
        features_of: the training features of a step's items, for every head.
        draws: head k's draws ([`draw_training_batches`]), all of one schedule.
        labels: the classes of head k's items (its [`TrainingPool`]'s `labels`).
        score: the epoch's evaluation of every head.
        offsets: where head k's items start among the feature source's items (0 for each by default).

    Returns:
        Per head, one record per epoch: `epoch`, `train_loss` (mean over the epoch) and what `score` gives.
    """
    device = heads.device
    offsets = offsets or [0] * len(draws)
    optimizer = head_optimizer(heads, recipe)
    # Every draw goes to the device once, as (epoch, iteration, head, batch), so a step copies nothing.
    items = torch.stack([torch.as_tensor(d.items) + offset for d, offset in zip(draws, offsets)], dim=2).to(device)
    targets = torch.stack(
        [torch.as_tensor(pool_labels)[torch.as_tensor(d.items)] for d, pool_labels in zip(draws, labels)], dim=2
    ).to(device)
    grid = None
    if all(d.grid is not None for d in draws):
        grid = torch.stack([torch.as_tensor(d.grid) for d in draws], dim=2).to(device)
    flips, angles = np.stack([d.flips for d in draws], axis=2), np.stack([d.angles for d in draws], axis=2)
    epochs, iterations, num_heads, batch = items.shape
    histories: list[list[dict]] = [[] for _ in range(num_heads)]
    for epoch in tqdm(range(epochs), desc=description, unit="epoch", leave=False):
        losses = torch.zeros(num_heads, batch, device=device)
        grids = grid[epoch].unbind() if grid is not None else [None] * iterations
        for step_items, step_grid, step_targets, step_flips, step_angles in zip(
            items[epoch].unbind(), grids, targets[epoch].unbind(), flips[epoch], angles[epoch]
        ):
            features = features_of(Step(step_items, step_grid, step_flips, step_angles)).to(device)
            losses += heads.cross_entropy_gradients(features, step_targets)
            optimizer.step()
        mean_losses = (losses.sum(dim=1) / (iterations * batch)).tolist()
        for history, loss, record in zip(histories, mean_losses, score(heads)):
            history.append({"epoch": epoch + 1, "train_loss": loss, **record})
    return histories
