"""One evaluation run's report: results.json, results.md, epochs.csv and its plots."""

import csv
import importlib.metadata
import json
import logging
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline_dalda.atomic import atomic_output, write_json_atomically

from ..card import method_label
from .arguments import EvaluateArguments
from .metrics import critical_value
from .plots import plot_accuracy_per_epoch, plot_accuracy_vs_min_synthetic_score, plot_score_histograms
from .public import MACHINE_SETTINGS, public_path
from .summary import (
    OPTIMISTIC,
    adjust_for_multiplicity,
    aggregate,
    arm_in_words,
    at_or_above,
    format_difference,
    format_figure,
    multiplicity_sentence,
    paired_over,
    repeats_kind,
)
from .sweep import sweep_markdown, sweep_table, threshold_chosen_on_validation

if TYPE_CHECKING:
    from .run import PreparedTraining  # run.py imports this module


logger = logging.getLogger(__name__)


_PACKAGES = ("dalda", "torch", "transformers", "datasets", "diffusers", "huggingface_hub")


def _versions() -> dict[str, str | None]:
    versions = {}
    for package in _PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _seeds(seeds: list[int]) -> str:
    return ", ".join(map(str, seeds))


_TRIALS_TEST_SETS = {
    "paper": "each its own draw of shots, synthetic images, test set (the other half of its own split) and "
    "classifier, as the paper's",
    "unselected": "each its own draw of shots, synthetic images and classifier, each tested on the source rows that "
    "are not its own shots (test sets that overlap)",
    "split": "each its own draw of shots, synthetic images and classifier, all tested on one shared test set",
}
"""What a trial redraws, by test protocol (`test_set`): under `split` the trials share one test set."""


def repeats_sentence(kind: str, trial_seeds: list[int], classifier_seeds: list[int], test_protocol: str) -> str:
    """What the spread and the interval of a report measure, in words, for the test protocol the run used."""
    trials, classifiers = sorted(set(trial_seeds)), sorted(set(classifier_seeds))
    if kind == "trials":
        return (
            f"{len(trials)} trials (seeds {_seeds(trials)}), {_TRIALS_TEST_SETS[test_protocol]}. Mean ± sample "
            "standard deviation over trials; the interval and the p-value are Student's t on the paired "
            "differences over trials, with n − 1 degrees of freedom."
        )
    if kind == "classifier repeats":
        return (
            f"One draw of shots and synthetic images (seed {_seeds(trials)}) and {len(classifiers)} classifier "
            f"repeats (classifier seeds {_seeds(classifiers)}). **These are not trials: the ± and the interval "
            "measure only the classifier's optimisation noise on this one draw**, not the variation over draws of "
            "shots that the paper's trials show; `dalda augment --seeds 0 1 2` makes the paper's trials."
        )
    return (
        f"One trial (seed {_seeds(trials)}): no spread and no interval; `dalda augment --seeds 0 1 2` makes the "
        "paper's three trials."
    )


def results_markdown(results: dict) -> str:
    """The report a user reads: the paired difference first ([`lead_sentence`]), the side-by-side table, then per
    classifier, the data and the settings."""
    settings, test = results["settings"], results["test_set"]
    figures = results["aggregate"]
    selection = {
        "last_epoch": "the last epoch",
        "best_validation_epoch": "each classifier's best epoch on the validation set",
        "best_test_epoch": f"one epoch for every trial, the best by their mean test accuracy (**{OPTIMISTIC}**, the "
        "released code's rule)",
    }[settings["select"]]
    batch_norm = results["backbone"].get("batch_norm")
    lines = [f"# Few-shot evaluation of `{settings['dataset']}`", ""]
    if "difference" in figures:
        lines += [lead_sentence(figures["difference"]["balanced_accuracy"], results["repeats"]), ""]
    if results["tests"] > 1:
        lines += [multiplicity_sentence(results["tests"], "This report"), ""]
    lines += [
        f"{results['method']}, {results['num_shots']} shot(s) per class, backbone `{settings['backbone']}`"
        + (f" (batch norm: {batch_norm})" if batch_norm else "")
        + f", {settings['epochs']} epochs × {settings['iterations_per_epoch']} iterations × batch "
        f"{settings['batch_size']}. Test set: {test['protocol']} protocol, split `{test['split']}` of "
        f"`{test['source_dataset']}`. Reported epoch: {selection}.",
        "",
        "| training data | balanced accuracy | top-1 |",
        "| --- | --- | --- |",
    ]
    if "real_only" in figures:
        lines.append(
            f"| real only | {format_figure(figures['real_only']['balanced_accuracy'])} | "
            f"{format_figure(figures['real_only']['top1'])} |"
        )
    trained_on = "real only" if settings["synthetic_probability"] == 0 else "real + synthetic"
    lines.append(
        f"| {trained_on} ({results['method']}, p = {settings['synthetic_probability']}) | "
        f"{format_figure(figures['augmented']['balanced_accuracy'])} | {format_figure(figures['augmented']['top1'])} |"
    )
    if "difference" in figures:
        lines.append(
            f"| difference, {paired_over(results['repeats'])} | "
            f"{format_difference(figures['difference']['balanced_accuracy'])} | "
            f"{format_difference(figures['difference']['top1'])} |"
        )
    classifiers = results["per_classifier"]
    lines += [
        "",
        repeats_sentence(
            results["repeats"],
            [c["trial"] for c in classifiers],
            [c["classifier_seed"] for c in classifiers],
            test["protocol"],
        ),
    ]
    if results.get("min_synthetic_score_sweep"):
        lines += sweep_markdown(results)
    lines += [
        "",
        "## Per classifier",
        "",
        "| trial | classifier seed | training data | epoch | balanced accuracy | top-1 | synthetic share of draws |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for record in classifiers:
        lines.append(
            f"| {record['trial']} | {record['classifier_seed']} | "
            f"{arm_in_words(record['arm'], record['min_synthetic_score'])} | "
            f"{record['epoch']} | {record['test_balanced_accuracy']:.4f} | {record['test_top1']:.4f} | "
            f"{record['synthetic_fraction_drawn']:.3f} |"
        )
    lines += ["", "## Data", ""] + data_table(results)
    skipped = {reason: count for reason, count in results["skipped"].items() if count}
    lines += ["", "Skipped: " + (", ".join(f"{count} {reason}" for reason, count in skipped.items()) or "none") + "."]
    untested = results["classes_without_test_images"]
    if untested:
        lines += [
            "",
            "Classes without a test image, left out of balanced accuracy there: "
            + "; ".join(f"{name} (trial {', '.join(trials)})" for name, trials in untested.items())
            + ".",
        ]
    if results.get("diversity"):
        lines += ["", "## Diversity", "", results["diversity"]["table"]]
    shared = {name: value for name, value in settings.items() if name not in MACHINE_SETTINGS}
    lines += ["", "## Settings", "", "```json", json.dumps(shared, indent=2), "```", ""]
    return "\n".join(lines)


def printed_differences(results: dict) -> list[dict]:
    """Every paired difference results.md prints with a p-value: the augmented arm's (balanced accuracy, top-1) and,
    with a sweep, each threshold's (balanced accuracy) and the validation-chosen threshold's (both)."""
    differences = list(results["aggregate"].get("difference", {}).values())
    for row in results.get("min_synthetic_score_sweep") or []:
        if "difference" in row:
            differences.append(row["difference"]["balanced_accuracy"])
    choice = results.get("min_synthetic_score_sweep_choice")
    if choice and "difference" in choice:
        differences += list(choice["difference"].values())
    return differences


def lead_sentence(difference: dict, repeats: str) -> str:
    """The report's first line: the paired difference augmented − real only with its interval, n and degrees of
    freedom, and what so few degrees of freedom can show."""
    text = (
        f"**Augmented − real only, balanced accuracy: {format_difference(difference)}**, "
        f"{paired_over(repeats)}."
    )
    if difference["df"] is not None:
        text += (
            f" With n = {difference['n']} pairs the t interval has {difference['df']} "
            f"degree{'s' if difference['df'] > 1 else ''} of freedom (critical value "
            f"{critical_value(difference['df']):.2f}): it is wide, and the p-value rests on {difference['n']} "
            "differences; read the interval, not a verdict."
        )
    return text


def data_table(results: dict) -> list[str]:
    """The lines of the per-trial data table; with `min_synthetic_score`, the synthetic images it keeps too."""
    threshold = results["settings"]["min_synthetic_score"]
    kept = [f"synthetic images ≥ {threshold}"] if threshold is not None else []
    header = ["trial", "real images", "synthetic images", *kept, "test images", "validation images"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for trial in results["trials"]:
        training, test = trial["training"], trial["test_set"]
        kept = [training["synthetic_images_kept"]] if threshold is not None else []
        cells = [trial["seed"], training["real_images"], training["synthetic_images"], *kept, test["test_images"],
                 test["validation_images"]]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return lines


def report_summary(output_dir: str | Path) -> str:
    """The head of a written results.md (the side-by-side table), for a terminal."""
    report = Path(output_dir, "results.md")
    return report.read_text(encoding="utf-8").split("\n## Per classifier")[0] + f"\nThe whole report: {report}"


def write_epochs_csv(path: Path, records: list[dict]) -> None:
    """One row per (arm, trial, classifier seed, epoch) with every recorded metric; where a classifier drew from the
    synthetic images at or above a threshold, a `min_synthetic_score` column says which (empty: all of them)."""
    thresholds = any(record["min_synthetic_score"] is not None for record in records)
    rows = [
        {
            "arm": record["arm"],
            **({"min_synthetic_score": record["min_synthetic_score"]} if thresholds else {}),
            "trial": record["trial"],
            "classifier_seed": record["classifier_seed"],
            **epoch,
        }
        for record in records
        for epoch in record["history"]
    ]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_output(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def evaluated_method(args: EvaluateArguments, recorded: dict) -> str:
    """The method's name in the tables: `method_label`, else how the dataset was made, with the augmented arm's
    `min_synthetic_score` where one is set (so that `dalda compare` keeps a filtered run apart from an unfiltered
    one)."""
    if args.method_label:
        return args.method_label
    return method_label(recorded) + at_or_above(args.min_synthetic_score)


def training_counts(training: "PreparedTraining", threshold: float | None) -> dict[str, int]:
    """A trial's training images: real, synthetic and, with a synthetic-score threshold, the synthetic images at or
    above it."""
    counts = {"real_images": training.pool.num_reals, "synthetic_images": training.pool.num_synthetic}
    if threshold is not None:
        counts["synthetic_images_kept"] = int(training.keeps(threshold).sum())
    return counts


def evaluation_protocol(args: EvaluateArguments, context: dict) -> dict:
    """Every setting besides the backbone that changes the figures, as the run used them (the recipe with its
    defaults resolved, the pixels' normalisation, the views the heads trained on): `dalda compare` puts runs in one
    column only where these, and the backbone's id, revision and fingerprint, are equal."""
    recipe, cached = context["recipe"], context["feature_cache"]
    return {
        "select": args.select,
        "validation_fraction": args.validation_fraction,
        "epochs": args.epochs,
        "iterations_per_epoch": args.iterations_per_epoch,
        "batch_size": args.batch_size,
        "optimizer": recipe["optimizer"],
        "learning_rate": recipe["learning_rate"],
        "weight_decay": recipe["weight_decay"],
        "synthetic_probability": args.synthetic_probability,
        "image_size": args.image_size,
        "dtype": args.dtype,
        "normalization": args.normalization,
        "pixel_mean": context["pixels"]["mean"],
        "pixel_std": context["pixels"]["std"],
        "batch_norm": context["backbone"]["batch_norm"],
        "feature_cache": cached,
        "rotation_step": args.rotation_step if cached else None,  # the grid of cached views; none without a cache
    }


def write_report(args, records: list[dict], context: dict) -> dict:
    """Writes results.json, results.md, epochs.csv, accuracy_per_epoch.png, clip_score_lambda.png and, with
    `min_synthetic_score_sweep`, accuracy_vs_min_synthetic_score.png."""
    trials = context["trials"]
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    recorded = trials[0].splits.recorded
    skipped: Counter = Counter()
    for trial in trials:
        skipped.update(trial.splits.skipped)
    described = [
        {
            "seed": trial.seed,
            "name": trial.location.name,
            "fingerprint": trial.splits.augmented._fingerprint,
            "generation": {
                key: trial.splits.recorded["generation"].get(key) for key in ("method", "seed", "num_prompts")
            },
            "test_set": trial.splits.description,
            "draw": trial.splits.draw,
            "training": training_counts(trial.training, args.min_synthetic_score),
            "skipped": dict(trial.splits.skipped),
        }
        for trial in trials
    ]
    results = {
        "settings": asdict(args),
        "method": evaluated_method(args, recorded),
        "num_shots": recorded["source"]["num_shots"],
        "repeats": repeats_kind([r["trial"] for r in records], [r["classifier_seed"] for r in records]),
        "dataset": {"id": args.dataset, "revision": args.dataset_revision},
        "trials": described,
        "test_set": trials[0].splits.description,
        "backbone": context["backbone"],
        "recipe": context["recipe"],
        "image_size": context["image_size"],
        "evaluation_protocol": evaluation_protocol(args, context),
        "classes_without_test_images": context["classes_without_test_images"],
        "training": {name: sum(trial["training"][name] for trial in described) for name in described[0]["training"]},
        "skipped": dict(skipped),
        "versions": _versions(),
        "per_classifier": [
            {
                "trial": record["trial"],
                "classifier_seed": record["classifier_seed"],
                "arm": record["arm"],
                "synthetic_probability": record["synthetic_probability"],
                "min_synthetic_score": record["min_synthetic_score"],
                "synthetic_fraction_drawn": record["synthetic_fraction_drawn"],
                **record["selected"],
                "test_balanced_accuracy_per_epoch": [epoch["test_balanced_accuracy"] for epoch in record["history"]],
            }
            for record in records
        ],
        "aggregate": aggregate(records),
        "optimistic": args.select == "best_test_epoch",
    }
    if args.min_synthetic_score_sweep:
        kept = {t: sum(int(trial.training.keeps(t).sum()) for trial in trials) for t in args.min_synthetic_score_sweep}
        results["min_synthetic_score_sweep"] = sweep_table(records, kept, results["training"]["synthetic_images"])
        results["min_synthetic_score_sweep_choice"] = threshold_chosen_on_validation(records, list(kept))
    results["tests"] = adjust_for_multiplicity(printed_differences(results))
    if context.get("diversity"):
        results["diversity"] = context["diversity"]
    write_json_atomically(output_dir / "results.json", results)
    with atomic_output(output_dir / "results.md") as temporary:
        temporary.write_text(results_markdown(results), encoding="utf-8")
    write_epochs_csv(output_dir / "epochs.csv", records)
    title = f"{results['method']}, {results['num_shots']}-shot, {public_path(args.backbone)}"  # published too
    plot_accuracy_per_epoch(output_dir / "accuracy_per_epoch.png", records, title)
    if args.min_synthetic_score_sweep:
        threshold = args.min_synthetic_score
        plot_accuracy_vs_min_synthetic_score(
            output_dir / "accuracy_vs_min_synthetic_score.png",
            results["min_synthetic_score_sweep"],
            results["aggregate"],
            "augmented" + (at_or_above(threshold) or ", all synthetic images"),
            results["repeats"],
            title,
        )
    scores, scales = [], []
    for trial in trials:
        columns = trial.splits.augmented.select_columns(["is_synthetic", "clip_score", "ip_adapter_scale"]).to_dict()
        scores += [score for score, synthetic in zip(columns["clip_score"], columns["is_synthetic"]) if not synthetic]
        scales += [
            scale for scale, synthetic in zip(columns["ip_adapter_scale"], columns["is_synthetic"]) if synthetic
        ]
    plot_score_histograms(output_dir / "clip_score_lambda.png", scores, scales)
    logger.info("The report is in %s (results.md)", output_dir)
    return results
