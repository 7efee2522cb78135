"""The paper's trials end to end on the kit's tiny models: `dalda augment --seeds` writes one complete dataset per
seed (its own shots by the paper's split protocol), loadable as a Hub configuration, resumable, refused with other
settings and pushed without bookkeeping; `dalda evaluate` then tests each trial on its own second half. And the data
kit's hand-written datasets stay what `dalda augment` writes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

from dataset_builders.evaluation.arguments import EvaluateArguments
from dataset_builders.evaluation.data import load_evaluation_splits
from dataset_builders.evaluation.run import evaluate_augmented_dataset
from dataset_builders.hub_layout import WORK_DIR
from dataset_builders.source import paper_split_halves, select_few_shot
from dataset_builders.testing import augment_run_settings, write_augmented_dataset

from .helpers import PETS_CLASSES, assert_same_dataset, augment, dalda_command, kit_model_args, run_in_two_processes
from .hub_server import SECRET_TOKEN, HubServer, load_dataset_from


PETS_LABELS = [index % 3 for index in range(9)]
"""The `pets` fixture's labels (3 classes × 3 images, rows cycling through the classes)."""


@pytest.fixture(scope="module")
def trials(tiny_models, pets, tmp_path_factory):
    """`dalda augment --seeds 0 1 --shot_selection paper` at 1 shot on `pets`: the folder of trials."""
    output = tmp_path_factory.mktemp("trials") / "pets-trials"
    summaries = augment(tiny_models, pets, output, num_shots=1, shot_selection="paper", seeds=[0, 1])
    return output, summaries


def test_one_dataset_per_seed_each_with_its_own_paper_shots(trials):
    output, summaries = trials
    assert sorted(summaries) == [0, 1]
    for seed in (0, 1):
        expected = select_few_shot(PETS_LABELS, PETS_CLASSES, 1, seed, protocol="paper")
        trial = datasets.load_dataset(str(output / f"seed_{seed}"), split="train")
        assert sorted(row["source_index"] for row in trial if not row["is_synthetic"]) == sorted(expected)
        # The same trial, loaded as a configuration of the whole folder (as from the Hub).
        configuration = datasets.load_dataset(str(output), f"seed_{seed}", split="train")
        assert configuration.remove_columns("image").to_list() == trial.remove_columns("image").to_list()
        assert json.loads((output / f"seed_{seed}" / "dalda.json").read_text())["generation"]["seed"] == seed
    shots = [select_few_shot(PETS_LABELS, PETS_CLASSES, 1, seed, protocol="paper") for seed in (0, 1)]
    assert shots[0] != shots[1]  # or the trials would not show what they are for
    card = (output / "README.md").read_text()
    assert "config_name: seed_0" in card and "config_name: seed_1" in card and "2 trials" in card
    assert datasets.get_dataset_config_names(str(output)) == ["seed_0", "seed_1"]


def test_a_rerun_resumes_and_other_settings_are_refused(trials, tiny_models, pets):
    output, _ = trials
    shards = sorted(output.glob("seed_*/data/*.parquet"))
    stamps = [path.stat().st_mtime_ns for path in shards]
    augment(tiny_models, pets, output, num_shots=1, shot_selection="paper", seeds=[1, 0])
    assert [path.stat().st_mtime_ns for path in shards] == stamps
    changed = "holds a run made with other settings .generation.: generation.num_prompts: 2 → 1;"
    with pytest.raises(ValueError, match=changed):
        augment(tiny_models, pets, output, num_shots=1, shot_selection="paper", seeds=[2], num_prompts=1)
    assert not (output / "seed_2").exists()


def test_a_bad_prompt_bank_leaves_no_folder_of_trials(tiny_models, pets, tmp_path):
    with pytest.raises(ValueError, match="has fewer than 5 prompts"):
        augment(tiny_models, pets, tmp_path / "trials", num_shots=1, seeds=[0, 1], num_prompts=5)
    assert not (tmp_path / "trials").exists()  # so the corrected command starts afresh, not refused


def test_evaluate_tests_each_trial_on_its_own_second_half(trials, tiny_models, tmp_path):
    output, _ = trials
    results = evaluate_augmented_dataset(
        EvaluateArguments(
            dataset=str(output),
            output_dir=str(tmp_path / "evaluation"),
            backbone=str(tiny_models.clip_scorer),
            image_size=32,
            epochs=2,
            iterations_per_epoch=3,
            cache_dir=str(tmp_path / "cache"),
        )
    )
    assert results["repeats"] == "trials" and [trial["seed"] for trial in results["trials"]] == [0, 1]
    assert {(r["trial"], r["classifier_seed"]) for r in results["per_classifier"]} == {(0, 0), (1, 1)}
    for seed in (0, 1):
        splits = load_evaluation_splits(str(output / f"seed_{seed}"))
        assert splits.description["protocol"] == "paper"
        test_rows = sorted(int(ref.origin.split()[2]) for ref in splits.test)
        assert test_rows == sorted(row for half in paper_split_halves(PETS_LABELS, 3, seed)[1] for row in half)
        trial = results["trials"][seed]
        assert trial["test_set"]["test_images"] == len(test_rows) and trial["draw"]["selection_seed"] == seed
    assert results["trials"][0]["draw"]["shots_sha256"] != results["trials"][1]["draw"]["shots_sha256"]


def test_push_uploads_every_trial_without_bookkeeping_and_a_trial_loads_back(trials, tiny_models, pets, tmp_path):
    output, _ = trials
    config = {
        **vars(kit_model_args(tiny_models)),
        "dataset": str(pets / "dataset"), "num_shots": 1, "shot_selection": "paper", "seeds": [0, 1],
        "prompt_bank": str(pets / "bank.json"), "num_prompts": 2, "num_inference_steps": 2, "batch_size": 3,
        "output_dir": str(output), "push_to_hub": "org/pets-trials",
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    with HubServer() as hub:
        result = subprocess.run(
            [*dalda_command(), "augment", str(tmp_path / "config.json")],
            env={**os.environ, **hub.env}, capture_output=True, text=True,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        # A trial is a configuration of the pushed repo, as of the local folder.
        loaded = load_dataset_from(hub, tmp_path / "home", "org/pets-trials", "seed_1")
    local = {str(path.relative_to(output)) for path in output.rglob("*") if path.is_file() and WORK_DIR not in path.parts}
    committed = hub.repo_files["datasets/org/pets-trials"]
    assert set(committed) == local
    assert {"README.md", "seed_0/README.md", "seed_1/dalda.json"} <= local
    assert all(SECRET_TOKEN.encode() not in content for content in committed.values())
    trial = datasets.load_dataset(str(output / "seed_1"), split="train")
    assert loaded.features == trial.features
    assert_same_dataset(loaded, trial, tolerance=0)


def test_the_data_kits_datasets_are_what_dalda_augment_writes(augmented, pets, tmp_path):
    """The kit's hand-written augmented datasets (for tests and benchmarks) have `dalda augment`'s columns, types
    and run record, so they cannot drift from the real output."""
    output, _ = augmented
    real = datasets.Features.from_arrow_schema(pq.read_schema(next(output.glob("data/*.parquet"))))
    settings = augment_run_settings(pets / "dataset", num_shots=2)
    written = write_augmented_dataset(tmp_path / "kit", [(0, None, 0)], {}, settings, class_names=PETS_CLASSES)
    kit = datasets.Features.from_arrow_schema(pq.read_schema(next(written.glob("data/*.parquet"))))
    assert kit == real

    def shape(record):
        return {section: sorted(values) for section, values in record.items()}

    for record in (Path(WORK_DIR, "run.json"), Path("dalda.json")):
        recorded = json.loads((output / record).read_text())
        recorded["generation"].pop("prompt_bank_sha256")  # the fixture's run used a prompt bank, the kit's does not
        assert shape(json.loads((written / record).read_text())) == shape(recorded), record


@pytest.mark.skipif(shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None,
                    reason="accelerate's launcher is not installed")
def test_two_accelerate_processes_make_the_same_trials(trials, tiny_models, pets, tmp_path):
    output, _ = trials
    config = {
        **vars(kit_model_args(tiny_models)),
        "dataset": str(pets / "dataset"), "num_shots": 1, "shot_selection": "paper", "seeds": [0, 1],
        "prompt_bank": str(pets / "bank.json"), "num_prompts": 2, "num_inference_steps": 2, "batch_size": 3,
        "real_images_per_shard": 1, "output_dir": str(tmp_path / "two-processes"),
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    run_in_two_processes("augment", tmp_path / "config.json")
    for seed in (0, 1):
        trial = tmp_path / "two-processes" / f"seed_{seed}"
        writers = {json.loads(path.read_text())["process"] for path in (trial / WORK_DIR / "reports").glob("*.json")}
        assert writers == {0, 1}
        assert_same_dataset(
            datasets.load_dataset(str(output / f"seed_{seed}"), split="train"),
            datasets.load_dataset(str(trial), split="train"),
        )
    assert datasets.get_dataset_config_names(str(tmp_path / "two-processes")) == ["seed_0", "seed_1"]
