"""The figures of the report: the paper's balanced accuracy, top-1, and the paired comparison over seeds."""

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


def paired_difference(treated: Sequence[float], baseline: Sequence[float], confidence: float = 0.95) -> dict:
    r"""
    The paired difference over seeds, `d_s = treated_s − baseline_s`, with Student's t interval and test:

        mean ± t_{(1+confidence)/2, n−1} · sd(d) / √n,      p = the two-sided paired t-test of mean(d) = 0.

    The interval and the p-value need at least two seeds (None otherwise).
    """
    differences = np.asarray(treated, dtype=float) - np.asarray(baseline, dtype=float)
    n = differences.size
    result = {"mean": float(differences.mean()), "ci95": None, "p_value": None, "n": int(n)}
    if n > 1:
        half_width = scipy.stats.t.ppf((1 + confidence) / 2, n - 1) * differences.std(ddof=1) / np.sqrt(n)
        result["ci95"] = [float(differences.mean() - half_width), float(differences.mean() + half_width)]
        if differences.std(ddof=1) > 0:
            result["p_value"] = float(scipy.stats.ttest_1samp(differences, 0.0).pvalue)
    return result
