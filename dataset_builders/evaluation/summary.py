"""Figures over a run's classifiers (mean ± std per arm, paired differences between arms) and how the reports
write them: shared by one run's report, its threshold sweep and the comparison of runs."""

from typing import Any

from .metrics import holm_adjusted, mean_and_std, paired_difference


OPTIMISTIC = "optimistic: the epoch was chosen on the test set"
Unit = tuple[int, int]
"""A classifier's key: (trial seed, classifier seed). Its augmented and real-only arms form one pair."""
SWEEP_ARM = "min_synthetic_score_sweep"
"""The arm of the augmented classifiers of `min_synthetic_score_sweep`, one per threshold (their records'
`min_synthetic_score`); reported in their own table, left out of `aggregate` and of `dalda compare`."""
METRICS = ("balanced_accuracy", "top1")


def repeats_kind(trial_seeds: list[int], classifier_seeds: list[int]) -> str:
    """What the classifiers of a report redraw: 'trials' (each its own shots, synthetic images and classifier),
    'classifier repeats' (one draw of shots, several classifier seeds) or 'one trial'."""
    if len(set(trial_seeds)) > 1:
        return "trials"
    return "classifier repeats" if len(set(classifier_seeds)) > 1 else "one trial"


def reported_epochs(records: list[dict], arm: str, threshold: float | None = None) -> dict[Unit, dict]:
    """The reported epoch of each classifier of `arm` (of the sweep's: at `threshold`), by (trial, classifier seed)."""
    return {
        (record["trial"], record["classifier_seed"]): record["selected"]
        for record in records
        if record["arm"] == arm and (arm != SWEEP_ARM or record["min_synthetic_score"] == threshold)
    }


def summarise(selected: dict[Unit, dict]) -> dict[str, dict]:
    """Mean ± std of each figure over the classifiers."""
    return {metric: mean_and_std([record[f"test_{metric}"] for record in selected.values()]) for metric in METRICS}


def paired_figures(treated: dict[Unit, dict], baseline: dict[Unit, dict]) -> dict[str, dict]:
    """The paired difference treated − baseline of each figure over the (trial, classifier seed) pairs both ran."""
    units = sorted(treated.keys() & baseline.keys())
    return {
        metric: paired_difference(
            [treated[unit][f"test_{metric}"] for unit in units], [baseline[unit][f"test_{metric}"] for unit in units]
        )
        for metric in METRICS
    }


def aggregate(records: list[dict]) -> dict[str, Any]:
    """Mean ± std per arm over its classifiers, and the paired difference augmented − real-only over the
    (trial, classifier seed) pairs both arms ran (the sweep's arms have their own table: [`sweep_table`])."""
    by_arm = {arm: reported_epochs(records, arm) for arm in ("augmented", "real_only")}
    figures: dict[str, Any] = {arm: summarise(selected) for arm, selected in by_arm.items() if selected}
    if by_arm["augmented"] and by_arm["real_only"]:
        figures["difference"] = paired_figures(by_arm["augmented"], by_arm["real_only"])
    return figures


def format_figure(summary: dict) -> str:
    return f"{summary['mean']:.4f}" + (f" ± {summary['std']:.4f}" if summary["std"] is not None else "")


def format_interval(summary: dict) -> str:
    """A paired difference and its 95% interval: `+0.0970 [95% CI +0.0100, +0.1840]` (the mean alone below 2 pairs)."""
    text = f"{summary['mean']:+.4f}"
    if summary["ci95"] is not None:
        text += f" [95% CI {summary['ci95'][0]:+.4f}, {summary['ci95'][1]:+.4f}]"
    return text


def format_sample(summary: dict) -> str:
    """What a paired interval and test rest on: `n = 3, df = 2`, and why there is no interval or no test."""
    if summary["df"] is None:
        return f"n = {summary['n']}: no interval"
    untested = "; equal differences: no test" if summary["p_value"] is None else ""
    return f"n = {summary['n']}, df = {summary['df']}{untested}"


def format_difference(summary: dict) -> str:
    """A paired difference with its interval, p-value (raw and, where [`adjust_for_multiplicity`] set it,
    Holm-adjusted), n and degrees of freedom, in one cell:
    `+0.0970 [95% CI +0.0100, +0.1840], p = 0.043, Holm p = 0.086 (n = 3, df = 2)`."""
    p_value = f", p = {summary['p_value']:.3g}" if summary["p_value"] is not None else ""
    if summary.get("p_holm") is not None:
        p_value += f", Holm p = {summary['p_holm']:.3g}"
    return f"{format_interval(summary)}{p_value} ({format_sample(summary)})"


def adjust_for_multiplicity(differences: list[dict]) -> int:
    """Sets each paired difference's `p_holm`: its p-value adjusted by Holm–Bonferroni over all of `differences`
    (one table's or one report's tests, read together); returns how many tests that is (m)."""
    adjusted = holm_adjusted([difference["p_value"] for difference in differences])
    for difference, p_holm in zip(differences, adjusted):
        difference["p_holm"] = p_holm
    return sum(difference["p_value"] is not None for difference in differences)


def multiplicity_sentence(num_tests: int, where: str) -> str:
    """What the p-values of `where`'s `num_tests` tests can show, read together."""
    return (
        f"{where} holds {num_tests} paired t-tests (this project's test: the released code computes none). Among "
        f"{num_tests} tests of no difference, some raw p-value falls below 0.05 by chance alone with a probability "
        f"of up to {min(1.0, 0.05 * num_tests):.2g} ({1 - 0.95 ** num_tests:.2g} if they are independent); beside "
        "each raw p-value is its Holm–Bonferroni adjustment over all of them, and reading only adjusted values keeps "
        "that chance at 0.05 at most. Each test rests on n pairs and n − 1 degrees of freedom (2 for the paper's 3 "
        "trials): read the interval first."
    )


def paired_over(repeats: str) -> str:
    """What a paired difference pairs, in words, by [`repeats_kind`]."""
    return {"trials": "paired over trials", "classifier repeats": "paired over classifier repeats"}.get(
        repeats, "one trial"
    )


REAL_ONLY = "Real only"
"""The real-only baseline's name in the tables and figures."""


OVER = {
    "trials": "trials (each its own draw of shots, synthetic images and classifier)",
    "classifier repeats": "classifier repeats on one draw of shots (optimiser noise only, not trials)",
    "one trial": "one trial (no spread)",
}


def arm_in_words(arm: str, threshold: float | None) -> str:
    """A classifier's arm in words, with the synthetic-score threshold of the synthetic images it drew from."""
    return ("augmented" if arm == SWEEP_ARM else arm.replace("_", " ")) + at_or_above(threshold)


def at_or_above(threshold: float | None) -> str:
    return f", synthetic score ≥ {threshold}" if threshold is not None else ""
