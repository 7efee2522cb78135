"""`dalda evaluate --min_synthetic_score` and `--min_synthetic_score_sweep` on a dataset made by `dalda augment`, which
records each synthetic image's own CLIPScore: which synthetic images the augmented classifier may draw, that the
real-only arm does not move, that a sweep's head is the single-threshold run's head, and the clear errors."""

import csv
import json
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest

from dataset_builders.evaluation import plots
from dataset_builders.evaluation.arguments import CompareArguments, EvaluateArguments
from dataset_builders.evaluation.comparison import compare_runs
from dataset_builders.evaluation.data import content_hash, load_evaluation_splits
from dataset_builders.evaluation.metrics import holm_adjusted, paired_difference
from dataset_builders.evaluation.run import evaluate_augmented_dataset, prepare_training
from dataset_builders.evaluation.summary import SWEEP_ARM, format_figure
from dataset_builders.evaluation.sweep import OPTIMISTIC_THRESHOLD, threshold_chosen_on_validation
from dataset_builders.evaluation.training import TrainingSchedule, draw_training_batches
from dataset_builders.testing import COLOURS, save_colour_dataset
from pipeline_dalda.images import load_image
from pipeline_dalda.prompts import PromptArguments, generate_prompt_bank

from .helpers import augment

SCORE = "synthetic_clip_score"
TINY = {"epochs": 3, "iterations_per_epoch": 10, "batch_size": 8, "learning_rate": 0.01, "image_size": 32}
"""A training short enough for a test; the heads still move apart epoch by epoch."""


def shards(dataset: Path) -> list[str]:
    return sorted(str(shard) for shard in Path(dataset, "data").glob("train-*.parquet"))


@pytest.fixture(scope="module")
def scored(tiny_models, tmp_path_factory):
    """`dalda augment` with the helpers' tiny settings (2 shots, 2 prompts) on the offline kit's colour classes, 8
    images each: learnable classes and 24 test images, which tell classifiers apart (on the `pets` fixture's 3 test
    images every head scores 1/3). With its synthetic rows' scores, image hashes and real images (`source_index`) read
    back with `datasets.load_dataset`, and a threshold S: the upper median of those scores, one row's own float32
    value."""
    root = tmp_path_factory.mktemp("colours")
    save_colour_dataset(root / "dataset", images_per_class=8)
    generate_prompt_bank(PromptArguments(output=str(root / "bank.json"), num_prompts=2), COLOURS)
    dataset = root / "augmented"
    augment(tiny_models, root, dataset)
    table = datasets.load_dataset("parquet", data_files={"train": shards(dataset)}, split="train")
    table = table.cast_column("image", datasets.Image(decode=False))
    synthetic = table.filter(lambda row: row["is_synthetic"])
    scores = np.array(synthetic[SCORE], dtype=np.float32)
    hashes = [content_hash(load_image(image)) for image in synthetic["image"]]
    threshold = float(np.sort(scores)[len(scores) // 2])
    return {"dataset": dataset, "source": str(root / "dataset"), "scores": scores, "hashes": hashes,
            "sources": np.array(synthetic["source_index"]), "threshold": threshold,
            "cache": tmp_path_factory.mktemp("feature-cache")}


def evaluate(scored, output_dir, tiny_models, **overrides) -> dict:
    args = EvaluateArguments(
        dataset=str(overrides.pop("dataset", scored["dataset"])),
        output_dir=str(output_dir),
        backbone=str(tiny_models.clip_scorer),
        cache_dir=str(scored["cache"]),
        **{**TINY, **overrides},
    )
    return evaluate_augmented_dataset(args)


def arm_records(results: dict, arm: str, threshold: float | None = None) -> list[dict]:
    return [r for r in results["per_classifier"] if r["arm"] == arm and r["min_synthetic_score"] == threshold]


def test_the_filter_keeps_exactly_the_synthetic_rows_at_or_above_the_threshold(scored, tiny_models, tmp_path):
    scores, threshold = scored["scores"], scored["threshold"]
    kept_rows = scores >= np.float32(threshold)
    assert 0 < kept_rows.sum() < len(scores)  # some rows go each way
    assert (scores == np.float32(threshold)).sum() >= 1  # and one sits exactly on the threshold

    splits = load_evaluation_splits(str(scored["dataset"]))
    training = prepare_training(splits, image_size=32, num_workers=1)
    pool = training.pool_at_or_above(threshold)
    # Every image the filtered pool may draw, by its pixels, is a row at or above S, and every such row is one.
    drawable = Counter(training.images[item].content_hash for item in pool.synthetic_items)
    assert drawable == Counter(h for h, kept in zip(scored["hashes"], kept_rows) if kept)
    # The draws pick exactly those: with p = 1 and many steps, every drawable image and nothing else, each in place of
    # its own real image (the same real draws as real only's).
    schedule = TrainingSchedule(1, 50, 32)
    draws = draw_training_batches(pool, schedule, seed=0, synthetic_probability=1.0)
    synthetic = draws.items[draws.is_synthetic]
    assert set(synthetic.tolist()) == set(pool.synthetic_items.tolist())
    owner = np.repeat(np.arange(pool.num_reals), training.pool.synthetic_counts)  # of every synthetic item
    reals = draw_training_batches(pool, schedule, seed=0, synthetic_probability=0.0).items
    assert np.array_equal(owner[synthetic - pool.num_reals], reals[draws.is_synthetic])
    assert training.pool_at_or_above(None) is training.pool  # no threshold: every synthetic image

    results = evaluate(scored, tmp_path / "filtered", tiny_models, min_synthetic_score=threshold)
    assert results["training"] == {
        "real_images": 8, "synthetic_images": len(scores), "synthetic_images_kept": int(kept_rows.sum())
    }
    assert {r["min_synthetic_score"] for r in arm_records(results, "augmented", threshold)} == {threshold}
    assert results["method"].endswith(f", synthetic score ≥ {threshold}")
    markdown = (tmp_path / "filtered" / "results.md").read_text()
    assert f"| synthetic images ≥ {threshold} |" in markdown and f"| {int(kept_rows.sum())} |" in markdown


def test_the_real_only_arm_is_the_same_with_and_without_the_filter(scored, tiny_models, tmp_path):
    plain = evaluate(scored, tmp_path / "plain", tiny_models, classifier_seeds=[0, 1])
    filtered = evaluate(scored, tmp_path / "filtered", tiny_models, classifier_seeds=[0, 1],
                        min_synthetic_score=scored["threshold"])
    assert arm_records(filtered, "real_only") == arm_records(plain, "real_only")
    assert filtered["aggregate"]["real_only"] == plain["aggregate"]["real_only"]
    # Or the comparison proves nothing: the filter changed what the augmented arm trained on.
    losses = [[r["train_loss"] for r in results["per_classifier"] if r["arm"] == "augmented"]
              for results in (plain, filtered)]
    assert all(abs(a - b) > 1e-4 for a, b in zip(*losses))


def test_a_sweeps_head_is_the_single_threshold_runs_head_and_the_sweep_is_reported(scored, tiny_models, tmp_path):
    scores, threshold = scored["scores"], scored["threshold"]
    sweep = [float(np.min(scores)), threshold, float(np.max(scores)) + 1.0]  # all, about half, none
    swept = evaluate(scored, tmp_path / "sweep", tiny_models, classifier_seeds=[0, 1],
                     min_synthetic_score_sweep=[sweep[1], sweep[2], sweep[0]])
    alone = evaluate(scored, tmp_path / "alone", tiny_models, classifier_seeds=[0, 1], min_synthetic_score=threshold)

    def training(records):
        """What a classifier's draws and training give: its draws' synthetic share, accuracy per epoch, last loss."""
        keys = ("classifier_seed", "synthetic_fraction_drawn", "test_balanced_accuracy_per_epoch", "train_loss")
        return [{key: record[key] for key in keys} for record in records]

    head = training(arm_records(swept, SWEEP_ARM, threshold))
    assert len(head) == 2 and head == training(arm_records(alone, "augmented", threshold))
    # Or the comparison proves nothing: the unfiltered augmented arm trained otherwise.
    for ours, unfiltered in zip(head, training(arm_records(swept, "augmented"))):
        assert abs(ours["train_loss"] - unfiltered["train_loss"]) > 1e-4
    # A threshold that keeps every synthetic image is the unfiltered arm; one that keeps none, real only (whose
    # classifiers the sweep's extra heads leave as they are).
    assert training(arm_records(swept, SWEEP_ARM, sweep[0])) == training(arm_records(swept, "augmented"))
    assert training(arm_records(swept, SWEEP_ARM, sweep[2])) == training(arm_records(swept, "real_only"))
    assert arm_records(swept, "real_only") == arm_records(alone, "real_only")

    # The table: thresholds ascending, what each keeps, and its difference to real only, paired over repeats.
    rows = swept["min_synthetic_score_sweep"]
    assert [row["min_synthetic_score"] for row in rows] == sweep
    kept = [int((scores >= np.float32(t)).sum()) for t in sweep]
    assert [row["synthetic_images_kept"] for row in rows] == kept == [len(scores), kept[1], 0]
    assert [row["kept_share"] for row in rows] == [k / len(scores) for k in kept]
    real_only = [r["test_balanced_accuracy"] for r in arm_records(swept, "real_only")]
    for row, t in zip(rows, sweep):
        accuracies = [r["test_balanced_accuracy"] for r in arm_records(swept, SWEEP_ARM, t)]
        assert row["balanced_accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
        assert row["difference"]["balanced_accuracy"] == {
            **paired_difference(accuracies, real_only), "p_holm": row["difference"]["balanced_accuracy"]["p_holm"]
        }
        assert "validation_balanced_accuracy" not in row
    assert set(swept["aggregate"]) == {"augmented", "real_only", "difference"}  # the sweep has its own table
    with open(tmp_path / "sweep" / "epochs.csv", newline="") as file:
        epochs = Counter((row["arm"], row["min_synthetic_score"]) for row in csv.DictReader(file))
    arms = [("augmented", ""), ("real_only", "")] + [(SWEEP_ARM, str(t)) for t in sweep]
    assert epochs == {arm: 2 * 3 for arm in arms}  # 2 classifier seeds × 3 epochs, each threshold apart
    saved = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert saved["min_synthetic_score_sweep"] == json.loads(json.dumps(rows))
    assert saved["settings"]["min_synthetic_score_sweep"] == [sweep[1], sweep[2], sweep[0]]
    markdown = (tmp_path / "sweep" / "results.md").read_text()
    assert "## Accuracy against `min_synthetic_score`" in markdown
    assert f"| {threshold} | {kept[1]} of {len(scores)} ({kept[1] / len(scores):.1%}) |" in markdown
    assert f"| {sweep[2]} | 0 of {len(scores)} (0.0%) | 0.0% |" in markdown  # none kept: none drawn
    # Without validation images no threshold is chosen, and reading one off the test table is marked optimistic.
    assert saved["min_synthetic_score_sweep_choice"] is None
    assert f"**{OPTIMISTIC_THRESHOLD}**" in markdown and "This run has no validation images" in markdown
    assert "### Threshold chosen on validation" not in markdown
    assert PIL.Image.open(tmp_path / "sweep" / "accuracy_vs_min_synthetic_score.png").size[0] > 300
    assert not (tmp_path / "alone" / "accuracy_vs_min_synthetic_score.png").exists()
    # `dalda compare` reads a sweep's report: the method is its augmented arm, beside real only.
    comparison = compare_runs(CompareArguments(runs=[str(tmp_path / "sweep")], output_dir=str(tmp_path / "compare")))
    assert "| Real only |" in comparison and f"| {swept['method']} |" in comparison


def test_the_sweep_shows_the_share_drawn_and_chooses_its_threshold_on_validation(
    scored, tiny_models, tmp_path, monkeypatch
):
    scores, sources = scored["scores"], scored["sources"]
    # A middle threshold that leaves some real images without any synthetic image (the median of each real image's
    # best score): it keeps fewer images and, unlike one that leaves every real image some, lowers the mixing ratio.
    best_per_real = np.array([scores[sources == source].max() for source in np.unique(sources)])
    sweep = [float(np.min(scores)), float(np.sort(best_per_real)[len(best_per_real) // 2]), float(np.max(scores)) + 1]
    assert 0 < (best_per_real < np.float32(sweep[1])).sum() < len(best_per_real)
    annotations = []

    def save_png(figure, path):
        """The plots' own `save_png`, keeping the sweep plot's point annotations."""
        if path.name == "accuracy_vs_min_synthetic_score.png":
            annotations.extend(text.get_text() for text in figure.axes[0].texts)
        original_save_png(figure, path)

    original_save_png = plots.save_png
    monkeypatch.setattr(plots, "save_png", save_png)
    results = evaluate(scored, tmp_path / "sweep", tiny_models, classifier_seeds=[0, 1], validation_fraction=0.5,
                       min_synthetic_score_sweep=sweep)

    # The share of draws that were synthetic: the records' mean, falling with the share kept, none where none is kept.
    rows = results["min_synthetic_score_sweep"]
    drawn = [np.mean([r["synthetic_fraction_drawn"] for r in arm_records(results, SWEEP_ARM, t)]) for t in sweep]
    assert [row["synthetic_share_drawn"] for row in rows] == pytest.approx(drawn)
    kept_shares = [row["kept_share"] for row in rows]
    assert kept_shares[0] > kept_shares[1] > kept_shares[2] == 0
    assert drawn[0] > drawn[1] > drawn[2] == 0
    assert [f"{k:.0%} kept\n{d:.0%} of draws" for k, d in zip(kept_shares, drawn)] == annotations

    # The threshold chosen on validation: per classifier, the argmax of its validation accuracy over the thresholds,
    # and its test figure that threshold's.
    real_only = {r["classifier_seed"]: r["test_balanced_accuracy"] for r in arm_records(results, "real_only")}
    choice = results["min_synthetic_score_sweep_choice"]
    tests = []
    for entry in choice["per_classifier"]:
        candidates = [r for t in sweep for r in arm_records(results, SWEEP_ARM, t)
                      if r["classifier_seed"] == entry["classifier_seed"]]
        best = max(candidates, key=lambda r: r["validation_balanced_accuracy"])
        assert entry["min_synthetic_score"] == best["min_synthetic_score"]
        assert entry["test_balanced_accuracy"] == best["test_balanced_accuracy"]
        tests.append(best["test_balanced_accuracy"])
    assert len(tests) == 2
    assert choice["balanced_accuracy"]["mean"] == pytest.approx(np.mean(tests))
    chosen_difference = {k: v for k, v in choice["difference"]["balanced_accuracy"].items() if k != "p_holm"}
    assert chosen_difference == paired_difference(tests, [real_only[0], real_only[1]])
    # Every p-value results.md prints is Holm-adjusted over all of them: the augmented arm's two, each threshold's
    # and the chosen threshold's two.
    family = [*results["aggregate"]["difference"].values(), *(row["difference"]["balanced_accuracy"] for row in rows),
              *choice["difference"].values()]
    assert [d["p_holm"] for d in family] == holm_adjusted([d["p_value"] for d in family])
    assert results["tests"] == sum(d["p_value"] is not None for d in family) > 2
    for row, t in zip(rows, sweep):
        validation = [r["validation_balanced_accuracy"] for r in arm_records(results, SWEEP_ARM, t)]
        assert row["validation_balanced_accuracy"]["mean"] == pytest.approx(np.mean(validation))
    saved = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert saved["min_synthetic_score_sweep_choice"] == json.loads(json.dumps(choice))
    markdown = (tmp_path / "sweep" / "results.md").read_text()
    chosen = markdown.split("### Threshold chosen on validation")[1]
    assert "This run has no validation images" not in markdown
    assert f"| {format_figure(choice['balanced_accuracy'])} |" in chosen.split("## Per classifier")[0]


def test_the_threshold_is_chosen_on_validation_per_classifier_never_on_the_test_set():
    def record(seed, threshold, validation, test):
        epoch = {"test_balanced_accuracy": test, "test_top1": test, "validation_balanced_accuracy": validation}
        return {"arm": SWEEP_ARM, "trial": 0, "classifier_seed": seed, "min_synthetic_score": threshold,
                "selected": epoch}

    # Classifier 0: best on validation at 0.3, best on test at 0.2; classifier 1: a tie on validation (0.2, 0.4),
    # best on test at 0.3. The trials' mean validation accuracy would choose 0.3 for both.
    records = [
        record(0, 0.2, 0.50, 0.90), record(0, 0.3, 0.70, 0.60), record(0, 0.4, 0.10, 0.10),
        record(1, 0.2, 0.60, 0.20), record(1, 0.3, 0.55, 0.80), record(1, 0.4, 0.60, 0.30),
        *({"arm": "real_only", "trial": 0, "classifier_seed": seed, "min_synthetic_score": None,
           "selected": {"test_balanced_accuracy": 0.5, "test_top1": 0.5}} for seed in (0, 1)),
    ]
    choice = threshold_chosen_on_validation(records, [0.4, 0.2, 0.3])
    assert [(e["classifier_seed"], e["min_synthetic_score"]) for e in choice["per_classifier"]] == [(0, 0.3), (1, 0.2)]
    assert [e["test_balanced_accuracy"] for e in choice["per_classifier"]] == [0.60, 0.20]
    assert choice["balanced_accuracy"]["mean"] == pytest.approx(0.40)
    assert choice["difference"]["balanced_accuracy"] == paired_difference([0.60, 0.20], [0.5, 0.5])
    # A classifier without validation images: no threshold is chosen.
    del records[0]["selected"]["validation_balanced_accuracy"]
    assert threshold_chosen_on_validation(records, [0.2, 0.3, 0.4]) is None


def rewritten_copy(scored, folder: Path, change: Callable[[datasets.Dataset], datasets.Dataset]) -> Path:
    """A published copy of the augmented dataset (no bookkeeping) whose shards `change` rewrote."""
    shutil.copytree(scored["dataset"], folder, ignore=shutil.ignore_patterns(".dalda"))
    for shard in shards(folder):
        change(datasets.Dataset.from_parquet(shard)).to_parquet(shard)
    return folder


def without_one_score(dataset: datasets.Dataset) -> datasets.Dataset:
    """The shard with its first synthetic row's score gone, as a run without a CLIP model leaves it."""
    values = dataset[SCORE][:]
    values[dataset["is_synthetic"][:].index(True)] = None
    return dataset.remove_columns(SCORE).add_column(SCORE, values, feature=datasets.Value("float32"))


def test_datasets_that_cannot_be_filtered_and_bad_thresholds_are_clear_errors(scored, tiny_models, tmp_path):
    source = scored["source"]
    old = rewritten_copy(scored, tmp_path / "old", lambda dataset: dataset.remove_columns(SCORE))
    with pytest.raises(ValueError, match="has no column 'synthetic_clip_score': it was made before `dalda augment` "
                                         "recorded .* Make it again with the current `dalda augment`"):
        evaluate(scored, tmp_path / "old-report", tiny_models, dataset=old, source_dataset=source,
                 min_synthetic_score_sweep=[0.3])
    assert not (tmp_path / "old-report").exists()  # refused before anything is written
    # Without a threshold, a dataset made before the scores were recorded evaluates as it always did.
    plain = evaluate(scored, tmp_path / "old-plain", tiny_models, dataset=old, source_dataset=source, epochs=1)
    assert plain["training"] == {"real_images": 8, "synthetic_images": len(scored["scores"])}

    unscored = rewritten_copy(scored, tmp_path / "unscored", without_one_score)
    # One unscored row in each shard.
    unscored_rows = rf"{len(shards(unscored))} synthetic rows of .* have no '{SCORE}' \(rows \[[\d, ]+\]\)"
    with pytest.raises(ValueError, match=unscored_rows + ": it was made without a CLIP scoring model"):
        evaluate(scored, tmp_path / "unscored-report", tiny_models, dataset=unscored, source_dataset=source,
                 min_synthetic_score=0.3)

    for options, message in (
        ({"min_synthetic_score": float("nan")}, "`min_synthetic_score` must be a finite number, got nan"),
        ({"min_synthetic_score_sweep": [0.3, float("inf")]}, "`min_synthetic_score_sweep` must be finite numbers"),
        ({"min_synthetic_score_sweep": [0.3, 0.3]}, "must be distinct thresholds, at least one; got \\[0.3, 0.3\\]"),
        ({"min_synthetic_score_sweep": []}, "must be distinct thresholds, at least one; got \\[\\]"),
        ({"min_synthetic_score": 0.3, "synthetic_probability": 0.0}, "with `synthetic_probability` 0 it draws none"),
    ):
        with pytest.raises(ValueError, match=message):
            EvaluateArguments(dataset="x", output_dir="y", **options)
