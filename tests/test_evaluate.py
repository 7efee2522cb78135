"""`dalda evaluate` on the kit's tiny backbones: the mixing, that the evaluation sees signal, cached = uncached, the
paper's split protocol, leaks, bad rows, determinism and the report."""

import csv
import io
import json
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest
import scipy.stats

from dataset_builders.evaluation.arguments import CompareArguments, EvaluateArguments
from dataset_builders.evaluation.data import LeakError, load_evaluation_splits
from dataset_builders.evaluation.report import _figure, compare_runs
from dataset_builders.evaluation.run import evaluate_augmented_dataset
from dataset_builders.evaluation.training import TrainingPool, TrainingSchedule, draw_training_batches
from dataset_builders.evaluation.views import view_grid
from dataset_builders.source import paper_split_halves, select_few_shot
from dataset_builders.testing import (
    COLOURS,
    augment_run_settings,
    colour_images,
    save_colour_dataset,
    write_augmented_dataset,
)

from .helpers import run_dalda


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    """A source split of 4 colour classes × 25 images, 1 shot per class, and two augmented datasets of it whose
    synthetic rows are 12 fresh images per real image of the right class ("good"), or of the next class but
    labelled as the real image ("wrong")."""
    root = tmp_path_factory.mktemp("colours")
    labels, images = save_colour_dataset(root / "source", images_per_class=25)
    shots = select_few_shot(labels, COLOURS, 1, seed=0)
    reals = [(row, images[row], labels[row]) for row in shots]
    extra = np.random.default_rng(100)
    settings = augment_run_settings(root / "source", num_shots=1)
    good = {row: [(image, labels[row]) for image in colour_images(extra, labels[row], 12)] for row in shots}
    wrong = {row: [(image, labels[row]) for image in colour_images(extra, (labels[row] + 1) % 4, 12)] for row in shots}
    return {
        "root": root,
        "labels": labels,
        "shots": shots,
        "good": write_augmented_dataset(root / "good", reals, good, settings),
        "wrong": write_augmented_dataset(root / "wrong", reals, wrong, settings),
    }


def evaluate(dataset, output_dir, backbone, **overrides):
    values = dict(
        epochs=10,
        iterations_per_epoch=20,
        batch_size=16,
        learning_rate=0.01,
        image_size=32,
        cache_dir=str(Path(output_dir).parent / "feature-cache"),
    )
    args = EvaluateArguments(
        dataset=str(dataset), output_dir=str(output_dir), backbone=str(backbone), **{**values, **overrides}
    )
    return evaluate_augmented_dataset(args)


def test_mixing_replaces_draws_with_probability_p_by_the_real_images_own_synthetic_images():
    pool = TrainingPool.from_groups(real_labels=[0, 1, 2, 0], synthetic_counts=[3, 0, 5, 2])
    schedule = TrainingSchedule(epochs=4, iterations_per_epoch=50, batch_size=32)
    for probability in (0.0, 0.3, 0.5, 1.0):
        draws = draw_training_batches(pool, schedule, seed=7, synthetic_probability=probability)
        reals = draws.items.copy()
        owner = np.full(len(pool.labels), -1)
        for real, (offset, count) in enumerate(zip(pool.synthetic_offsets, pool.synthetic_counts)):
            owner[real] = real
            owner[offset : offset + count] = real
        drawn_real = owner[reals]
        # A synthetic draw is always one of the drawn real image's own synthetic images, of its class.
        synthetic = draws.is_synthetic
        assert np.all(draws.items[synthetic] >= pool.num_reals) and np.all(draws.items[~synthetic] < pool.num_reals)
        assert np.array_equal(pool.labels[draws.items], pool.labels[drawn_real])
        # The real draws are the same for every p (the paired comparison), and real 1 (no synthetic) is never swapped.
        baseline = draw_training_batches(pool, schedule, seed=7, synthetic_probability=0.0)
        assert np.array_equal(drawn_real, baseline.items)
        assert not synthetic[drawn_real == 1].any()
        # Among draws of reals that have synthetic images, the replaced fraction is p within a 1e-6 binomial bound.
        eligible = drawn_real != 1
        n, k = int(eligible.sum()), int(synthetic[eligible].sum())
        low, high = scipy.stats.binom.ppf([1e-6, 1 - 1e-6], n, probability)
        assert low <= k <= high, (probability, k / n)
    # Synthetic choices cover each real image's synthetic images uniformly.
    draws = draw_training_batches(pool, schedule, seed=7, synthetic_probability=1.0)
    chosen = draws.items[draws.items >= pool.synthetic_offsets[2]]
    chosen = chosen[chosen < pool.synthetic_offsets[2] + 5]
    counts = np.bincount(chosen - pool.synthetic_offsets[2], minlength=5)
    assert scipy.stats.chisquare(counts).pvalue > 1e-4


@pytest.mark.parametrize("rotation_step", [1.0, 5.0])
def test_cached_views_are_the_nearest_grid_views_to_the_released_codes_draws(rotation_step):
    pool = TrainingPool.from_groups(real_labels=[0, 1], synthetic_counts=[2, 2])
    schedule = TrainingSchedule(epochs=2, iterations_per_epoch=20, batch_size=16)
    grid = draw_training_batches(pool, schedule, 3, 0.5, "grid", rotation_step)
    continuous = draw_training_batches(pool, schedule, 3, 0.5, "continuous")
    assert np.array_equal(grid.items, continuous.items) and np.array_equal(grid.flips, continuous.flips)
    assert np.abs(grid.angles - continuous.angles).max() <= rotation_step / 2 + 1e-9
    views = view_grid(rotation_step)
    assert len(views) == 2 * (30 / rotation_step + 1)
    assert all(
        views[i].angle == a and views[i].flip == f
        for i, a, f in zip(grid.grid.ravel(), grid.angles.ravel(), grid.flips.ravel())
    )
    assert len(np.unique(continuous.angles)) == continuous.angles.size  # the released code's angles: all distinct


@pytest.mark.parametrize("backbone", ["clip_scorer", "resnet"])
def test_the_evaluation_sees_signal(colours, tiny_models, tmp_path, backbone):
    """Extra real images of the right class help; images of the wrong class hurt; by a margin chance cannot give."""
    model = getattr(tiny_models, backbone)
    good = evaluate(colours["good"], tmp_path / "good", model)["aggregate"]
    wrong = evaluate(colours["wrong"], tmp_path / "wrong", model)["aggregate"]
    assert good["real_only"] == wrong["real_only"]  # same seeds, same real draws, same test set
    assert good["difference"]["balanced_accuracy"]["mean"] > 0.05
    assert wrong["difference"]["balanced_accuracy"]["mean"] < -0.05
    if backbone == "clip_scorer":  # the stronger backbone: both differences hold seed by seed
        assert good["difference"]["balanced_accuracy"]["ci95"][0] > 0
        assert wrong["difference"]["balanced_accuracy"]["ci95"][1] < 0


def test_cached_and_uncached_paths_agree(colours, tiny_models, tmp_path):
    """The same trials with the backbone run on augmented pixels at every step (continuous rotations, as the
    released code) reach the cached path's accuracy."""
    cached = evaluate(colours["good"], tmp_path / "cached", tiny_models.clip_scorer)
    uncached = evaluate(colours["good"], tmp_path / "uncached", tiny_models.clip_scorer, feature_cache=False)
    for arm in ("augmented", "real_only"):
        difference = (
            cached["aggregate"][arm]["balanced_accuracy"]["mean"]
            - uncached["aggregate"][arm]["balanced_accuracy"]["mean"]
        )
        assert abs(difference) <= 0.02, (arm, difference)
    assert uncached["aggregate"]["difference"]["balanced_accuracy"]["mean"] > 0.05


def test_cached_features_are_the_uncached_computation(colours, tiny_models):
    """On the grid views, training on cached features is training on features computed at every step."""
    import collections

    import torch

    from dataset_builders.evaluation.backbones import PAPER_MEAN, PAPER_STD, load_backbone
    from dataset_builders.evaluation.data import prepare_images
    from dataset_builders.evaluation.features import FeatureExtractor, RenderedFeatures
    from dataset_builders.evaluation.training import CachedFeatures, LabelledFeatures, train_linear_head

    splits = load_evaluation_splits(str(colours["good"]))
    backbone = load_backbone(str(tiny_models.clip_scorer))
    extractor = FeatureExtractor(backbone, PAPER_MEAN, PAPER_STD, batch_size=32)
    refs = splits.reals + [ref for group in splits.synthetic for ref in group]
    prepared = [image for _, image in prepare_images(refs, 32, collections.Counter())]
    pool = TrainingPool.from_groups([ref.label for ref in splits.reals], [len(group) for group in splits.synthetic])
    draws = draw_training_batches(pool, TrainingSchedule(3, 10, 8), seed=0, synthetic_probability=0.5)
    table = extractor.extract(prepared, view_grid())
    test = LabelledFeatures(torch.zeros(1, backbone.feature_dim), np.zeros(1, dtype=np.int64))
    histories, heads = [], []
    for features_of in (
        CachedFeatures(table, torch.device("cpu")),
        RenderedFeatures(extractor, [image.image for image in prepared]),
    ):
        head = backbone.initial_head(COLOURS, seed=0)
        histories.append(train_linear_head(head, backbone.recipe, features_of, pool, draws, test))
        heads.append(head)
    np.testing.assert_allclose(
        [r["train_loss"] for r in histories[0]], [r["train_loss"] for r in histories[1]], rtol=1e-5
    )
    torch.testing.assert_close(heads[0].weight, heads[1].weight, rtol=1e-4, atol=1e-6)
    # Or the comparison proves nothing: other views give other features.
    assert not torch.allclose(table[:, 0], table[:, len(view_grid()) // 2])


def test_same_seed_same_figures_and_a_rerun_reuses_the_cache(colours, tiny_models, tmp_path):
    first = evaluate(colours["good"], tmp_path / "first", tiny_models.clip_scorer, seeds=[3])
    cache = sorted((tmp_path / "feature-cache").rglob("*.npz"))
    stamps = [path.stat().st_mtime_ns for path in cache]
    second = evaluate(colours["good"], tmp_path / "second", tiny_models.clip_scorer, seeds=[3])
    assert first["per_seed"] == second["per_seed"]
    assert [path.stat().st_mtime_ns for path in cache] == stamps and len(cache) == 4 * 13 + 96
    other = evaluate(colours["good"], tmp_path / "other", tiny_models.clip_scorer, seeds=[4])
    assert other["per_seed"] != first["per_seed"]


def test_the_papers_split_protocol(colours, tiny_models, tmp_path):
    labels = colours["labels"]
    # The released code: one stream, each class's images permuted in turn, cut in two with np.array_split.
    rng = np.random.default_rng(5)
    expected_first, expected_second = [], []
    for label in range(len(COLOURS)):
        rows = [row for row, value in enumerate(labels) if value == label]
        first, second = np.array_split(rng.permutation(len(rows)), 2)
        expected_first.append([rows[i] for i in first])
        expected_second.append([rows[i] for i in second])
    assert paper_split_halves(labels, len(COLOURS), 5) == (expected_first, expected_second)
    shots = select_few_shot(labels, COLOURS, 2, seed=5, protocol="paper")
    assert shots == [row for half in expected_first for row in sorted(half[:2])]

    source = datasets.load_from_disk(str(colours["root"] / "source"))
    reals = [(row, source[row]["image"], labels[row]) for row in shots]
    augmented = write_augmented_dataset(
        tmp_path / "paper", reals, {}, augment_run_settings(colours["root"] / "source", 2, "paper", 5)
    )
    splits = load_evaluation_splits(str(augmented))
    assert splits.description["protocol"] == "paper"
    test_rows = sorted(int(ref.origin.split()[2]) for ref in splits.test)
    assert test_rows == sorted(row for half in expected_second for row in half)
    assert not set(test_rows) & set(shots)


def test_leaks_are_errors_naming_the_rows(colours, tiny_models, tmp_path):
    with pytest.raises(LeakError, match=r"real training images are in the test set \(source rows \["):
        load_evaluation_splits(str(colours["good"]), test_set="split")
    # The same picture in another split, saved in another format: caught by its pixels.
    source = datasets.load_from_disk(str(colours["root"] / "source"))
    shot = colours["shots"][2]
    copy = io.BytesIO()
    source[shot]["image"].save(copy, format="BMP")
    test = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": copy.getvalue(), "path": None}] + [source[row]["image"] for row in range(3)],
            "label": [source[shot]["label"], 0, 1, 2],
        },
        features=source.features,
    )
    datasets.DatasetDict({"train": source, "test": test}).save_to_disk(tmp_path / "with-test")
    with pytest.raises(LeakError, match=rf"source row 0 of split 'test' = augmented row {2 * 13}"):
        evaluate(
            colours["good"],
            tmp_path / "leak",
            tiny_models.clip_scorer,
            source_dataset=str(tmp_path / "with-test"),
            test_split="test",
        )


def test_bad_rows_are_skipped_and_counted(colours, tiny_models, tmp_path):
    source = datasets.load_from_disk(str(colours["root"] / "source"))
    undecoded = source.cast_column("image", datasets.Image(decode=False))
    bad = {"bytes": b"not an image", "path": None}
    rows = [(row, undecoded[row]["image"], source[row]["label"]) for row in colours["shots"]]
    rows[1] = (rows[1][0], bad, rows[1][2])  # a real image that does not decode: its synthetic rows go too
    synthetic = {
        row: [(undecoded[(row + 4 * k) % 100]["image"], source[row]["label"]) for k in range(1, 4)]
        for row in colours["shots"]
    }
    synthetic[colours["shots"][0]].append((bad, source[colours["shots"][0]]["label"]))
    test_source = undecoded.select([row for row in range(100) if row not in colours["shots"]][:20])
    test_images = list(test_source["image"])
    test_images[0] = bad
    test_labels = [value if i != 1 else -1 for i, value in enumerate(test_source["label"])]  # -1: no label
    test_table = datasets.Dataset.from_dict({"image": test_images, "label": test_labels}, features=source.features)
    datasets.DatasetDict({"train": source, "test": test_table}).save_to_disk(tmp_path / "source-with-test")
    augmented = write_augmented_dataset(
        tmp_path / "bad", rows, synthetic, augment_run_settings(tmp_path / "source-with-test", 1)
    )
    results = evaluate(augmented, tmp_path / "report", tiny_models.clip_scorer, test_split="test", seeds=[0])
    assert results["skipped"]["undecodable image"] == 3  # a real image, a synthetic image, a test image
    assert results["skipped"]["synthetic image of an undecodable real image"] == 3
    assert results["skipped"]["source row without a known label"] == 1
    assert results["training"] == {"real_images": 3, "synthetic_images": 3 * 3}
    assert results["test_set"]["protocol"] == "split" and results["test_set"]["test_images"] == 20 - 2
    assert len(_history(tmp_path / "report", results["per_seed"][0])) == 10


def test_report_files_selection_and_comparison(colours, tiny_models, tmp_path):
    results = evaluate(
        colours["good"],
        tmp_path / "honest",
        tiny_models.clip_scorer,
        seeds=[0, 1],
        validation_fraction=0.25,
        select="best_validation_epoch",
    )
    output = tmp_path / "honest"
    assert json.loads((output / "results.json").read_text()) == json.loads(json.dumps(results))
    assert results["test_set"]["validation_images"] == 4 * 6 and results["test_set"]["test_images"] == 96 - 24
    for trial in results["per_seed"]:
        assert trial["epoch"] == max(
            range(1, 11),
            key=lambda e: next(r["validation_balanced_accuracy"] for r in _history(output, trial) if r["epoch"] == e),
        )
    with open(output / "epochs.csv", newline="") as file:
        epochs = list(csv.DictReader(file))
    assert len(epochs) == 2 * 2 * 10 and {"validation_balanced_accuracy", "test_top1"} <= set(epochs[0])
    markdown = (output / "results.md").read_text()
    for fact in ("| real only |", "| real + synthetic (Base + AGS, p = 0.5) |", "95% CI", "validation set"):
        assert fact in markdown, fact
    assert "optimistic" not in markdown
    for image in ("accuracy_per_epoch.png", "clip_score_lambda.png"):
        assert PIL.Image.open(output / image).size[0] > 300

    optimistic = evaluate(
        colours["good"],
        tmp_path / "optimistic",
        tiny_models.clip_scorer,
        seeds=[0],
        select="best_test_epoch",
        method_label="DALDA (optimistic)",
    )
    assert optimistic["optimistic"] and "optimistic" in (tmp_path / "optimistic" / "results.md").read_text()
    augmented = next(trial for trial in optimistic["per_seed"] if trial["arm"] == "augmented")
    best = max(record["test_balanced_accuracy"] for record in _history(tmp_path / "optimistic", augmented))
    assert (
        optimistic["aggregate"]["augmented"]["balanced_accuracy"]["mean"]
        == augmented["test_balanced_accuracy"]
        == best
    )

    other = evaluate(
        colours["wrong"],
        tmp_path / "other",
        tiny_models.clip_scorer,
        seeds=[0, 1],
        validation_fraction=0.25,
        select="best_validation_epoch",
        method_label="Wrong labels",
    )
    markdown = compare_runs(
        CompareArguments(runs=[str(output), str(tmp_path / "other")], output_dir=str(tmp_path / "compare"))
    )
    assert "| Real only |" in markdown and "| Base + AGS |" in markdown and "| Wrong labels |" in markdown
    assert "## 1-shot" in markdown and "source clip-scorer" in markdown and "optimistic" not in markdown
    assert f"**{_figure(results['aggregate']['augmented']['balanced_accuracy'])}**" in markdown  # the best, in bold
    assert other["aggregate"]["real_only"] == results["aggregate"]["real_only"]
    assert PIL.Image.open(tmp_path / "compare" / "accuracy_vs_shots.png").size[0] > 300
    # Runs made another way do not share a column; the optimistic choice is said in the comparison too.
    with pytest.raises(ValueError, match="with different seeds, select, test_images"):
        compare_runs(
            CompareArguments(runs=[str(output), str(tmp_path / "optimistic")], output_dir=str(tmp_path / "x"))
        )
    alone = compare_runs(CompareArguments(runs=[str(tmp_path / "optimistic")], output_dir=str(tmp_path / "y")))
    assert "optimistic: the epoch was chosen on the test set" in alone


def test_bad_settings_are_clear_errors(colours, tiny_models, tmp_path):
    with pytest.raises(ValueError, match="The rotation step must divide 30°, got 7.0°"):
        EvaluateArguments(dataset="x", output_dir="y", rotation_step=7.0)
    with pytest.raises(ValueError, match="`seeds` must be distinct"):
        EvaluateArguments(dataset="x", output_dir="y", seeds=[0, 0])
    with pytest.raises(ValueError, match="The backbone '/no/such/model' cannot be loaded"):
        evaluate(colours["good"], tmp_path / "no-backbone", "/no/such/model")


def _history(output, trial):
    with open(output / "epochs.csv", newline="") as file:
        rows = [
            row for row in csv.DictReader(file) if row["arm"] == trial["arm"] and int(row["seed"]) == trial["seed"]
        ]
    return [{key: float(value) if key not in ("arm",) else value for key, value in row.items()} for row in rows]


def test_a_published_copy_names_its_local_source_by_folder(colours, tiny_models, tmp_path):
    record = json.loads((colours["good"] / "dalda.json").read_text())
    assert record["source"]["dataset"] == "./source" and str(colours["root"]) not in json.dumps(record)
    published = tmp_path / "published"
    published.mkdir()
    (published / "data").symlink_to(colours["good"] / "data")
    (published / "dalda.json").write_text(json.dumps(record))
    with pytest.raises(
        ValueError, match="was a local folder that is not here; give its location with `source_dataset`"
    ):
        load_evaluation_splits(str(published))
    splits = load_evaluation_splits(str(published), source_dataset=str(colours["root"] / "source"))
    assert len(splits.test) == 96


def test_evaluate_command(colours, tiny_models, tmp_path):
    result = run_dalda(
        "evaluate",
        "--dataset",
        colours["good"],
        "--output_dir",
        tmp_path / "cli",
        "--backbone",
        tiny_models.clip_scorer,
        "--epochs",
        2,
        "--iterations_per_epoch",
        5,
        "--seeds",
        0,
        1,
        "--image_size",
        32,
        "--cache_dir",
        tmp_path / "cache",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| real only |" in result.stdout and (tmp_path / "cli" / "results.json").is_file()
    bad = run_dalda(
        "evaluate", "--dataset", colours["good"], "--output_dir", tmp_path / "x", "--select", "best_validation_epoch"
    )
    assert bad.returncode != 0 and "needs a validation set" in bad.stderr
