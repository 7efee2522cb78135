"""The evaluation report: results.json, results.md, epochs.csv and plots for one run, and the comparison of
several runs (the paper's Table 2 and Table 3 layouts and its accuracy-vs-shots figure)."""

import csv
import importlib.metadata
import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline_dalda.atomic import atomic_output, create_output_dir, write_json_atomically

from ..card import method_label
from .arguments import REFERENCE_METHOD, CompareArguments, EvaluateArguments
from .diversity import diversity_table
from .metrics import mean_and_std, paired_difference, select_epochs


if TYPE_CHECKING:
    from .run import PreparedTraining  # run.py imports this module


logger = logging.getLogger(__name__)

OPTIMISTIC = "optimistic: the epoch was chosen on the test set"
_MACHINE_SETTINGS = ("output_dir", "cache_dir", "device", "num_workers", "feature_batch_size")
"""Settings of the machine that ran the evaluation, left out of results.md (a file meant to be shared)."""
_PACKAGES = ("dalda", "torch", "transformers", "datasets", "diffusers", "huggingface_hub")


def _versions() -> dict[str, str | None]:
    versions = {}
    for package in _PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


Unit = tuple[int, int]
"""A classifier's key: (trial seed, classifier seed). Its augmented and real-only arms form one pair."""
SWEEP_ARM = "min_synthetic_score_sweep"
"""The arm of the augmented classifiers of `min_synthetic_score_sweep`, one per threshold (their records'
`min_synthetic_score`); reported in their own table, left out of `aggregate` and of `dalda compare`."""
_METRICS = ("balanced_accuracy", "top1")


def repeats_kind(trial_seeds: list[int], classifier_seeds: list[int]) -> str:
    """What the classifiers of a report redraw: 'trials' (each its own shots, synthetic images and classifier),
    'classifier repeats' (one draw of shots, several classifier seeds) or 'one trial'."""
    if len(set(trial_seeds)) > 1:
        return "trials"
    return "classifier repeats" if len(set(classifier_seeds)) > 1 else "one trial"


def _selected(records: list[dict], arm: str, threshold: float | None = None) -> dict[Unit, dict]:
    """The reported epoch of each classifier of `arm` (of the sweep's: at `threshold`), by (trial, classifier seed)."""
    return {
        (record["trial"], record["classifier_seed"]): record["selected"]
        for record in records
        if record["arm"] == arm and (arm != SWEEP_ARM or record["min_synthetic_score"] == threshold)
    }


def _summaries(selected: dict[Unit, dict]) -> dict[str, dict]:
    """Mean ± std of each figure over the classifiers."""
    return {metric: mean_and_std([record[f"test_{metric}"] for record in selected.values()]) for metric in _METRICS}


def _paired(treated: dict[Unit, dict], baseline: dict[Unit, dict]) -> dict[str, dict]:
    """The paired difference treated − baseline of each figure over the (trial, classifier seed) pairs both ran."""
    units = sorted(treated.keys() & baseline.keys())
    return {
        metric: paired_difference(
            [treated[unit][f"test_{metric}"] for unit in units], [baseline[unit][f"test_{metric}"] for unit in units]
        )
        for metric in _METRICS
    }


def aggregate(records: list[dict]) -> dict[str, Any]:
    """Mean ± std per arm over its classifiers, and the paired difference augmented − real-only over the
    (trial, classifier seed) pairs both arms ran (the sweep's arms have their own table: [`sweep_table`])."""
    by_arm = {arm: _selected(records, arm) for arm in ("augmented", "real_only")}
    figures: dict[str, Any] = {arm: _summaries(selected) for arm, selected in by_arm.items() if selected}
    if by_arm["augmented"] and by_arm["real_only"]:
        figures["difference"] = _paired(by_arm["augmented"], by_arm["real_only"])
    return figures


def sweep_table(records: list[dict], kept: dict[float, int], total: int) -> list[dict]:
    """Per threshold of `min_synthetic_score_sweep`, ascending: the synthetic images it keeps (over the trials, of
    `total`), mean ± std of its classifiers' figures and, where the real-only arm ran, the paired difference
    threshold arm − real only."""
    real_only = _selected(records, "real_only")
    rows = []
    for threshold in sorted(kept):
        selected = _selected(records, SWEEP_ARM, threshold)
        row = {
            "min_synthetic_score": threshold,
            "synthetic_images_kept": kept[threshold],
            "synthetic_images": total,
            "kept_share": kept[threshold] / total if total else 0.0,
            **_summaries(selected),
        }
        if real_only:
            row["difference"] = _paired(selected, real_only)
        rows.append(row)
    return rows


def _figure(summary: dict) -> str:
    return f"{summary['mean']:.4f}" + (f" ± {summary['std']:.4f}" if summary["std"] is not None else "")


def _difference(summary: dict) -> str:
    text = f"{summary['mean']:+.4f}"
    if summary["ci95"] is not None:
        text += f" [95% CI {summary['ci95'][0]:+.4f}, {summary['ci95'][1]:+.4f}]"
    if summary["p_value"] is not None:
        text += f", p = {summary['p_value']:.3g}"
    return text


def _seeds(seeds: list[int]) -> str:
    return ", ".join(map(str, seeds))


def repeats_sentence(kind: str, trial_seeds: list[int], classifier_seeds: list[int]) -> str:
    """What the spread and the interval of a report measure, in words."""
    trials, classifiers = sorted(set(trial_seeds)), sorted(set(classifier_seeds))
    if kind == "trials":
        return (
            f"{len(trials)} trials (seeds {_seeds(trials)}), each its own draw of shots, synthetic images, test set "
            "and classifier, as the paper's. Mean ± sample standard deviation over trials; the interval and the "
            "p-value are Student's t on the paired differences over trials."
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
    """The report a user reads: the side-by-side table first, then per classifier, the data and the settings."""
    settings, test = results["settings"], results["test_set"]
    figures = results["aggregate"]
    selection = {
        "last_epoch": "the last epoch",
        "best_validation_epoch": "each classifier's best epoch on the validation set",
        "best_test_epoch": f"one epoch for every trial, the best by their mean test accuracy (**{OPTIMISTIC}**, the "
        "released code's rule)",
    }[settings["select"]]
    batch_norm = results["backbone"].get("batch_norm")
    lines = [
        f"# Few-shot evaluation of `{settings['dataset']}`",
        "",
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
            f"| real only | {_figure(figures['real_only']['balanced_accuracy'])} | "
            f"{_figure(figures['real_only']['top1'])} |"
        )
    trained_on = "real only" if settings["synthetic_probability"] == 0 else "real + synthetic"
    lines.append(
        f"| {trained_on} ({results['method']}, p = {settings['synthetic_probability']}) | "
        f"{_figure(figures['augmented']['balanced_accuracy'])} | {_figure(figures['augmented']['top1'])} |"
    )
    if "difference" in figures:
        lines.append(
            f"| difference, {_PAIRED.get(results['repeats'], 'one trial')} | "
            f"{_difference(figures['difference']['balanced_accuracy'])} | "
            f"{_difference(figures['difference']['top1'])} |"
        )
    classifiers = results["per_classifier"]
    lines += [
        "",
        repeats_sentence(
            results["repeats"], [c["trial"] for c in classifiers], [c["classifier_seed"] for c in classifiers]
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
    if results.get("diversity"):
        lines += ["", "## Diversity", "", results["diversity"]["table"]]
    shared = {name: value for name, value in settings.items() if name not in _MACHINE_SETTINGS}
    lines += ["", "## Settings", "", "```json", json.dumps(shared, indent=2), "```", ""]
    return "\n".join(lines)


_PAIRED = {"trials": "paired over trials", "classifier repeats": "paired over classifier repeats"}


def arm_in_words(arm: str, threshold: float | None) -> str:
    """A classifier's arm in words, with the synthetic-score threshold of the synthetic images it drew from."""
    return ("augmented" if arm == SWEEP_ARM else arm.replace("_", " ")) + _at_or_above(threshold)


def _at_or_above(threshold: float | None) -> str:
    return f", synthetic score ≥ {threshold}" if threshold is not None else ""


def sweep_markdown(results: dict) -> list[str]:
    """The lines of the sweep's table: balanced accuracy against the synthetic-score threshold."""
    settings = results["settings"]
    lines = [
        "",
        "## Accuracy against `min_synthetic_score`",
        "",
        f"The augmented classifier (p = {settings['synthetic_probability']}) trained on only the synthetic images "
        "whose own CLIPScore (`synthetic_clip_score`) is at or above each threshold, with the real-only arm's real "
        "draws, views and initialisation; a real image with none left is never replaced. Figure: "
        "accuracy_vs_min_synthetic_score.png.",
        "",
        "| min_synthetic_score | synthetic images kept | balanced accuracy | difference to real only, "
        f"{_PAIRED.get(results['repeats'], 'one trial')} |",
        "| --- | --- | --- | --- |",
    ]
    for row in results["min_synthetic_score_sweep"]:
        difference = _difference(row["difference"]["balanced_accuracy"]) if "difference" in row else "–"
        lines.append(
            f"| {row['min_synthetic_score']} | {row['synthetic_images_kept']} of {row['synthetic_images']} "
            f"({row['kept_share']:.1%}) | {_figure(row['balanced_accuracy'])} | {difference} |"
        )
    return lines


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


def _pyplot():
    """matplotlib's pyplot on the file-only backend (imported on first use: the reports need no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_png(figure, path: Path) -> None:
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120)
    _pyplot().close(figure)


def plot_accuracy_per_epoch(path: Path, trials: list[dict], title: str) -> None:
    """Test balanced accuracy per epoch, real-only vs augmented: the mean over classifiers and its min–max band."""
    plt = _pyplot()
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
    _save_png(figure, path)


def plot_accuracy_vs_min_synthetic_score(
    path: Path, rows: list[dict], figures: dict[str, Any], augmented_label: str, repeats: str, title: str
) -> None:
    """Balanced accuracy (mean ± std over the classifiers, which `repeats` names) against the sweep's synthetic-score
    threshold (`rows` of [`sweep_table`]), each point marked with the share of synthetic images it keeps; the
    real-only and the main augmented arms' means (`figures` of [`aggregate`]) as horizontal lines."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6.4, 4))
    thresholds = [row["min_synthetic_score"] for row in rows]
    means = [row["balanced_accuracy"]["mean"] for row in rows]
    spreads = [row["balanced_accuracy"]["std"] or 0 for row in rows]
    spread = {"trials": " (mean ± std over trials)", "classifier repeats": " (mean ± std over classifier repeats)"}
    axes.errorbar(thresholds, means, yerr=spreads, marker="o", capsize=3, color="tab:blue",
                  label="augmented, synthetic score ≥ threshold" + spread.get(repeats, ""))
    for row, threshold, mean in zip(rows, thresholds, means):
        axes.annotate(f"{row['kept_share']:.0%} kept", (threshold, mean), textcoords="offset points", xytext=(0, 6),
                      ha="center", fontsize="small")
    for arm, label, colour, style in (
        ("real_only", "real only", "tab:gray", "--"),
        ("augmented", augmented_label, "tab:orange", ":"),
    ):
        if arm in figures:
            axes.axhline(figures[arm]["balanced_accuracy"]["mean"], color=colour, linestyle=style, label=label)
    axes.set(xlabel="min_synthetic_score (the synthetic image's own CLIPScore)", ylabel="test balanced accuracy",
             title=title)
    axes.legend(fontsize="small")
    _save_png(figure, path)


def plot_score_histograms(path: Path, clip_scores: list, scales: list) -> None:
    """The augmented dataset's CLIPScores (real images) and λ's (synthetic images), as the paper's Fig. 4."""
    plt = _pyplot()
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
    _save_png(figure, path)


def evaluated_method(args: EvaluateArguments, recorded: dict) -> str:
    """The method's name in the tables: `method_label`, else how the dataset was made, with the augmented arm's
    `min_synthetic_score` where one is set (so that `dalda compare` keeps a filtered run apart from an unfiltered
    one)."""
    if args.method_label:
        return args.method_label
    return method_label(recorded) + _at_or_above(args.min_synthetic_score)


def training_counts(training: "PreparedTraining", threshold: float | None) -> dict[str, int]:
    """A trial's training images: real, synthetic and, with a synthetic-score threshold, the synthetic images at or
    above it."""
    counts = {"real_images": training.pool.num_reals, "synthetic_images": training.pool.num_synthetic}
    if threshold is not None:
        counts["synthetic_images_kept"] = int(training.keeps(threshold).sum())
    return counts


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
    if context.get("diversity"):
        results["diversity"] = context["diversity"]
    write_json_atomically(output_dir / "results.json", results)
    with atomic_output(output_dir / "results.md") as temporary:
        temporary.write_text(results_markdown(results), encoding="utf-8")
    write_epochs_csv(output_dir / "epochs.csv", records)
    title = f"{results['method']}, {results['num_shots']}-shot, {args.backbone}"
    plot_accuracy_per_epoch(output_dir / "accuracy_per_epoch.png", records, title)
    if args.min_synthetic_score_sweep:
        threshold = args.min_synthetic_score
        plot_accuracy_vs_min_synthetic_score(
            output_dir / "accuracy_vs_min_synthetic_score.png",
            results["min_synthetic_score_sweep"],
            results["aggregate"],
            "augmented, " + (f"synthetic score ≥ {threshold}" if threshold is not None else "all synthetic images"),
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


def _short(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1]


_COMPARABLE = (
    "select",
    "epochs",
    "iterations_per_epoch",
    "batch_size",
    "image_size",
    "normalization",
    "batch_norm",
    "synthetic_probability",
)
"""The evaluation settings that runs put in one column must share."""
REAL_ONLY = "Real only"


@dataclass
class PooledMethod:
    """One method's classifiers in one table cell, pooled over the runs that evaluated them."""

    arms: dict[str, dict[Unit, dict]] = field(default_factory=lambda: {"augmented": {}, "real_only": {}})
    """Per arm, each (trial, classifier seed)'s record from results.json."""
    draws: dict[int, dict] = field(default_factory=dict)
    """Per trial seed, what the trial drew (shots, test set; see `EvaluationSplits.draw`)."""
    runs: list[str] = field(default_factory=list)

    def values(self, arm: str, select: str) -> dict[Unit, float]:
        """Each classifier's reported balanced accuracy; under the released code's `best_test_epoch` rule, at the
        one epoch that is best by the mean over every pooled trial."""
        records = self.arms[arm]
        if select != "best_test_epoch":
            return {unit: record["test_balanced_accuracy"] for unit, record in records.items()}
        curves = [
            [{"test_balanced_accuracy": value} for value in record["test_balanced_accuracy_per_epoch"]]
            for record in records.values()
        ]
        chosen = select_epochs(curves, select)
        return {unit: record["test_balanced_accuracy"] for unit, record in zip(records, chosen)}


@dataclass
class Comparison:
    """Several evaluation runs, by table cell."""

    cells: dict[tuple[str, str], dict[int, dict[str, dict]]]
    """`{(dataset, backbone): {shots: {method: balanced-accuracy summary}}}`; the real-only baseline is the method
    "Real only", from the same draws as the column's methods."""
    tests: dict[tuple[str, str], dict[int, list[tuple[str, dict]]]]
    """The paper's Table 3: per cell, (method, the paired difference reference − method over trials)."""
    repeats: dict[tuple[str, str], dict[int, str]]
    """Per cell, what its ± and tests are over, in words."""
    reference: str
    diversity: list[tuple[str, dict]]
    """(method and dataset, diversity figures) of the runs that measured diversity."""
    optimistic: bool
    """Whether the runs chose their epoch on the test set."""


def _read_results(run: str) -> dict:
    path = Path(run, "results.json")
    if not path.is_file():
        raise ValueError(f"{run!r} holds no results.json; give folders written by `dalda evaluate`.")
    results = json.loads(path.read_text(encoding="utf-8"))
    if "per_classifier" not in results:
        raise ValueError(f"{run!r} was written by an older `dalda evaluate`, without its trials; evaluate it again.")
    return results


def _pool(run: str, results: dict, pooled: PooledMethod, where: str) -> None:
    """Adds a run's classifiers and draws to its method's pool; a trial evaluated twice is an error."""
    for record in results["per_classifier"]:
        if record["arm"] == SWEEP_ARM:
            continue  # the run's own accuracy-against-threshold table: the method is its augmented arm
        unit = (record["trial"], record["classifier_seed"])
        arm = pooled.arms[record["arm"]]
        if unit in arm:
            raise ValueError(
                f"{(pooled.runs or [run])[0]!r} and {run!r} both evaluate trial {unit[0]} (classifier seed {unit[1]}) "
                f"of {where}; give each trial once, or `method_label`s that tell the runs apart."
            )
        arm[unit] = record
    for trial in results["trials"]:
        pooled.draws[trial["seed"]] = trial["draw"]
    pooled.runs.append(run)


def _check_same_draws(column: tuple[str, str], shots: int, methods: dict[str, PooledMethod]) -> None:
    """Every method of a column must have been evaluated on the same trials, each drawn alike (source, split,
    selection protocol and seed, the very shots and test rows): else its figures would not compare."""
    (first, reference), *others = methods.items()
    for method, pooled in others:
        if pooled.arms["augmented"].keys() != reference.arms["augmented"].keys():
            raise ValueError(
                f"{first} and {method} on {column[0]} with {column[1]} at {shots} shots were evaluated on different "
                f"trials ({sorted(reference.arms['augmented'])} and {sorted(pooled.arms['augmented'])}, as (trial, "
                "classifier seed)); compare methods evaluated on the same trials."
            )
        for seed, draw in pooled.draws.items():
            differing = sorted(name for name in draw.keys() | reference.draws[seed].keys()
                               if draw.get(name) != reference.draws[seed].get(name))
            if differing:
                raise ValueError(
                    f"{first} ({reference.runs[0]!r}) and {method} ({pooled.runs[0]!r}) on {column[0]} with "
                    f"{column[1]} at {shots} shots drew trial {seed} differently ({', '.join(differing)}); a column "
                    "compares methods on the same draws of shots and test images: augment every method with the "
                    "same source, `shot_selection` and seeds."
                )


def load_comparison(runs: list[str], reference_method: str = REFERENCE_METHOD) -> Comparison:
    """Reads the runs' results.json and pools their classifiers per cell (dataset and backbone, shots, method).

    Runs of one column must share the evaluation protocol (model selection, schedule, normalisation, batch norm) and,
    method by method, the trials and their draws; the real-only baseline comes from those same draws."""
    comparison = Comparison({}, {}, {}, reference_method, [], False)
    protocol: dict[tuple, tuple[str, dict]] = {}
    pools: dict[tuple[str, str], dict[int, dict[str, PooledMethod]]] = {}
    select: dict[tuple, str] = {}
    for run in runs:
        results = _read_results(run)
        column = (_short(results["test_set"]["source_dataset"]), _short(results["settings"]["backbone"]))
        shots, method = results["num_shots"], results["method"]
        settings = {name: results["settings"].get(name) for name in _COMPARABLE}
        first_run, first = protocol.setdefault((*column, shots), (run, settings))
        differing = sorted(name for name in settings if settings[name] != first[name])
        if differing:
            raise ValueError(
                f"{first_run!r} and {run!r} evaluate {column[0]} with {column[1]} at {shots} shots with different "
                f"{', '.join(differing)}; compare runs made the same way."
            )
        select[(*column, shots)] = settings["select"]
        pooled = pools.setdefault(column, {}).setdefault(shots, {}).setdefault(method, PooledMethod())
        _pool(run, results, pooled, f"{method} on {column[0]} with {column[1]} at {shots} shots")
        comparison.optimistic |= results["optimistic"]
        if results.get("diversity"):
            comparison.diversity.append((f"{method}, {column[0]}, {shots}-shot", results["diversity"]))

    for column, by_shots in pools.items():
        for shots, methods in by_shots.items():
            _check_same_draws(column, shots, methods)
            rule = select[(*column, shots)]
            values = {method: pooled.values("augmented", rule) for method, pooled in methods.items()}
            units = sorted(next(iter(methods.values())).arms["augmented"])
            # The real-only baseline from a method that trained it on every trial (they share the draws).
            baseline = next((m for m in methods.values() if sorted(m.arms["real_only"]) == units), None)
            if baseline is not None:
                values = {REAL_ONLY: baseline.values("real_only", rule), **values}
            comparison.cells.setdefault(column, {})[shots] = {
                method: mean_and_std([by_unit[unit] for unit in sorted(by_unit)]) for method, by_unit in values.items()
            }
            kind = repeats_kind([unit[0] for unit in units], [unit[1] for unit in units])
            comparison.repeats.setdefault(column, {})[shots] = kind
            if reference_method in values and len(values) > 1:
                reference = values[reference_method]
                comparison.tests.setdefault(column, {})[shots] = [
                    (method, paired_difference([reference[u] for u in units], [by_unit[u] for u in units]))
                    for method, by_unit in values.items()
                    if method != reference_method
                ]
    return comparison


def comparison_markdown(comparison: Comparison) -> str:
    """The paper's Table 2 layout per number of shots: one row per method, one column per dataset and backbone,
    mean balanced accuracy ± std over trials, the best of each column in bold; then the paper's Table 3 (each method
    against the reference method, paired over trials) and Table 1 (diversity) where measured."""
    table = comparison.cells
    lines = ["# Few-shot balanced accuracy", ""]
    if comparison.optimistic:
        lines += [f"**{OPTIMISTIC}** (`select best_test_epoch`, the released code's rule).", ""]
    for shots in sorted({shots for cells in table.values() for shots in cells}):
        columns = [column for column in table if shots in table[column]]
        methods = list(dict.fromkeys([m for c in columns for m in table[c][shots]]))
        lines += [
            f"## {shots}-shot",
            "",
            "| method | " + " | ".join(f"{d} {b}" for d, b in columns) + " |",
            "| --- |" + " --- |" * len(columns),
        ]
        best = {column: max(summary["mean"] for summary in table[column][shots].values()) for column in columns}
        for method in methods:
            cells = []
            for column in columns:
                summary = table[column][shots].get(method)
                if summary is None:
                    cells.append("–")
                    continue
                text = _figure(summary)
                cells.append(f"**{text}**" if summary["mean"] == best[column] else text)
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        kinds = {comparison.repeats[column][shots] for column in columns}
        lines += ["", "Mean ± std over " + " and ".join(sorted(_OVER[kind] for kind in kinds)) + ".", ""]
        tested = [column for column in columns if shots in comparison.tests.get(column, {})]
        for column in tested:
            lines += [
                f"### {shots}-shot, {column[0]} {column[1]}: {comparison.reference} against each method",
                "",
                f"| method | balanced accuracy | {comparison.reference} − method | p (paired t-test) |",
                "| --- | --- | --- | --- |",
            ]
            for method, difference in comparison.tests[column][shots]:
                interval = (
                    f" [95% CI {difference['ci95'][0]:+.4f}, {difference['ci95'][1]:+.4f}]"
                    if difference["ci95"] is not None
                    else ""
                )
                p_value = f"{difference['p_value']:.3g}" if difference["p_value"] is not None else "–"
                lines.append(
                    f"| {method} | {_figure(table[column][shots][method])} | {difference['mean']:+.4f}{interval} | "
                    f"{p_value} |"
                )
            pairs = comparison.tests[column][shots][0][1]["n"]
            lines += ["", f"Paired over {_OVER[comparison.repeats[column][shots]]} (n = {pairs}).", ""]
    if comparison.diversity:
        lines += ["## Diversity", "", diversity_table(comparison.diversity), ""]
    return "\n".join(lines)


_OVER = {
    "trials": "trials (each its own draw of shots, synthetic images and classifier)",
    "classifier repeats": "classifier repeats on one draw of shots (optimiser noise only, not trials)",
    "one trial": "one trial (no spread)",
}


def plot_accuracy_vs_shots(path: Path, table: dict[tuple[str, str], dict[int, dict[str, dict]]]) -> None:
    """Balanced accuracy against shots, one panel per dataset and backbone, one line per method (paper's Fig. 7)."""
    plt = _pyplot()
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
                linestyle="--" if method == "Real only" else "-",
            )
        axes.set(xscale="log", xlabel="shots per class", ylabel="balanced accuracy", title=f"{dataset}, {backbone}")
        axes.set_xticks(shots, [str(s) for s in shots])
        axes.legend(fontsize="small")
    _save_png(figure, path)


def compare_runs(args: CompareArguments) -> str:
    """Writes comparison.md and accuracy_vs_shots.png for several evaluation runs; returns the markdown."""
    output_dir = create_output_dir(args.output_dir)
    comparison = load_comparison(args.runs, args.reference_method)
    markdown = comparison_markdown(comparison)
    with atomic_output(output_dir / "comparison.md") as temporary:
        temporary.write_text(markdown, encoding="utf-8")
    plot_accuracy_vs_shots(output_dir / "accuracy_vs_shots.png", comparison.cells)
    return markdown
