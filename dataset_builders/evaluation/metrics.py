"""The figures of the report: the paper's balanced accuracy, top-1, the epoch each classifier reports, and the paired
comparison over trials."""

from collections.abc import Sequence

import numpy as np
import scipy.stats


def balanced_accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    r"""
    The paper's metric: the mean over classes of the per-class accuracy,

        balanced_accuracy = (1 / |C|) Σ_{c ∈ C} |{i : y_i = c, ŷ_i = c}| / |{i : y_i = c}|,

    over the classes C present in `labels`, so every class weighs the same whatever its number of test images.
    """
    classes = np.unique(labels)
    return float(np.mean([np.mean(predictions[labels == c] == c) for c in classes])) if classes.size else float("nan")


def top1_accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """The fraction of test images whose predicted class is their class."""
    return float(np.mean(predictions == labels)) if labels.size else float("nan")


def mean_and_std(values: Sequence[float]) -> dict[str, float | None]:
    """The mean and the sample standard deviation (ddof = 1; None for a single value)."""
    values = np.asarray(values, dtype=float)
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if values.size > 1 else None}


ZERO_SPREAD = 1e-12
"""A standard deviation of the differences at or below this is zero: floating-point noise in equal differences would
otherwise give a t statistic in the millions and a p-value of 1e-16."""


def paired_difference(treated: Sequence[float], baseline: Sequence[float], confidence: float = 0.95) -> dict:
    r"""
    The paired difference over n pairs (trials), `d_i = treated_i − baseline_i`, with Student's t interval and test:

        mean(d) ± t_{(1+confidence)/2, n−1} · sd(d) / √n,      p = the two-sided paired t-test of mean(d) = 0
        (`scipy.stats.ttest_rel(treated, baseline)`).

    The interval needs n ≥ 2 pairs, the p-value also a spread: with sd(d) ≤ [`ZERO_SPREAD`] the interval is the
    mean itself and the test is undefined (None).
    """
    differences = np.asarray(treated, dtype=float) - np.asarray(baseline, dtype=float)
    n = differences.size
    result = {"mean": float(differences.mean()), "ci95": None, "p_value": None, "n": int(n)}
    if n > 1:
        spread = float(differences.std(ddof=1))
        if spread <= ZERO_SPREAD:
            result["ci95"] = [result["mean"], result["mean"]]
            return result
        half_width = scipy.stats.t.ppf((1 + confidence) / 2, n - 1) * spread / np.sqrt(n)
        result["ci95"] = [float(differences.mean() - half_width), float(differences.mean() + half_width)]
        result["p_value"] = float(scipy.stats.ttest_rel(treated, baseline).pvalue)
    return result


def select_epochs(histories: Sequence[Sequence[dict]], rule: str) -> list[dict]:
    r"""
    The epoch each classifier of one arm reports, one record per classifier (trial).

    - `last_epoch`: each classifier's last epoch.
    - `best_validation_epoch`: each classifier's own best epoch by validation balanced accuracy.
    - `best_test_epoch`: the released code's rule (its `plot.py`): **one** epoch for every classifier of the arm,
      `e* = argmax_e mean_k test_balanced_accuracy_k(e)` (the first such epoch), read off the test set, so
      optimistic.
    """
    if rule == "last_epoch":
        return [history[-1] for history in histories]
    if rule == "best_validation_epoch":
        return [max(history, key=lambda record: record["validation_balanced_accuracy"]) for history in histories]
    if rule == "best_test_epoch":
        curves = np.array([[record["test_balanced_accuracy"] for record in history] for history in histories])
        best = int(np.argmax(curves.mean(axis=0)))
        return [history[best] for history in histories]
    raise ValueError(f"Unknown epoch selection {rule!r}.")
