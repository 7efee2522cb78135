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


def critical_value(df: int, confidence: float = 0.95) -> float:
    """Student's `t_{(1+confidence)/2, df}`: the half width of a t interval in standard errors (4.30 at df = 2)."""
    return float(scipy.stats.t.ppf((1 + confidence) / 2, df))


def paired_difference(treated: Sequence[float], baseline: Sequence[float], confidence: float = 0.95) -> dict:
    r"""
    The paired difference over n pairs (trials), `d_i = treated_i − baseline_i`, with Student's t interval and test:

        mean(d) ± t_{(1+confidence)/2, n−1} · sd(d) / √n,      p = the two-sided paired t-test of mean(d) = 0
        (`scipy.stats.ttest_rel(treated, baseline)`).

    Both rest on `df = n − 1` degrees of freedom (returned with n): with the paper's 3 trials, df = 2 and the
    critical value t_{0.975, 2} = 4.30, so the interval is wide and a p-value rests on three differences. The
    interval needs n ≥ 2 pairs (df is None below), the p-value also a spread: with sd(d) ≤ [`ZERO_SPREAD`] the
    interval is the mean itself and the test is undefined (None).
    """
    differences = np.asarray(treated, dtype=float) - np.asarray(baseline, dtype=float)
    n = differences.size
    result = {"mean": float(differences.mean()), "ci95": None, "p_value": None, "n": int(n), "df": None}
    if n > 1:
        result["df"] = int(n - 1)
        spread = float(differences.std(ddof=1))
        if spread <= ZERO_SPREAD:
            result["ci95"] = [result["mean"], result["mean"]]
            return result
        half_width = critical_value(n - 1, confidence) * spread / np.sqrt(n)
        result["ci95"] = [float(differences.mean() - half_width), float(differences.mean() + half_width)]
        result["p_value"] = float(scipy.stats.ttest_rel(treated, baseline).pvalue)
    return result


def holm_adjusted(p_values: Sequence[float | None]) -> list[float | None]:
    r"""
    Holm–Bonferroni adjusted p-values of m tests read together (Holm 1979), in the order given:

        p_(1) ≤ … ≤ p_(m) the raw p-values sorted,   p̃_(i) = min(1, max_{j ≤ i} (m − j + 1) · p_(j)).

    Rejecting every test with p̃ ≤ α keeps the chance of any false rejection among the m at most α, whatever their
    dependence. Each p̃ is at least its raw p, at most 1, and the adjusted values keep the raw values' order. A None
    (an undefined test) stays None and does not count in m.
    """
    defined = [index for index, p in enumerate(p_values) if p is not None]
    adjusted: list[float | None] = [None] * len(p_values)
    m, running = len(defined), 0.0
    for rank, index in enumerate(sorted(defined, key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * float(p_values[index])))
        adjusted[index] = running
    return adjusted


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
