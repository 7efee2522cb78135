"""Each synthetic image's own class fidelity: its CLIPScore, recorded on its row, and `dalda augment
--min_synthetic_score`, which makes an image below the threshold again (a new seed, λ moved toward the real image)
until it passes or runs out of attempts — checked against the scorer, the seeds' streams and diffusers-made images."""

import json
import re

import datasets
import numpy as np
import PIL.Image
import pytest

from dataset_builders.arguments import AugmentArguments, SourceArguments
from dataset_builders.augment import augment_dataset
from pipeline_dalda import AdaptiveGuidanceScaling, CLIPScorer
from pipeline_dalda.arguments import ModelArguments
from pipeline_dalda.loading import load_dalda_pipeline
from pipeline_dalda.seeding import item_seed, noise_generator

from .helpers import (
    CLIP_SCORE_TOLERANCE,
    PETS_CLASSES,
    REGENERATION_STEPS,
    SYNTHETIC_SCORE_TOLERANCE,
    assert_same_dataset,
    augment,
    kit_model_args,
)


def synthetic_rows(folder) -> datasets.Dataset:
    return datasets.load_dataset(str(folder), split="train").filter(lambda row: row["is_synthetic"])


def prompt_index(pets, row) -> int:
    """The row's prompt's place in its class's prompts of the `pets` bank."""
    return json.loads((pets / "bank.json").read_text())["prompts"][PETS_CLASSES[row["label"]]].index(row["prompt"])


def by_image(dataset: datasets.Dataset) -> dict[tuple[int, str], dict]:
    """Synthetic rows keyed by (real image, prompt): the same image of two runs, whatever its attempts' seeds."""
    return {(row["source_index"], row["prompt"]): row for row in dataset}


def test_each_synthetic_rows_own_score_is_the_scorer_on_its_stored_image(augmented, tiny_models):
    output, summary = augmented
    dataset = datasets.load_dataset(str(output), split="train")
    synthetic = dataset.filter(lambda row: row["is_synthetic"])
    scorer = CLIPScorer.from_pretrained(tiny_models.clip_scorer)
    expected = scorer(synthetic["image"], synthetic["label"], PETS_CLASSES)
    np.testing.assert_allclose(synthetic["synthetic_clip_score"], expected.numpy(), atol=CLIP_SCORE_TOLERANCE, rtol=0)
    assert len(set(synthetic["synthetic_clip_score"])) == len(synthetic)
    # Without a threshold, each image is made once, and its one attempt is the row.
    assert set(synthetic["attempts"]) == {1}
    for row in synthetic.remove_columns("image"):
        assert row["attempt_ip_adapter_scales"] == pytest.approx([row["ip_adapter_scale"]], abs=1e-7)
        assert row["attempt_synthetic_clip_scores"] == pytest.approx([row["synthetic_clip_score"]], abs=1e-7)
    real = dataset.filter(lambda row: not row["is_synthetic"]).remove_columns("image")
    for column in ("synthetic_clip_score", "attempts", "attempt_ip_adapter_scales", "attempt_synthetic_clip_scores"):
        assert set(map(repr, real[column])) == {"None"}, column
    # The card: the scores' figures, and what the column means.
    card = (output / "README.md").read_text()
    line = re.search(r"^\| CLIPScore \(synthetic images, their own\) \| (.+) \|$", card, re.MULTILINE).group(1)
    scores = np.array(synthetic["synthetic_clip_score"])
    np.testing.assert_allclose(
        [float(value) for value in line.split(" | ")], [scores.mean(), scores.std(), scores.min(), scores.max()],
        atol=5e-5 + 1e-6,
    )
    assert "`synthetic_clip_score` (the synthetic image's own CLIPScore" in card
    assert "regenerat" not in str(summary) and "generated again" not in card


def test_images_below_the_threshold_are_made_again_until_they_pass_or_run_out(regenerated, pets):
    threshold, baseline = regenerated.threshold, by_image(synthetic_rows(regenerated.baseline))
    rows = by_image(synthetic_rows(regenerated.output))
    assert rows.keys() == baseline.keys()
    step, max_attempts = 0.2, 3  # the defaults: λ ← min(1, λ + 0.2), three attempts in all
    for key, row in rows.items():
        first = baseline[key]
        attempts, scales = row["attempts"], row["attempt_ip_adapter_scales"]
        scores = row["attempt_synthetic_clip_scores"]
        # The first attempt is the image a run without a threshold makes; only the images below it are made again.
        assert scales[0] == pytest.approx(first["ip_adapter_scale"], abs=1e-7)
        assert scores[0] == pytest.approx(first["synthetic_clip_score"], abs=SYNTHETIC_SCORE_TOLERANCE)
        assert (attempts > 1) == (first["synthetic_clip_score"] < threshold), key
        # Made again while below the threshold, at most three times in all, λ raised by Δ each time.
        assert len(scales) == len(scores) == attempts <= max_attempts
        assert all(score < threshold for score in scores[:-1])
        assert scores[-1] >= threshold or attempts == max_attempts
        assert scales == pytest.approx([min(1.0, scales[0] + k * step) for k in range(attempts)], abs=1e-6)
        # The row keeps its best attempt: that attempt's image, seed, λ and score.
        kept = int(np.argmax(scores))
        assert row["seed"] == item_seed(0, row["source_index"], prompt_index(pets, row), kept)
        assert row["ip_adapter_scale"] == scales[kept] and row["synthetic_clip_score"] == scores[kept]
    regenerated_rows = [row for row in rows.values() if row["attempts"] > 1]
    assert 3 <= len(regenerated_rows) < len(rows)
    never_passed = sum(row["synthetic_clip_score"] < threshold for row in rows.values())
    assert regenerated.summary["regeneration"] == {
        "regenerated": len(regenerated_rows),
        "extra_images": sum(row["attempts"] - 1 for row in regenerated_rows),
        "never_passed": never_passed,
    }
    card = (regenerated.output / "README.md").read_text()
    assert f"{len(regenerated_rows)} of {len(rows)} synthetic images needed it" in card
    assert f"and {never_passed} never reached {threshold}" in card


def test_a_made_again_image_is_the_pipelines_at_its_recorded_seed_and_lambda(regenerated, tiny_models, pets):
    """Each row's image is the attempt it records: its score is the stored image's, and an image kept from a later
    attempt, made again by `DALDAPipeline` from its row alone, is the same image."""
    dataset = synthetic_rows(regenerated.output)
    scorer = CLIPScorer.from_pretrained(tiny_models.clip_scorer)
    expected = scorer(dataset["image"], dataset["label"], PETS_CLASSES)
    np.testing.assert_allclose(dataset["synthetic_clip_score"], expected, atol=CLIP_SCORE_TOLERANCE, rtol=0)
    rows = [row for row in dataset if np.argmax(row["attempt_synthetic_clip_scores"]) > 0]
    assert rows, "no image was kept from a later attempt"
    row = rows[0]
    real = datasets.load_from_disk(str(pets / "dataset"))[row["source_index"]]["image"]
    pipe = load_dalda_pipeline(kit_model_args(tiny_models, device="cpu"))
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(
        [row["prompt"]], ip_adapter_image=[real], ip_adapter_scale=[row["ip_adapter_scale"]],
        generator=[noise_generator(row["seed"])], num_inference_steps=REGENERATION_STEPS,
    ).images[0].resize(real.size, PIL.Image.BILINEAR)
    difference = np.abs(np.asarray(row["image"], dtype=float) - np.asarray(expected, dtype=float))
    assert difference.max() <= 2


def test_images_that_never_pass_are_kept_with_their_best_attempt_and_counted(tiny_models, pets, tmp_path):
    # A probability over three classes never reaches 1: every image is made twice, and none passes.
    summary = augment(tiny_models, pets, tmp_path / "out", num_prompts=1, min_synthetic_score=1.0, max_attempts=2)
    rows = synthetic_rows(tmp_path / "out")
    assert set(rows["attempts"]) == {2}
    for row in rows:
        scores = row["attempt_synthetic_clip_scores"]
        assert row["synthetic_clip_score"] == max(scores)
        assert row["seed"] == item_seed(0, row["source_index"], prompt_index(pets, row), int(np.argmax(scores)))
    assert summary["regeneration"] == {"regenerated": len(rows), "extra_images": len(rows), "never_passed": len(rows)}
    assert len(rows) == len(PETS_CLASSES) * 2


def test_regeneration_does_not_depend_on_the_batch_size(regenerated, tiny_models, pets, tmp_path):
    """Other batches and shards (2 images a batch where the fixture has 3, 2 real images a shard where it has 4): the
    same rows, attempts and images."""
    augment(
        tiny_models, pets, tmp_path / "other-batches", batch_size=2, real_images_per_shard=2,
        num_inference_steps=REGENERATION_STEPS, min_synthetic_score=regenerated.threshold,
    )
    assert_same_dataset(
        datasets.load_dataset(str(regenerated.output), split="train"),
        datasets.load_dataset(str(tmp_path / "other-batches"), split="train"),
    )


def test_bad_regeneration_settings_are_refused_before_anything_is_made(tiny_models, pets, tmp_path):
    for options, message in (
        ({"method": "real_guidance", "prompt_bank": None}, "`min_synthetic_score` regenerates an image with a larger"),
        ({"max_attempts": 0}, "`max_attempts` must be >= 1, got 0"),
        ({"retry_scale_step": 0.0}, "`retry_scale_step` must be in \\(0, 1\\], got 0.0"),
        ({"min_synthetic_score": float("nan")}, "`min_synthetic_score` must be a number, got nan"),
    ):
        with pytest.raises(ValueError, match=message):
            AugmentArguments(
                output_dir=str(tmp_path / "out"), **{"prompt_bank": "bank.json", "min_synthetic_score": 0.5, **options}
            )
    args = AugmentArguments(
        output_dir=str(tmp_path / "out"), prompt_bank=str(pets / "bank.json"), min_synthetic_score=0.5
    )
    no_scorer = ModelArguments(**{**vars(kit_model_args(tiny_models)), "clip_score_model": ""})
    with pytest.raises(ValueError, match="`min_synthetic_score` scores each synthetic image with CLIP; name a"):
        augment_dataset(SourceArguments(dataset=str(pets / "dataset")), args, no_scorer, AdaptiveGuidanceScaling())
    assert not (tmp_path / "out").exists()
