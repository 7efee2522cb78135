"""`dalda compare`: several evaluation runs side by side, as the paper's Table 2 (mean ± std per method and cell),
its Table 3 (each method against the reference method, paired over trials, with Holm-adjusted p-values) and its
Fig. 7 (accuracy against shots). Only runs made alike share a column: the same backbone (id, revision, weights) and
every setting that changes the figures."""

import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline_dalda.atomic import atomic_output, create_output_dir

from .arguments import REFERENCE_METHOD, CompareArguments
from .diversity import diversity_table
from .metrics import mean_and_std, paired_difference, select_epochs
from .plots import plot_accuracy_vs_shots
from .publish import check_hub_dataset, push_comparison
from .summary import (
    OPTIMISTIC,
    OVER,
    REAL_ONLY,
    SWEEP_ARM,
    Unit,
    adjust_for_multiplicity,
    format_figure,
    format_interval,
    format_sample,
    multiplicity_sentence,
    repeats_kind,
)


def _short(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1]



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
    backbones: dict[tuple[str, str], dict] = field(default_factory=dict)
    """Per cell, the backbone its runs share: id, Hub revision and fingerprint of its weights."""
    real_only_missing: dict[tuple[str, str], dict[int, str]] = field(default_factory=dict)
    """Per cell without the real-only baseline, why, in words (the table says it in place of the figure)."""

    def differences(self) -> list[dict]:
        """Every paired difference of Table 3, cell by cell."""
        return [d for by_shots in self.tests.values() for tests in by_shots.values() for _, d in tests]

    @property
    def num_tests(self) -> int:
        """How many p-values the comparison holds (m of the Holm adjustment)."""
        return sum(difference["p_value"] is not None for difference in self.differences())


def _read_results(run: str) -> dict:
    path = Path(run, "results.json")
    if not path.is_file():
        raise ValueError(f"{run!r} holds no results.json; give folders written by `dalda evaluate`.")
    results = json.loads(path.read_text(encoding="utf-8"))
    if not {"per_classifier", "evaluation_protocol"} <= results.keys() or "revision" not in results["backbone"]:
        raise ValueError(
            f"{run!r} was written by an older `dalda evaluate`, without the trials and settings `dalda compare` "
            "checks (the backbone's revision, the evaluation protocol); evaluate it again."
        )
    return results


def backbone_key(results: dict) -> dict:
    """The backbone a run used: its full id, Hub revision and the fingerprint of its weights (not its short name,
    which `microsoft/resnet-50` shares with any other `resnet-50`)."""
    backbone = results["backbone"]
    return {
        "backbone": backbone["id"],
        "backbone_revision": backbone["revision"],
        "backbone_fingerprint": backbone["fingerprint"],
    }


def comparable_settings(results: dict) -> dict:
    """What the runs of one column must share, at every number of shots (its curve in Fig. 7 joins them): the
    backbone ([`backbone_key`]), the source dataset and how its test images are chosen, and every other setting that
    changes the figures (results.json's `evaluation_protocol`)."""
    test = results["test_set"]
    return {
        **backbone_key(results),
        "source_dataset": test["source_dataset"],
        "test_set": test["protocol"],
        "test_split": test["split"],
        **results["evaluation_protocol"],
    }


def method_settings(results: dict) -> dict:
    """What the runs pooled into one method must share besides the column's settings: the synthetic images their
    augmented arm drew from (a `method_label` given by hand could otherwise pool a filtered run with an unfiltered
    one)."""
    return {"min_synthetic_score": results["settings"].get("min_synthetic_score")}


def _check_same_settings(first: tuple[str, dict], other: tuple[str, dict], where: str) -> None:
    """Refuses two runs of one column that differ in a comparable setting, naming each setting and both values."""
    (first_run, first_settings), (run, settings) = first, other
    differing = [name for name in dict.fromkeys([*first_settings, *settings])
                 if first_settings.get(name) != settings.get(name)]
    if differing:
        values = "; ".join(f"{name} {first_settings.get(name)!r} and {settings.get(name)!r}" for name in differing)
        raise ValueError(
            f"{first_run!r} and {run!r} evaluate {where} with different settings ({values}); a column compares runs "
            "made the same way: evaluate them alike."
        )


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

    Runs of one column must share, at every number of shots, the backbone, the test set's source and protocol and
    the evaluation protocol ([`comparable_settings`]); the runs pooled into one method, its synthetic-score threshold
    ([`method_settings`]); and, method by method, the trials and their draws; the real-only baseline comes from
    those same draws. Table 3's p-values get Holm's adjustment over all of them ([`adjust_for_multiplicity`])."""
    comparison = Comparison({}, {}, {}, reference_method, [], False)
    protocol: dict[tuple[str, str], tuple[str, dict]] = {}
    pooled_settings: dict[tuple, tuple[str, dict]] = {}
    pools: dict[tuple[str, str], dict[int, dict[str, PooledMethod]]] = {}
    for run in runs:
        results = _read_results(run)
        column = (_short(results["test_set"]["source_dataset"]), _short(results["backbone"]["id"]))
        shots, method = results["num_shots"], results["method"]
        where = f"{column[0]} with {column[1]} at {shots} shots"
        settings = comparable_settings(results)
        first = protocol.setdefault(column, (run, settings))
        _check_same_settings(first, (run, settings), f"the column {column[0]} {column[1]}")
        ours = method_settings(results)
        _check_same_settings(pooled_settings.setdefault((*column, shots, method), (run, ours)), (run, ours),
                             f"{method} on {where}")
        comparison.backbones[column] = backbone_key(results)
        pooled = pools.setdefault(column, {}).setdefault(shots, {}).setdefault(method, PooledMethod())
        _pool(run, results, pooled, f"{method} on {where}")
        comparison.optimistic |= results["optimistic"]
        if results.get("diversity"):
            comparison.diversity.append((f"{method}, {column[0]}, {shots}-shot", results["diversity"]))

    for column, by_shots in pools.items():
        for shots, methods in by_shots.items():
            _check_same_draws(column, shots, methods)
            rule = protocol[column][1]["select"]
            values = {method: pooled.values("augmented", rule) for method, pooled in methods.items()}
            units = sorted(next(iter(methods.values())).arms["augmented"])
            # The real-only baseline from a method that trained it on every trial (they share the draws).
            baseline = next((m for m in methods.values() if sorted(m.arms["real_only"]) == units), None)
            if baseline is not None:
                values = {REAL_ONLY: baseline.values("real_only", rule), **values}
            else:
                trained = any(m.arms["real_only"] for m in methods.values())
                comparison.real_only_missing.setdefault(column, {})[shots] = (
                    "not trained in every trial" if trained else "not trained (`real_only_baseline` off)"
                )
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
    adjust_for_multiplicity(comparison.differences())
    return comparison


def comparison_markdown(comparison: Comparison) -> str:
    """The paper's Table 2 layout per number of shots: one row per method, one column per dataset and backbone,
    mean balanced accuracy ± std over trials, the best of each column in bold; then the paper's Table 3 (each method
    against the reference method, paired over trials, raw and Holm-adjusted p-values) and Table 1 (diversity) where
    measured."""
    table = comparison.cells
    lines = ["# Few-shot balanced accuracy", ""]
    if comparison.optimistic:
        lines += [f"**{OPTIMISTIC}** (`select best_test_epoch`, the released code's rule).", ""]
    lines += [
        "Backbones: "
        + "; ".join(
            f"{d} {b} = `{key['backbone']}` (revision {key['backbone_revision'] or '–'}, weights "
            f"{key['backbone_fingerprint']})"
            for (d, b), key in comparison.backbones.items()
        )
        + ".",
        "",
    ]
    if comparison.num_tests:
        lines += [multiplicity_sentence(comparison.num_tests, "Table 3"), ""]
    for shots in sorted({shots for cells in table.values() for shots in cells}):
        columns = [column for column in table if shots in table[column]]
        methods = list(dict.fromkeys([REAL_ONLY, *(m for c in columns for m in table[c][shots])]))
        lines += [
            f"## {shots}-shot",
            "",
            "| method | " + " | ".join(f"{d} {b}" for d, b in columns) + " |",
            "| --- |" + " --- |" * len(columns),
        ]
        best = {column: max(summary["mean"] for summary in table[column][shots].values()) for column in columns}
        absent = False
        for method in methods:
            cells = []
            for column in columns:
                summary = table[column][shots].get(method)
                if summary is not None:
                    text = format_figure(summary)
                    cells.append(f"**{text}**" if summary["mean"] == best[column] else text)
                elif method == REAL_ONLY:
                    cells.append(f"*{comparison.real_only_missing[column][shots]}*")
                else:
                    cells.append("–")
                    absent = True
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        kinds = {comparison.repeats[column][shots] for column in columns}
        lines += ["", "Mean ± std over " + " and ".join(sorted(OVER[kind] for kind in kinds)) + "."]
        lines += ["– : not evaluated in that column.", ""] if absent else [""]
        for column in [column for column in columns if shots in comparison.tests.get(column, {})]:
            lines += paired_table(comparison, column, shots)
    if comparison.diversity:
        lines += ["## Diversity", "", diversity_table(comparison.diversity), ""]
    return "\n".join(lines)


def paired_table(comparison: Comparison, column: tuple[str, str], shots: int) -> list[str]:
    """The lines of Table 3 for one cell: the reference method against each method, paired over trials."""
    reference = comparison.reference
    lines = [
        f"### {shots}-shot, {column[0]} {column[1]}: {reference} against each method",
        "",
        f"| method | balanced accuracy | {reference} − method | n, df | p (paired t-test) | p (Holm) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for method, difference in comparison.tests[column][shots]:
        raw, holm = (f"{p:.3g}" if p is not None else "–" for p in (difference["p_value"], difference["p_holm"]))
        lines.append(
            f"| {method} | {format_figure(comparison.cells[column][shots][method])} | {format_interval(difference)} | "
            f"{format_sample(difference)} | {raw} | {holm} |"
        )
    pairs = comparison.tests[column][shots][0][1]["n"]
    return lines + ["", f"Paired over {OVER[comparison.repeats[column][shots]]} (n = {pairs}).", ""]


def compare_runs(args: CompareArguments) -> str:
    """Writes comparison.md and accuracy_vs_shots.png for several evaluation runs; returns the markdown."""
    comparison = load_comparison(args.runs, args.reference_method)  # every check before anything is written
    if args.push_to_hub:
        check_hub_dataset(args.push_to_hub)
    output_dir = create_output_dir(args.output_dir)
    markdown = comparison_markdown(comparison)
    with atomic_output(output_dir / "comparison.md") as temporary:
        temporary.write_text(markdown, encoding="utf-8")
    plot_accuracy_vs_shots(output_dir / "accuracy_vs_shots.png", comparison.cells)
    if args.push_to_hub:
        push_comparison(comparison, output_dir, args.push_to_hub)
    return markdown
