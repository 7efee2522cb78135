"""`dalda compare` on real `dalda evaluate` runs of the colour trials: pooling trials, Table 3 with its raw and
Holm-adjusted p-values, the real-only baseline where it is missing, and refusing runs that are not comparable, one
setting at a time."""

import json
import re
import shutil
from pathlib import Path

import datasets
import pytest
import scipy.stats

from dataset_builders.evaluation.arguments import CompareArguments
from dataset_builders.evaluation.comparison import comparable_settings, compare_runs
from dataset_builders.evaluation.metrics import holm_adjusted
from dataset_builders.hub_layout import trial_name
from dataset_builders.testing import write_colour_trials

from .helpers import colour_trials, evaluate


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return colour_trials(tmp_path_factory.mktemp("colours"))


@pytest.fixture(scope="module")
def runs(colours, tiny_models, tmp_path_factory):
    """Trials 0 and 1 of the good ("DALDA (LLM + AGS)") and the wrong ("Wrong labels") datasets, each trial
    evaluated on its own (compare pools them)."""
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for name, dataset in (("good", colours["good"]), ("wrong", colours["wrong"])):
        for seed in (0, 1):
            runs[name, seed] = root / f"{name}-{seed}"
            evaluate(Path(dataset, trial_name(seed)), runs[name, seed], tiny_models.clip_scorer,
                     method_label="DALDA (LLM + AGS)" if name == "good" else "Wrong labels")
    return runs


def compare(runs, output_dir, **options) -> str:
    return compare_runs(CompareArguments(runs=[str(run) for run in runs], output_dir=str(output_dir), **options))


def results_of(run) -> dict:
    return json.loads(Path(run, "results.json").read_text())


def edited_copy(run, destination, edit) -> Path:
    """A copy of an evaluation run whose results.json `edit(results)` changed in place."""
    shutil.copytree(run, destination)
    results = results_of(destination)
    edit(results)
    Path(destination, "results.json").write_text(json.dumps(results))
    return destination


def per_trial(runs, arm) -> list[float]:
    """The reported balanced accuracy of `arm` in each run, in order."""
    return [next(r["test_balanced_accuracy"] for r in results_of(run)["per_classifier"] if r["arm"] == arm)
            for run in runs]


def test_compare_pools_trials_and_refuses_methods_drawn_differently(colours, runs, tiny_models, tmp_path):
    markdown = compare(runs.values(), tmp_path / "c")
    assert "Paired over trials (each its own draw of shots, synthetic images and classifier) (n = 2)" in markdown
    # Table 3 over the pooled trials, each p-value raw and Holm-adjusted over the file's two tests, with n and df.
    dalda = per_trial([runs["good", 0], runs["good", 1]], "augmented")
    baselines = {
        "Wrong labels": per_trial([runs["wrong", 0], runs["wrong", 1]], "augmented"),
        "Real only": per_trial([runs["good", 0], runs["good", 1]], "real_only"),
    }
    raw = {method: scipy.stats.ttest_rel(dalda, baseline).pvalue for method, baseline in baselines.items()}
    holm = dict(zip(raw, holm_adjusted(list(raw.values()))))
    for method in baselines:
        row = next(line for line in markdown.splitlines() if line.startswith(f"| {method} | ") and "CI" in line)
        assert row.endswith(f"| n = 2, df = 1 | {raw[method]:.3g} | {holm[method]:.3g} |"), row
    assert holm["Wrong labels"] != raw["Wrong labels"]  # or the adjustment was not applied
    assert "Table 3 holds 2 paired t-tests" in markdown and "significan" not in markdown.lower()
    with pytest.raises(ValueError, match="both evaluate trial 0 .classifier seed 0. of Wrong labels"):
        compare([runs["wrong", 0]] * 2, tmp_path / "twice")
    # A method without the real-only arm, listed first: "Real only" comes from a method that trained it on every
    # trial, and Table 3 pairs over the same trials; a method alone in its column has nothing to be tested against,
    # and the table says why its "Real only" cell is empty.
    for seed in (0, 1):
        evaluate(Path(colours["wrong"], trial_name(seed)), tmp_path / f"bare-{seed}", tiny_models.clip_scorer,
                 method_label="Wrong labels", real_only_baseline=False)
    mixed = compare([tmp_path / "bare-0", tmp_path / "bare-1", runs["good", 0], runs["good", 1]], tmp_path / "mixed")
    assert "| Real only | 0." in mixed and "(n = 2)" in mixed
    alone = compare([tmp_path / "bare-0"], tmp_path / "alone", reference_method="Wrong labels")
    assert "| Wrong labels |" in alone and "against each method" not in alone
    assert "| Real only | *not trained (`real_only_baseline` off)* |" in alone
    # The real-only arm of trial 1 missing: no "Real only" figure from trial 0 alone, and the cell says so.
    partial = edited_copy(runs["good", 1], tmp_path / "good-1-partial", lambda results: results.update(
        per_classifier=[r for r in results["per_classifier"] if r["arm"] != "real_only"]))
    assert "| Real only | *not trained in every trial* |" in compare([runs["good", 0], partial], tmp_path / "partial")
    # The same seeds, but shots drawn by the paper's protocol: another draw, refused in one column.
    source = colours["root"] / "source"
    images = list(datasets.load_from_disk(str(source))["image"])
    paper = write_colour_trials(tmp_path / "paper", source, colours["labels"], images, [0, 1], shot_selection="paper")
    evaluate(paper, tmp_path / "paper-eval", tiny_models.clip_scorer, test_set="unselected",
             method_label="Paper shots")
    differently = r"drew trial 0 differently \(shot_selection, shots_sha256, test_rows_sha256\)"
    with pytest.raises(ValueError, match=differently):
        compare([runs["good", 0], runs["good", 1], tmp_path / "paper-eval"], tmp_path / "refused")


def test_a_run_tested_on_part_of_the_test_half_is_refused_beside_one_tested_on_all_of_it(
    colours, runs, tiny_models, tmp_path
):
    """Two real runs of trial 0, one with a fifth of each class's test images moved to validation: refused by the
    setting, and their draws differ too (the test rows are digested once the validation images are out)."""
    carved = tmp_path / "carved"
    evaluate(Path(colours["wrong"], trial_name(0)), carved, tiny_models.clip_scorer, validation_fraction=0.2,
             method_label="Wrong labels")
    message = f"{str(runs['good', 0])!r} and {str(carved)!r} evaluate the column source clip-scorer with " \
        "different settings (validation_fraction 0.0 and 0.2)"
    with pytest.raises(ValueError, match=re.escape(message)):
        compare([runs["good", 0], carved], tmp_path / "refused")
    draws = [results_of(run)["trials"][0]["draw"] for run in (runs["good", 0], carved)]
    assert draws[0]["test_rows_sha256"] != draws[1]["test_rows_sha256"]
    assert {key: value for key, value in draws[0].items() if key != "test_rows_sha256"} == {
        key: value for key, value in draws[1].items() if key != "test_rows_sha256"
    }


OTHER_VALUES = {
    "source_dataset": "elsewhere/source",  # the same short name, another dataset
    "test_set": "split",
    "test_split": "validation",
    "backbone": "elsewhere/clip-scorer",  # the same short name, another checkpoint
    "backbone_revision": "0123456789abcdef0123456789abcdef01234567",
    "backbone_fingerprint": "0" * 24,
    "select": "best_test_epoch",
    "validation_fraction": 0.2,
    "epochs": 11,
    "iterations_per_epoch": 21,
    "batch_size": 17,
    "optimizer": "adam",
    "learning_rate": 0.02,
    "weight_decay": 0.0,
    "synthetic_probability": 0.4,
    "image_size": 28,
    "dtype": "bfloat16",
    "normalization": "processor",
    "pixel_mean": [0.485, 0.456, 0.406],
    "pixel_std": [0.229, 0.224, 0.225],
    "batch_norm": "paper",
    "feature_cache": False,
    "rotation_step": 5.0,
}
"""Per setting a run of one column must share, a value other than the `runs` fixture's."""


def test_every_comparable_setting_is_tested(runs):
    assert set(comparable_settings(results_of(runs["good", 0]))) == set(OTHER_VALUES)


TEST_SET_FIELDS = {"source_dataset": "source_dataset", "test_set": "protocol", "test_split": "split"}
"""The comparable settings read from results.json's "test_set", by their field there."""


@pytest.mark.parametrize("setting", sorted(OTHER_VALUES))
def test_compare_refuses_runs_that_differ_in_one_setting(runs, tmp_path, setting):
    """A copy of a real run with one setting changed (the backbone's in results.json's "backbone", the others in its
    "evaluation_protocol"): refused, naming the setting, both values and both runs."""
    if setting.startswith("backbone"):
        section, key = "backbone", "id" if setting == "backbone" else setting.removeprefix("backbone_")
    elif setting in TEST_SET_FIELDS:
        section, key = "test_set", TEST_SET_FIELDS[setting]
    else:
        section, key = "evaluation_protocol", setting
    original = results_of(runs["wrong", 0])[section][key]

    def change(results):
        results[section][key] = OTHER_VALUES[setting]

    other = edited_copy(runs["wrong", 0], tmp_path / "other", change)
    message = (
        f"{str(runs['good', 0])!r} and {str(other)!r} evaluate the column source clip-scorer with different "
        f"settings ({setting} {original!r} and {OTHER_VALUES[setting]!r})"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        compare([runs["good", 0], other], tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_older_runs_are_refused_and_another_backbone_name_is_another_column(runs, tmp_path):
    for name, edit in (
        ("no-protocol", lambda results: results.pop("evaluation_protocol")),
        ("no-revision", lambda results: results["backbone"].pop("revision")),
    ):
        old = edited_copy(runs["wrong", 0], tmp_path / name, edit)
        with pytest.raises(ValueError, match=re.escape(f"{str(old)!r} was written by an older `dalda evaluate`")):
            compare([runs["good", 0], old], tmp_path / "refused")
    other = edited_copy(runs["wrong", 0], tmp_path / "resnet", lambda r: r["backbone"].update(id="x/resnet"))
    markdown = compare([runs["good", 0], other], tmp_path / "columns")
    assert "| method | source clip-scorer | source resnet |" in markdown
    assert "source resnet = `x/resnet` (revision –, weights " in markdown


def test_a_column_is_checked_at_every_number_of_shots(runs, tmp_path):
    """Another checkpoint with the same short name, evaluated at another number of shots, would share the column's
    curve in Fig. 7: refused like one at the same shots."""
    def other_backbone_other_shots(results):
        results["backbone"]["id"] = "elsewhere/clip-scorer"
        results["num_shots"] = 2

    other = edited_copy(runs["wrong", 0], tmp_path / "two-shots", other_backbone_other_shots)
    with pytest.raises(ValueError, match=re.escape("(backbone 'elsewhere/clip-scorer' and ")):
        compare([other, runs["good", 0]], tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_runs_pooled_into_one_method_share_its_synthetic_score_threshold(runs, tmp_path):
    """Two trials under one method label, one of them trained on the synthetic images at or above a threshold:
    refused, not pooled into one mean."""
    filtered = edited_copy(runs["good", 1], tmp_path / "filtered",
                           lambda results: results["settings"].update(min_synthetic_score=0.3))
    message = "evaluate DALDA (LLM + AGS) on source with clip-scorer at 1 shots with different settings " \
        "(min_synthetic_score None and 0.3)"
    with pytest.raises(ValueError, match=re.escape(message)):
        compare([runs["good", 0], filtered], tmp_path / "refused")

