"""The synthetic-score threshold sweep's table (`min_synthetic_score_sweep`): accuracy against the threshold, with
the images each threshold keeps, the share of the draws that were synthetic, the paired difference to real only and,
where there are validation images, the threshold chosen on them."""

from collections import Counter

import numpy as np

from .metrics import mean_and_std
from .summary import (
    OPTIMISTIC,
    SWEEP_ARM,
    Unit,
    format_difference,
    format_figure,
    paired_figures,
    paired_over,
    reported_epochs,
    summarise,
)

OPTIMISTIC_THRESHOLD = "optimistic: the threshold would be chosen on the test set"
VALIDATION = "validation_balanced_accuracy"


def sweep_table(records: list[dict], kept: dict[float, int], total: int) -> list[dict]:
    """Per threshold of `min_synthetic_score_sweep`, ascending: the synthetic images it keeps (over the trials, of
    `total`), the mean over its classifiers of the share of their training draws that were synthetic (a real image
    left without any synthetic image is never replaced, so a threshold lowers the mixing ratio too), mean ± std of
    their figures (and of their validation balanced accuracy, where every one has validation images) and, where the
    real-only arm ran, the paired difference threshold arm − real only."""
    real_only = reported_epochs(records, "real_only")
    rows = []
    for threshold in sorted(kept):
        members = [r for r in records if r["arm"] == SWEEP_ARM and r["min_synthetic_score"] == threshold]
        selected = reported_epochs(records, SWEEP_ARM, threshold)
        row = {
            "min_synthetic_score": threshold,
            "synthetic_images_kept": kept[threshold],
            "synthetic_images": total,
            "kept_share": kept[threshold] / total if total else 0.0,
            "synthetic_share_drawn": float(np.mean([r["synthetic_fraction_drawn"] for r in members])),
            **summarise(selected),
        }
        if all(VALIDATION in record for record in selected.values()):
            row[VALIDATION] = mean_and_std([record[VALIDATION] for record in selected.values()])
        if real_only:
            row["difference"] = paired_figures(selected, real_only)
        rows.append(row)
    return rows


def threshold_chosen_on_validation(records: list[dict], thresholds: list[float]) -> dict | None:
    r"""
    The sweep's threshold chosen without the test set, per classifier, as `best_validation_epoch` chooses epochs:
    each classifier k (trial, classifier seed) takes

        t*_k = argmax_t validation_balanced_accuracy_k(t)      (the lowest such threshold on a tie),

    the validation balanced accuracy of its reported epoch at each threshold t, and reports its test figures at t*_k.
    Returns the choices, mean ± std of those test figures and, where the real-only arm ran, their paired difference to
    real only; None where a classifier has no validation images (`validation_fraction` 0, or too few test images).
    """
    by_threshold = {threshold: reported_epochs(records, SWEEP_ARM, threshold) for threshold in sorted(thresholds)}
    units: list[Unit] = sorted(next(iter(by_threshold.values())))
    if not all(VALIDATION in by_threshold[t][unit] for t in by_threshold for unit in units):
        return None
    chosen = {unit: max(by_threshold, key=lambda t: by_threshold[t][unit][VALIDATION]) for unit in units}
    selected = {unit: by_threshold[chosen[unit]][unit] for unit in units}
    choice = {
        "rule": "per classifier, the threshold of the best validation balanced accuracy (ties: the lowest)",
        "per_classifier": [
            {
                "trial": unit[0],
                "classifier_seed": unit[1],
                "min_synthetic_score": chosen[unit],
                VALIDATION: selected[unit][VALIDATION],
                "test_balanced_accuracy": selected[unit]["test_balanced_accuracy"],
                "test_top1": selected[unit]["test_top1"],
            }
            for unit in units
        ],
        **summarise(selected),
    }
    real_only = reported_epochs(records, "real_only")
    if real_only:
        choice["difference"] = paired_figures(selected, real_only)
    return choice


def sweep_markdown(results: dict) -> list[str]:
    """The lines of the sweep's table (balanced accuracy against the synthetic-score threshold, with the shares kept
    and drawn) and of the threshold chosen on validation, or the mark that says no threshold was."""
    settings, choice = results["settings"], results.get("min_synthetic_score_sweep_choice")
    pairs = paired_over(results["repeats"])
    validation_column = " | validation balanced accuracy" if choice else ""
    lines = [
        "",
        "## Accuracy against `min_synthetic_score`",
        "",
        f"The augmented classifier (p = {settings['synthetic_probability']}) trained on only the synthetic images "
        "whose own CLIPScore (`synthetic_clip_score`) is at or above each threshold, with the real-only arm's real "
        "draws, views and initialisation; a real image with none left is never replaced. Figure: "
        "accuracy_vs_min_synthetic_score.png.",
        "",
        f"| min_synthetic_score | synthetic images kept | synthetic share of draws | test balanced accuracy | "
        f"difference to real only, {pairs}{validation_column} |",
        "| --- | --- | --- | --- | ---" + (" | ---" if choice else "") + " |",
    ]
    for row in results["min_synthetic_score_sweep"]:
        difference = format_difference(row["difference"]["balanced_accuracy"]) if "difference" in row else "–"
        cells = [
            str(row["min_synthetic_score"]),
            f"{row['synthetic_images_kept']} of {row['synthetic_images']} ({row['kept_share']:.1%})",
            f"{row['synthetic_share_drawn']:.1%}",
            format_figure(row["balanced_accuracy"]),
            difference,
        ]
        if choice:
            cells.append(format_figure(row[VALIDATION]) if VALIDATION in row else "–")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "A higher threshold changes two things: which synthetic images are drawn, and how often a draw is synthetic "
        "(a real image left without any is never replaced, so the share of draws falls below p). An accuracy that "
        "moves with the synthetic share of draws may come from the lower mixing ratio, not from the images' "
        "fidelity; to tell them apart, evaluate without a threshold at `synthetic_probability` equal to a "
        "threshold's share of draws.",
        "",
        f"A threshold picked off this table's test figures is **{OPTIMISTIC_THRESHOLD}**.",
        "",
    ]
    return lines + (chosen_markdown(results, choice) if choice else [
        f"This run has no validation images (`validation_fraction` {settings['validation_fraction']}), so no "
        "threshold was chosen without the test set; set `validation_fraction` to choose it on validation images.",
    ])


def chosen_markdown(results: dict, choice: dict) -> list[str]:
    """The lines of the threshold chosen on validation: the rule, the choices, and their test figures."""
    chosen = Counter(entry["min_synthetic_score"] for entry in choice["per_classifier"])
    epochs = f" (the epochs: **{OPTIMISTIC}**)" if results["settings"]["select"] == "best_test_epoch" else ""
    lines = [
        "### Threshold chosen on validation",
        "",
        "Each classifier (trial, classifier seed) takes the threshold whose reported epoch has the best validation "
        "balanced accuracy (on a tie, the lowest), as `best_validation_epoch` chooses each classifier's epoch, and "
        "reports that threshold's test figures; the validation images are carved out of the test images "
        "(`validation_fraction`) and are not scored as test images. Chosen: "
        + ", ".join(f"{t} ({n} of {len(choice['per_classifier'])})" for t, n in sorted(chosen.items())) + ".",
        "",
        "| chosen on validation | test balanced accuracy | test top-1 |",
        "| --- | --- | --- |",
        f"| threshold of the best validation accuracy{epochs} | {format_figure(choice['balanced_accuracy'])} | "
        f"{format_figure(choice['top1'])} |",
    ]
    if "difference" in choice:
        lines.append(
            f"| difference to real only, {paired_over(results['repeats'])} | "
            f"{format_difference(choice['difference']['balanced_accuracy'])} | "
            f"{format_difference(choice['difference']['top1'])} |"
        )
    return lines
