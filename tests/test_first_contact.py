"""What a new user meets first, tested as they would meet it: a missing dataset leaves nothing behind, a damaged
shard is found and made again (and named by `dalda evaluate`), the same models spelled two ways are one run, and the
diversity metrics say what they lack before any classifier trains — and never throw away a finished report."""

import logging
import os
import shutil

import datasets
import pytest

from dataset_builders.arguments import AugmentArguments, SourceArguments
from dataset_builders.augment import run_settings
from dataset_builders.evaluation.arguments import DiversityArguments, EvaluateArguments
from dataset_builders.evaluation.run import evaluate_augmented_dataset
from dataset_builders.hub_layout import public_settings
from dataset_builders.testing import COLOURS, augment_run_settings, save_colour_dataset, write_augmented_dataset
from pipeline_dalda import AdaptiveGuidanceScaling

from .helpers import assert_same_dataset, augment, kit_model_args, run_dalda


def test_a_missing_dataset_leaves_no_output_folder(tmp_path):
    for command in (
        ("augment", "--dataset", tmp_path / "no-such-dataset", "--base_prompt", "--output_dir", tmp_path / "out"),
        ("augment", "--dataset", tmp_path / "no-such-dataset", "--base_prompt", "--seeds", "0", "1",
         "--output_dir", tmp_path / "out"),
        ("evaluate", "--dataset", tmp_path / "no-such-dataset", "--output_dir", tmp_path / "out"),
    ):
        result = run_dalda(*command)
        assert result.returncode != 0 and "no-such-dataset" in result.stderr, result.stderr[-2000:]
        assert not (tmp_path / "out").exists(), command


def test_a_damaged_shard_is_made_again_on_resume_and_named_by_evaluate(augmented, tiny_models, pets, tmp_path, caplog):
    output, _ = augmented
    copy = tmp_path / "copied"
    shutil.copytree(output, copy)
    shard = sorted((copy / "data").glob("*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # a partial copy
    with pytest.raises(ValueError, match=f"The shard '{shard}' is damaged .unreadable.*Run the `dalda augment` command"):
        evaluate_augmented_dataset(EvaluateArguments(dataset=str(copy), output_dir=str(tmp_path / "eval")))
    untouched = {path: path.stat().st_mtime_ns for path in (copy / "data").glob("*.parquet") if path != shard}
    with caplog.at_level(logging.WARNING, logger="dataset_builders.augment"):
        augment(tiny_models, pets, copy)
    assert f"data/{shard.name} is damaged (unreadable" in caplog.text
    assert {path: path.stat().st_mtime_ns for path in untouched} == untouched  # only the damaged one was redone
    assert_same_dataset(datasets.load_dataset(str(output), split="train"), datasets.load_dataset(str(copy), split="train"))


def test_the_same_models_given_by_relative_and_absolute_paths_are_one_run(tiny_models, pets, monkeypatch):
    absolute = kit_model_args(tiny_models)
    monkeypatch.chdir(tiny_models.stable_diffusion.parent.parent)
    relative = kit_model_args(tiny_models)
    for name in ("pretrained_model_name_or_path", "ip_adapter", "clip_score_model"):
        setattr(relative, name, os.path.relpath(getattr(absolute, name)))
    source = SourceArguments(dataset=os.path.relpath(pets / "dataset"))
    args, ags = AugmentArguments(output_dir="out", base_prompt=True), AdaptiveGuidanceScaling()
    assert relative.pretrained_model_name_or_path != absolute.pretrained_model_name_or_path
    settings = run_settings(source, args, relative, ags)
    assert settings == run_settings(SourceArguments(dataset=str(pets / "dataset")), args, absolute, ags)
    assert public_settings(settings)["models"]["pretrained_model_name_or_path"] == "./stable-diffusion"


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A colour dataset with one real image per class and no synthetic image: trains, but has nothing to measure."""
    root = tmp_path_factory.mktemp("plain")
    labels, images = save_colour_dataset(root / "source", images_per_class=5)
    reals = [(row, images[row], labels[row]) for row in range(len(COLOURS))]
    return write_augmented_dataset(root / "augmented", reals, {}, augment_run_settings(root / "source", 1))


def test_diversity_says_what_it_lacks_before_training(plain, tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no LPIPS backbone weights here
    for variable in ("https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")  # and no way to download them: refused at once
    args = EvaluateArguments(dataset=str(plain), output_dir=str(tmp_path / "eval"), diversity=True)
    with pytest.raises(ValueError, match=r"ImageNet weights of its 'alex' backbone.*torch-home.*--no_lpips_pretrained"):
        evaluate_augmented_dataset(args, DiversityArguments(diversity_clip_model=str(tiny_models.clip_scorer)))
    assert not (tmp_path / "eval").exists()  # refused before anything was trained or written


def test_a_failing_late_step_keeps_the_finished_report(plain, tiny_models, tmp_path):
    args = EvaluateArguments(
        dataset=str(plain), output_dir=str(tmp_path / "eval"), backbone=str(tiny_models.clip_scorer), image_size=32,
        epochs=1, iterations_per_epoch=2, diversity=True, cache_dir=str(tmp_path / "cache"),
    )
    diversity = DiversityArguments(diversity_clip_model=str(tiny_models.clip_scorer), lpips_pretrained_backbone=False)
    with pytest.raises(ValueError, match="the classifiers' report is written in"):
        evaluate_augmented_dataset(args, diversity)  # no synthetic image: nothing to measure, after training
    assert (tmp_path / "eval" / "results.json").is_file() and (tmp_path / "eval" / "results.md").is_file()
