"""What `dalda augment` promises of each row, checked against independent computations: every row's CLIPScore is the
scorer run on its real image, every synthetic row's λ is the AGS draw from its own stream for that score and the
run's n (with the AGS options the command line was given), and the card's figures are the loaded columns'."""

import re

import datasets
import numpy as np
import pytest

from pipeline_dalda import AdaptiveGuidanceScaling, CLIPScorer
from pipeline_dalda.seeding import item_seed, scale_generator

from .helpers import CLIP_SCORE_TOLERANCE, PETS_CLASSES, model_options, run_dalda


def expected_clip_scores(dataset, source, clip_scorer) -> dict[int, float]:
    """The scorer's CLIPScore of each real image of `dataset`, computed here from the source split."""
    sources = sorted(set(dataset["source_index"]))
    images, labels = [source[index]["image"] for index in sources], [source[index]["label"] for index in sources]
    scores = CLIPScorer.from_pretrained(clip_scorer)(images, labels, PETS_CLASSES)
    return dict(zip(sources, scores.tolist()))


def assert_rows_follow_ags(dataset, source, clip_scorer, ags, num_shots, num_prompts, run_seed=0) -> list[float]:
    """Checks every row's CLIPScore and every synthetic row's λ; returns the λ's."""
    scores = expected_clip_scores(dataset, source, clip_scorer)
    lambdas = []
    for row in dataset.remove_columns("image"):
        assert row["clip_score"] == pytest.approx(scores[row["source_index"]], abs=CLIP_SCORE_TOLERANCE)
        if not row["is_synthetic"]:
            assert row["ip_adapter_scale"] is None
            continue
        prompt_index = {item_seed(run_seed, row["source_index"], j): j for j in range(num_prompts)}[row["seed"]]
        stream = scale_generator(run_seed, row["source_index"], prompt_index)
        expected = ags.sample([row["clip_score"]], num_shots=num_shots, generator=stream)[0]
        assert row["ip_adapter_scale"] == pytest.approx(expected, abs=1e-6), row
        lambdas.append(row["ip_adapter_scale"])
    return lambdas


def test_each_rows_score_is_its_real_images_and_its_lambda_its_own_ags_draw(augmented, tiny_models, pets):
    output, _ = augmented
    dataset = datasets.load_dataset(str(output), split="train")
    source = datasets.load_from_disk(str(pets / "dataset"))
    lambdas = assert_rows_follow_ags(
        dataset, source, tiny_models.clip_scorer, AdaptiveGuidanceScaling(), num_shots=2, num_prompts=2
    )
    assert len(lambdas) == len(PETS_CLASSES) * 2 * 2 and len(set(lambdas)) == len(lambdas)


def test_the_command_lines_ags_options_reach_the_rows(tiny_models, pets, tmp_path):
    common = [
        *(f"--{key}={value}" for key, value in model_options(tiny_models).items()),
        "--dataset", pets / "dataset", "--prompt_bank", pets / "bank.json", "--num_prompts", "2",
        "--num_inference_steps", "1", "--num_shots", "2", "--seed", "5",
    ]
    source = datasets.load_from_disk(str(pets / "dataset"))

    # Scores of random CLIP models over 3 classes lie near 1/3: α = 0.9 puts every image in the low-score range
    # [0.7, 0.9], which the default α = 0.3 does not; σ = 0.3 is six times the default 0.05 · n.
    result = run_dalda("augment", *common, "--output_dir", tmp_path / "sigma", "--threshold", "0.9", "--sigma", "0.3")
    assert result.returncode == 0, result.stderr
    dataset = datasets.load_dataset(str(tmp_path / "sigma"), split="train")
    ags = AdaptiveGuidanceScaling(threshold=0.9, sigma=0.3)
    lambdas = assert_rows_follow_ags(dataset, source, tiny_models.clip_scorer, ags, 2, 2, run_seed=5)
    assert min(lambdas) >= 0.7 and max(lambdas) <= 0.9

    result = run_dalda(
        "augment", *common, "--output_dir", tmp_path / "fixed", "--ags_mode", "fixed", "--fixed_scale", "0.6"
    )
    assert result.returncode == 0, result.stderr
    fixed = datasets.load_dataset(str(tmp_path / "fixed"), split="train").filter(lambda row: row["is_synthetic"])
    assert len(fixed) == len(PETS_CLASSES) * 2 * 2
    np.testing.assert_allclose(fixed["ip_adapter_scale"], 0.6, atol=1e-6)


def card_table(card: str) -> dict[str, list[float]]:
    """The card's summary table: each line's name and its mean, std, min and max."""
    lines = re.findall(r"^\| (λ \(synthetic images\)|CLIPScore \(real images\)) \| (.+) \|$", card, re.MULTILINE)
    return {name: [float(value) for value in values.split(" | ")] for name, values in lines}


def test_the_cards_figures_are_the_loaded_columns(augmented):
    output, _ = augmented
    dataset = datasets.load_dataset(str(output), split="train").remove_columns("image")
    synthetic = np.array(dataset.filter(lambda row: row["is_synthetic"])["ip_adapter_scale"])
    real = np.array(dataset.filter(lambda row: not row["is_synthetic"])["clip_score"])
    table = card_table((output / "README.md").read_text())
    for name, values in (("λ (synthetic images)", synthetic), ("CLIPScore (real images)", real)):
        expected = [values.mean(), values.std(), values.min(), values.max()]
        np.testing.assert_allclose(table[name], expected, atol=5e-5 + 1e-6, err_msg=name)  # the card rounds to 4
