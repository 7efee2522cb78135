"""The evaluation report: results.json, results.md, epochs.csv and plots for one run, and the comparison of
several runs (the paper's Table 2 layout and its accuracy-vs-shots figure)."""

import csv
import importlib.metadata
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline_dalda.atomic import atomic_output, create_output_dir, write_json_atomically

from ..card import method_label
from .arguments import CompareArguments
from .diversity import diversity_table
from .metrics import mean_and_std, paired_difference


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


def aggregate(trials: list[dict]) -> dict[str, Any]:
    """Mean ± std over seeds per arm, and the paired difference augmented − real-only over the seeds both ran."""
    figures: dict[str, Any] = {}
    by_arm: dict[str, dict[int, dict]] = {}
    for trial in trials:
        by_arm.setdefault(trial["arm"], {})[trial["seed"]] = trial["selected"]
    for arm, selected in by_arm.items():
        figures[arm] = {
            metric: mean_and_std([record[f"test_{metric}"] for record in selected.values()])
            for metric in ("balanced_accuracy", "top1")
        }
    if {"augmented", "real_only"} <= by_arm.keys():
        seeds = sorted(by_arm["augmented"].keys() & by_arm["real_only"].keys())
        figures["difference"] = {
            metric: paired_difference(
                [by_arm["augmented"][seed][f"test_{metric}"] for seed in seeds],
                [by_arm["real_only"][seed][f"test_{metric}"] for seed in seeds],
            )
            for metric in ("balanced_accuracy", "top1")
        }
    return figures


def _figure(summary: dict) -> str:
    return f"{summary['mean']:.4f}" + (f" ± {summary['std']:.4f}" if summary["std"] is not None else "")


def _difference(summary: dict) -> str:
    text = f"{summary['mean']:+.4f}"
    if summary["ci95"] is not None:
        text += f" [95% CI {summary['ci95'][0]:+.4f}, {summary['ci95'][1]:+.4f}]"
    if summary["p_value"] is not None:
        text += f", p = {summary['p_value']:.3g}"
    return text


def results_markdown(results: dict) -> str:
    """The report a user reads: the side-by-side table first, then per seed, skipped rows and settings."""
    settings, test = results["settings"], results["test_set"]
    figures = results["aggregate"]
    selection = {
        "last_epoch": "the last epoch",
        "best_validation_epoch": "the best epoch on the validation set",
        "best_test_epoch": f"the best epoch on the test set (**{OPTIMISTIC}**, as in the released code)",
    }[settings["select"]]
    lines = [
        f"# Few-shot evaluation of `{settings['dataset']}`",
        "",
        f"{results['method']}, {results['num_shots']} shot(s) per class, backbone `{settings['backbone']}`, "
        f"{len(settings['seeds'])} seed(s) ({', '.join(map(str, settings['seeds']))}), {settings['epochs']} epochs × "
        f"{settings['iterations_per_epoch']} iterations × batch {settings['batch_size']}. Test set: "
        f"{test['protocol']} protocol, {test['test_images']} images of split `{test['split']}` of "
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
            f"| difference, paired over seeds | {_difference(figures['difference']['balanced_accuracy'])} | "
            f"{_difference(figures['difference']['top1'])} |"
        )
    lines += [
        "",
        "Mean ± sample standard deviation over seeds; the interval is Student's t on the paired differences.",
        "",
        "## Per seed",
        "",
        "| seed | training data | epoch | balanced accuracy | top-1 | synthetic share of draws |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for trial in results["per_seed"]:
        lines.append(
            f"| {trial['seed']} | {trial['arm'].replace('_', ' ')} | {trial['epoch']} | "
            f"{trial['test_balanced_accuracy']:.4f} | {trial['test_top1']:.4f} | "
            f"{trial['synthetic_fraction_drawn']:.3f} |"
        )
    lines += [
        "",
        "## Data",
        "",
        f"Training: {results['training']['real_images']} real images and {results['training']['synthetic_images']} "
        f"synthetic images. Test: {test['test_images']} images; validation: {test['validation_images']}.",
        "",
    ]
    skipped = {reason: count for reason, count in results["skipped"].items() if count}
    lines.append("Skipped: " + (", ".join(f"{count} {reason}" for reason, count in skipped.items()) or "none") + ".")
    if results.get("diversity"):
        lines += ["", "## Diversity", "", results["diversity"]["table"]]
    shared = {name: value for name, value in settings.items() if name not in _MACHINE_SETTINGS}
    lines += ["", "## Settings", "", "```json", json.dumps(shared, indent=2), "```", ""]
    return "\n".join(lines)


def report_summary(output_dir: str | Path) -> str:
    """The head of a written results.md (the side-by-side table), for a terminal."""
    report = Path(output_dir, "results.md")
    return report.read_text(encoding="utf-8").split("\n## Per seed")[0] + f"\nThe whole report: {report}"


def write_epochs_csv(path: Path, trials: list[dict]) -> None:
    """One row per (arm, seed, epoch) with every recorded metric."""
    rows = [{"arm": trial["arm"], "seed": trial["seed"], **record} for trial in trials for record in trial["history"]]
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
    """Test balanced accuracy per epoch, real-only vs augmented: the mean over seeds and its min–max band."""
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


def write_report(args, trials: list[dict], context: dict) -> dict:
    """Writes results.json, results.md, epochs.csv, accuracy_per_epoch.png and clip_score_lambda.png."""
    splits, training = context["splits"], context["training"]
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    recorded = splits.recorded
    results = {
        "settings": asdict(args),
        "method": args.method_label or method_label(recorded),
        "num_shots": recorded["source"]["num_shots"],
        "dataset": {
            "id": args.dataset,
            "revision": args.dataset_revision,
            "fingerprint": splits.augmented._fingerprint,
            "generation": {key: recorded["generation"].get(key) for key in ("method", "seed", "num_prompts")},
        },
        "test_set": splits.description,
        "backbone": context["backbone"],
        "recipe": context["recipe"],
        "image_size": context["image_size"],
        "training": {
            "real_images": training.pool.num_reals,
            "synthetic_images": int(training.pool.synthetic_counts.sum()),
        },
        "skipped": dict(splits.skipped),
        "versions": _versions(),
        "per_seed": [
            {
                "seed": trial["seed"],
                "arm": trial["arm"],
                "synthetic_probability": trial["synthetic_probability"],
                "synthetic_fraction_drawn": trial["synthetic_fraction_drawn"],
                **trial["selected"],
            }
            for trial in trials
        ],
        "aggregate": aggregate(trials),
        "optimistic": args.select == "best_test_epoch",
    }
    if context.get("diversity"):
        results["diversity"] = context["diversity"]
    write_json_atomically(output_dir / "results.json", results)
    with atomic_output(output_dir / "results.md") as temporary:
        temporary.write_text(results_markdown(results), encoding="utf-8")
    write_epochs_csv(output_dir / "epochs.csv", trials)
    plot_accuracy_per_epoch(
        output_dir / "accuracy_per_epoch.png",
        trials,
        f"{results['method']}, {results['num_shots']}-shot, {args.backbone}",
    )
    columns = splits.augmented.select_columns(["is_synthetic", "clip_score", "ip_adapter_scale"]).to_dict()
    plot_score_histograms(
        output_dir / "clip_score_lambda.png",
        [score for score, synthetic in zip(columns["clip_score"], columns["is_synthetic"]) if not synthetic],
        [scale for scale, synthetic in zip(columns["ip_adapter_scale"], columns["is_synthetic"]) if synthetic],
    )
    logger.info("The report is in %s (results.md)", output_dir)
    return results


def _short(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1]


_COMPARABLE = ("select", "seeds", "epochs", "iterations_per_epoch", "batch_size", "image_size", "normalization")


@dataclass
class Comparison:
    """Several evaluation runs, by table cell."""

    cells: dict[tuple[str, str], dict[int, dict[str, dict]]]
    """`{(dataset, backbone): {shots: {method: balanced-accuracy summary}}}`; the real-only baseline is the method
    "Real only", from the first run of its cell's column."""
    diversity: list[tuple[str, dict]]
    """(method and dataset, diversity figures) of the runs that measured diversity."""
    optimistic: bool
    """Whether the runs chose their epoch on the test set."""


def load_comparison(runs: list[str]) -> Comparison:
    """Reads the runs' results.json. Runs of one column must share the protocol (model selection, seeds, schedule,
    test set), or their figures would not compare; two runs of one cell are an error."""
    comparison = Comparison({}, [], False)
    origin: dict[tuple, str] = {}
    protocol: dict[tuple, tuple[str, dict]] = {}
    for run in runs:
        path = Path(run, "results.json")
        if not path.is_file():
            raise ValueError(f"{run!r} holds no results.json; give folders written by `dalda evaluate`.")
        results = json.loads(path.read_text(encoding="utf-8"))
        column = (_short(results["test_set"]["source_dataset"]), _short(results["settings"]["backbone"]))
        shots, method = results["num_shots"], results["method"]
        settings = {name: results["settings"][name] for name in _COMPARABLE}
        settings.update(test_set=results["test_set"]["protocol"], test_images=results["test_set"]["test_images"])
        first_run, first = protocol.setdefault((*column, shots), (run, settings))
        differing = sorted(name for name in settings if settings[name] != first[name])
        if differing:
            raise ValueError(
                f"{first_run!r} and {run!r} evaluate {column[0]} with {column[1]} at {shots} shots with different "
                f"{', '.join(differing)}; compare runs made the same way."
            )
        if (*column, shots, method) in origin:
            raise ValueError(
                f"{origin[(*column, shots, method)]!r} and {run!r} both evaluate {method} on {column[0]} with "
                f"{column[1]} at {shots} shots; give `method_label`s that tell them apart."
            )
        origin[(*column, shots, method)] = run
        comparison.optimistic |= results["optimistic"]
        cell = comparison.cells.setdefault(column, {}).setdefault(shots, {})
        cell[method] = results["aggregate"]["augmented"]["balanced_accuracy"]
        if "real_only" in results["aggregate"]:
            cell.setdefault("Real only", results["aggregate"]["real_only"]["balanced_accuracy"])
        if results.get("diversity"):
            comparison.diversity.append((f"{method}, {column[0]}, {shots}-shot", results["diversity"]))
    return comparison


def comparison_markdown(comparison: Comparison) -> str:
    """The paper's Table 2 layout per number of shots: one row per method, one column per dataset and backbone,
    mean balanced accuracy ± std over seeds, the best of each column in bold; then Table 1 (diversity) if measured."""
    table = comparison.cells
    lines = ["# Few-shot balanced accuracy", ""]
    if comparison.optimistic:
        lines += [f"**{OPTIMISTIC}** (`select best_test_epoch`, as the released code).", ""]
    for shots in sorted({shots for cells in table.values() for shots in cells}):
        columns = [column for column in table if shots in table[column]]
        methods = list(
            dict.fromkeys(["Real only"] + [m for c in columns for m in table[c][shots] if m != "Real only"])
        )
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
        lines.append("")
    if comparison.diversity:
        lines += ["## Diversity", "", diversity_table(comparison.diversity), ""]
    return "\n".join(lines)


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
    comparison = load_comparison(args.runs)
    markdown = comparison_markdown(comparison)
    with atomic_output(output_dir / "comparison.md") as temporary:
        temporary.write_text(markdown, encoding="utf-8")
    plot_accuracy_vs_shots(output_dir / "accuracy_vs_shots.png", comparison.cells)
    return markdown
