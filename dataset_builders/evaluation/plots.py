"""The reports' figures: accuracy per epoch, accuracy against the synthetic-score threshold, the CLIPScore and λ
histograms (the paper's Fig. 4) and accuracy against shots (its Fig. 7)."""

from pathlib import Path
from typing import Any

import numpy as np

from pipeline_dalda.atomic import atomic_output

from .summary import REAL_ONLY


def pyplot():
    """matplotlib's pyplot on the file-only backend (imported on first use: the reports need no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(figure, path: Path) -> None:
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120)
    pyplot().close(figure)


def plot_accuracy_per_epoch(path: Path, trials: list[dict], title: str) -> None:
    """Test balanced accuracy per epoch, real-only vs augmented: the mean over classifiers and its min–max band."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6.4, 4))
    for arm, colour in (("real_only", "tab:gray"), ("augmented", "tab:blue")):
        curves = np.array(
            [
                [record["test_balanced_accuracy"] for record in trial["history"]]
                for trial in trials
                if trial["arm"] == arm
            ]
        )
        if curves.size == 0:
            continue
        epochs = np.arange(1, curves.shape[1] + 1)
        axes.plot(epochs, curves.mean(axis=0), color=colour, label=arm.replace("_", " "))
        axes.fill_between(epochs, curves.min(axis=0), curves.max(axis=0), color=colour, alpha=0.2)
    axes.set(xlabel="epoch", ylabel="test balanced accuracy", title=title)
    axes.legend()
    save_png(figure, path)


def plot_accuracy_vs_min_synthetic_score(
    path: Path, rows: list[dict], figures: dict[str, Any], augmented_label: str, repeats: str, title: str
) -> None:
    """Balanced accuracy (mean ± std over the classifiers, which `repeats` names) against the sweep's synthetic-score
    threshold (`rows` of [`sweep_table`]), each point marked with the share of synthetic images it keeps and the share
    of the training draws that were synthetic (a higher threshold keeps fewer images and can lower the mixing ratio:
    the two effects move together); the real-only and the main augmented arms' means (`figures` of [`aggregate`]) as
    horizontal lines."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6.4, 4))
    thresholds = [row["min_synthetic_score"] for row in rows]
    means = [row["balanced_accuracy"]["mean"] for row in rows]
    spreads = [row["balanced_accuracy"]["std"] or 0 for row in rows]
    spread = {"trials": " (mean ± std over trials)", "classifier repeats": " (mean ± std over classifier repeats)"}
    axes.errorbar(thresholds, means, yerr=spreads, marker="o", capsize=3, color="tab:blue",
                  label="augmented, synthetic score ≥ threshold" + spread.get(repeats, ""))
    for row, threshold, mean in zip(rows, thresholds, means):
        axes.annotate(f"{row['kept_share']:.0%} kept\n{row['synthetic_share_drawn']:.0%} of draws",
                      (threshold, mean), textcoords="offset points", xytext=(0, 6), ha="center", fontsize="small")
    for arm, label, colour, style in (
        ("real_only", "real only", "tab:gray", "--"),
        ("augmented", augmented_label, "tab:orange", ":"),
    ):
        if arm in figures:
            axes.axhline(figures[arm]["balanced_accuracy"]["mean"], color=colour, linestyle=style, label=label)
    axes.set(xlabel="min_synthetic_score (the synthetic image's own CLIPScore)", ylabel="test balanced accuracy",
             title=title)
    axes.legend(fontsize="small")
    save_png(figure, path)


def plot_score_histograms(path: Path, clip_scores: list, scales: list) -> None:
    """The augmented dataset's CLIPScores (real images) and λ's (synthetic images), as the paper's Fig. 4."""
    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    for axes, values, name in (
        (left, clip_scores, "CLIPScore of the real images"),
        (right, scales, "λ of the synthetic images"),
    ):
        values = [value for value in values if value is not None]
        if values:
            axes.hist(values, bins=20, range=(0, 1), color="tab:blue")
        else:
            axes.text(0.5, 0.5, "none recorded", ha="center", va="center", transform=axes.transAxes)
        axes.set(xlabel=name, ylabel="images", xlim=(0, 1))
    save_png(figure, path)


def plot_accuracy_vs_shots(path: Path, table: dict[tuple[str, str], dict[int, dict[str, dict]]]) -> None:
    """Balanced accuracy against shots, one panel per dataset and backbone, one line per method (paper's Fig. 7)."""
    plt = pyplot()
    figure, panels = plt.subplots(1, len(table), figsize=(4.8 * len(table), 3.8), squeeze=False)
    for axes, ((dataset, backbone), by_shots) in zip(panels[0], table.items()):
        shots = sorted(by_shots)
        for method in dict.fromkeys(m for s in shots for m in by_shots[s]):
            points = [(s, by_shots[s][method]) for s in shots if method in by_shots[s]]
            axes.errorbar(
                [s for s, _ in points],
                [p["mean"] for _, p in points],
                yerr=[p["std"] or 0 for _, p in points],
                marker="o",
                capsize=3,
                label=method,
                linestyle="--" if method == REAL_ONLY else "-",
            )
        axes.set(xscale="log", xlabel="shots per class", ylabel="balanced accuracy", title=f"{dataset}, {backbone}")
        axes.set_xticks(shots, [str(s) for s in shots])
        axes.legend(fontsize="small")
    save_png(figure, path)
