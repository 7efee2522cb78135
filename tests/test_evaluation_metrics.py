"""The evaluation's numbers, checked as numbers: balanced accuracy and top-1 on a class-imbalanced case worked out by
hand, the paired interval and p-value against a hand-computed t interval and `scipy.stats.ttest_rel`, the aggregate
against the per-trial figures, the epoch-selection rules, and the batched heads against one training per head."""

import numpy as np
import pytest
import scipy.stats
import torch

from dataset_builders.evaluation.backbones import HeadRecipe
from dataset_builders.evaluation.metrics import (
    balanced_accuracy,
    holm_adjusted,
    mean_and_std,
    paired_difference,
    select_epochs,
    top1_accuracy,
)
from dataset_builders.evaluation.summary import aggregate, format_difference
from dataset_builders.evaluation.training import (
    CachedFeatures,
    LabelledFeatures,
    StackedLinearHeads,
    TrainingPool,
    TrainingSchedule,
    draw_training_batches,
    held_out_scorer,
    train_linear_heads,
)


def test_balanced_accuracy_and_top1_differ_on_an_imbalanced_test_set():
    labels = np.array([0, 0, 0, 0, 1, 1, 2])
    predictions = np.array([0, 0, 0, 1, 1, 0, 2])
    # Per class: 3/4, 1/2, 1/1; their mean is 0.75. Overall: 5 of 7 right.
    assert balanced_accuracy(predictions, labels) == pytest.approx(0.75)
    assert top1_accuracy(predictions, labels) == pytest.approx(5 / 7)
    # A class absent from the labels does not count, even where it is predicted.
    assert balanced_accuracy(np.array([3, 0]), np.array([0, 0])) == pytest.approx(0.5)


def test_paired_difference_against_a_hand_computed_t_interval_and_scipy():
    treated, baseline = [0.80, 0.70, 0.90, 0.75], [0.70, 0.65, 0.82, 0.74]
    result = paired_difference(treated, baseline)
    # d = (0.10, 0.05, 0.08, 0.01): mean 0.06, sd = √(0.0046 / 3) = 0.039158, se = sd / √4 = 0.019579;
    # t(0.975, 3) = 3.1824 (a t table), so the half width is 0.062308.
    assert result["n"] == 4 and result["df"] == 3 and result["mean"] == pytest.approx(0.06)
    assert result["ci95"] == pytest.approx([0.06 - 0.062308, 0.06 + 0.062308], abs=1e-5)
    assert result["p_value"] == pytest.approx(scipy.stats.ttest_rel(treated, baseline).pvalue, rel=1e-12)
    assert result["p_value"] == pytest.approx(2 * scipy.stats.t.sf(0.06 / 0.019579, 3), rel=1e-3)
    assert format_difference(result) == (
        f"+0.0600 [95% CI {0.06 - 0.062308:+.4f}, {0.06 + 0.062308:+.4f}], p = {result['p_value']:.3g} (n = 4, df = 3)"
    )


def test_equal_differences_have_no_p_value_from_rounding_noise():
    # Accuracies on 48 test images, each trial 2 images better with augmentation: the differences are 2/48 each, up
    # to floating-point rounding.
    treated = [40 / 48, 30 / 48, 25 / 48]
    baseline = [38 / 48, 28 / 48, 23 / 48]
    assert np.std(np.subtract(treated, baseline), ddof=1) > 0  # the noise that gave p ≈ 1e-16
    result = paired_difference(treated, baseline)
    assert result["p_value"] is None and result["ci95"] == [result["mean"], result["mean"]] and result["df"] == 2
    assert format_difference(result).endswith("(n = 3, df = 2; equal differences: no test)")
    single = paired_difference([0.5], [0.4])
    assert single["ci95"] is None and single["df"] is None  # one pair: no interval at all
    assert format_difference(single) == "+0.1000 (n = 1: no interval)"


def test_holm_adjusted_p_values_against_a_hand_computed_example_and_their_defining_properties():
    # Sorted: 0.005, 0.01, 0.03, 0.04 (m = 4) → 4 · 0.005 = 0.02, 3 · 0.01 = 0.03, 2 · 0.03 = 0.06, 1 · 0.04 = 0.04,
    # which the running maximum raises to 0.06; back in the given order.
    assert holm_adjusted([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjusted([0.4, None, 0.5, 0.9]) == pytest.approx([1.0, None, 1.0, 1.0])  # m = 3; capped at 1
    assert holm_adjusted([0.02, None]) == [0.02] + [None]  # one test: nothing to adjust
    rng = np.random.default_rng(0)
    for size in (2, 5, 12):
        raw = rng.uniform(0, 0.2, size).tolist()
        adjusted = holm_adjusted(raw)
        assert all(p <= q <= 1 for p, q in zip(raw, adjusted))
        assert all(q <= min(1.0, size * p) for p, q in zip(raw, adjusted))  # never beyond Bonferroni's
        order = np.argsort(raw)
        assert np.all(np.diff(np.array(adjusted)[order]) >= 0)  # the raw values' order kept
        assert min(adjusted) == pytest.approx(min(1.0, size * min(raw)))


def test_aggregate_is_the_mean_and_std_of_the_per_trial_figures():
    figures = {0: (0.62, 0.55), 1: (0.71, 0.69), 2: (0.58, 0.40)}
    records = [
        {"arm": arm, "trial": trial, "classifier_seed": trial,
         "selected": {"test_balanced_accuracy": values[index], "test_top1": values[index] + 0.01}}
        for trial, values in figures.items()
        for index, arm in enumerate(("augmented", "real_only"))
    ]
    result = aggregate(records)
    augmented, real = [v[0] for v in figures.values()], [v[1] for v in figures.values()]
    assert result["augmented"]["balanced_accuracy"]["mean"] == pytest.approx(np.mean(augmented))
    assert result["augmented"]["balanced_accuracy"]["std"] == pytest.approx(np.std(augmented, ddof=1))
    assert result["real_only"]["top1"]["mean"] == pytest.approx(np.mean(real) + 0.01)
    assert result["difference"]["balanced_accuracy"]["p_value"] == pytest.approx(
        scipy.stats.ttest_rel(augmented, real).pvalue
    )
    assert mean_and_std([0.3]) == {"mean": 0.3, "std": None}


def test_epoch_selection_rules():
    curves = [[0.2, 0.9, 0.5, 0.6], [0.4, 0.3, 0.8, 0.7]]
    histories = [
        [{"epoch": e + 1, "test_balanced_accuracy": v, "validation_balanced_accuracy": 1 - v} for e, v in enumerate(c)]
        for c in curves
    ]
    assert [r["epoch"] for r in select_epochs(histories, "last_epoch")] == [4, 4]
    assert [r["epoch"] for r in select_epochs(histories, "best_validation_epoch")] == [1, 2]
    # The released rule: the epoch of the best mean over trials (0.3, 0.6, 0.65, 0.65 → epoch 3, the first),
    # shared: neither trial's own best (epochs 2 and 3).
    assert [r["epoch"] for r in select_epochs(histories, "best_test_epoch")] == [3, 3]


@pytest.mark.parametrize("optimizer", ["adamw", "adam"])
def test_batched_heads_train_as_one_training_per_head(optimizer):
    """Several trials × two arms in one batched computation give each head's own training, loss by loss."""
    recipe = HeadRecipe(optimizer, 0.05, 0.1 if optimizer == "adamw" else 0.0)
    rng = np.random.default_rng(0)
    dim, classes = 16, 3
    pools = [
        TrainingPool.from_groups([0, 1, 2, 1], [3, 2, 4, 0]),
        TrainingPool.from_groups([2, 0, 1, 0], [1, 5, 2, 2]),
    ]
    centres = rng.normal(size=(classes, 1, dim)) * 2  # learnable: each class's features around its own centre
    tables = [torch.from_numpy(rng.normal(size=(len(p.labels), 62, dim)) + centres[p.labels]).float() for p in pools]
    schedule = TrainingSchedule(epochs=3, iterations_per_epoch=15, batch_size=8)
    tasks = [(trial, seed, p) for trial in range(2) for seed in (0, 1, 2)[: 2 + trial] for p in (0.0, 0.5)]
    draws = [draw_training_batches(pools[t], schedule, seed, p) for t, seed, p in tasks]
    test = LabelledFeatures(torch.from_numpy(rng.normal(size=(20, dim))).float(), rng.integers(0, classes, 20))

    def initial(seed):
        torch.manual_seed(seed)
        return torch.nn.Linear(dim, classes)

    offsets = [0, len(pools[0].labels)]
    batched = train_linear_heads(
        StackedLinearHeads([initial(seed) for _, seed, _ in tasks]),
        recipe,
        CachedFeatures(torch.cat(tables), torch.device("cpu")),
        draws,
        [pools[t].labels for t, _, _ in tasks],
        held_out_scorer([test] * len(tasks), [None] * len(tasks)),
        offsets=[offsets[t] for t, _, _ in tasks],
    )
    for (trial, seed, _), history, draw in zip(tasks, batched, draws):
        alone = train_linear_heads(
            StackedLinearHeads([initial(seed)]),
            recipe,
            CachedFeatures(tables[trial], torch.device("cpu")),
            [draw],
            [pools[trial].labels],
            held_out_scorer([test], [None]),
        )[0]
        np.testing.assert_allclose([r["train_loss"] for r in history], [r["train_loss"] for r in alone], atol=1e-5)
        assert [r["test_balanced_accuracy"] for r in history] == [r["test_balanced_accuracy"] for r in alone]
    # Or the comparison proves nothing: the heads did train, and differently.
    losses = np.array([[r["train_loss"] for r in history] for history in batched])
    assert len({tuple(np.round(row, 6)) for row in losses}) == len(tasks) and (losses[:, -1] < losses[:, 0]).all()


def test_the_closed_form_gradient_is_autograds():
    """`cross_entropy_gradients` against autograd on `cross_entropy(head(x), y)`, head by head: losses and both
    gradients (Adam would hide a wrong scale, so the gradients are compared themselves)."""
    torch.manual_seed(0)
    heads = [torch.nn.Linear(16, 5) for _ in range(3)]
    features, targets = torch.randn(3, 8, 16), torch.randint(0, 5, (3, 8))
    stacked = StackedLinearHeads(heads)
    losses = stacked.cross_entropy_gradients(features, targets)
    for index, head in enumerate(heads):
        per_item = torch.nn.functional.cross_entropy(head(features[index]), targets[index], reduction="none")
        per_item.mean().backward()
        torch.testing.assert_close(losses[index], per_item.detach())
        torch.testing.assert_close(stacked.weight_t.grad[index], head.weight.grad.T)
        torch.testing.assert_close(stacked.bias.grad[index], head.bias.grad)
