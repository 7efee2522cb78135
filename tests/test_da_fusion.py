"""`dalda augment --method da_fusion`, the paper's DA-Fusion baseline, on the kit's tiny models: each trial learns its
classes' tokens, then each synthetic image is diffusers' img2img with its class's token at a strength drawn from its
own stream, recorded in its row; the result is a dataset like any other, which `dalda evaluate` reads."""

import json
from collections import Counter

import datasets
import numpy as np
import PIL.Image
import pytest
import scipy.stats
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from safetensors.torch import load_file

from dataset_builders.arguments import DA_FUSION_STRENGTHS, AugmentArguments, SourceArguments
from dataset_builders.augment import augment_dataset
from dataset_builders.evaluation.arguments import EvaluateArguments
from dataset_builders.evaluation.run import evaluate_augmented_dataset
from dataset_builders.hub_layout import ALL_TOKENS_FILE, TOKENS_DIR, trial_name
from dataset_builders.methods import SyntheticItem, class_prompts, da_fusion_strength, method_models
from dataset_builders.textual_inversion import class_shots
from pipeline_dalda import AdaptiveGuidanceScaling
from pipeline_dalda.loading import load_dalda_pipeline
from pipeline_dalda.seeding import item_seed, noise_generator
from pipeline_dalda.textual_inversion import (
    TextualInversionTrainer,
    class_seed,
    class_token,
    images_fingerprint,
    load_class_tokens,
)
from pipeline_dalda.textual_inversion_arguments import TextualInversionArguments

from .helpers import PETS_CLASSES, kit_model_args


SEEDS = [0, 1]
NUM_PROMPTS = 4
STEPS = 4
"""img2img steps: the smallest strength, 0.25, runs one of them."""


def training(**overrides) -> TextualInversionArguments:
    """DA-Fusion's textual inversion at the kit's size: 64 px, a few steps, 'a' as the initializer (the kit's
    tokenizer spends one token per byte, so 'the' is three)."""
    return TextualInversionArguments(**{"resolution": 64, "max_train_steps": 3, "initializer_token": "a", **overrides})


def da_fusion(tiny_models, pets, output_dir, textual_inversion=None, **overrides):
    source = SourceArguments(dataset=str(pets / "dataset"), num_shots=2)
    args = AugmentArguments(
        output_dir=str(output_dir), method="da_fusion", num_prompts=NUM_PROMPTS, num_inference_steps=STEPS,
        batch_size=3, seeds=SEEDS, **overrides,
    )
    return augment_dataset(
        source, args, kit_model_args(tiny_models), AdaptiveGuidanceScaling(),
        textual_inversion=textual_inversion or training(),
    )


@pytest.fixture(scope="module")
def trials(tiny_models, pets, tmp_path_factory):
    output = tmp_path_factory.mktemp("da-fusion") / "out"
    return output, da_fusion(tiny_models, pets, output)


def test_strengths_are_drawn_one_quarter_each_from_each_images_own_stream():
    draws = [da_fusion_strength(0, SyntheticItem(0, source, prompt, "", None, 0))
             for source in range(400) for prompt in range(10)]
    counts = Counter(draws)
    strengths = [0.25, 0.5, 0.75, 1.0]  # DA-Fusion's `--strength 1.0 0.75 0.5 0.25` (scripts/stacking)
    assert sorted(counts) == strengths
    assert sorted(DA_FUSION_STRENGTHS) == strengths  # what the help, the card and the step check read
    # χ² against 1/4 each: a p-value below 1e-4 would reject uniform draws (a false alarm once in 10,000 seeds).
    assert scipy.stats.chisquare([counts[value] for value in strengths]).pvalue > 1e-4
    other_run = [da_fusion_strength(1, SyntheticItem(0, source, prompt, "", None, 0))
                 for source in range(400) for prompt in range(10)]
    assert np.mean(np.array(draws) == np.array(other_run)) < 0.4  # another seed, other draws (1/4 agree by chance)


def test_da_fusion_takes_no_prompts_and_runs_at_least_one_step_at_its_smallest_strength():
    args = AugmentArguments(output_dir="out", method="da_fusion")
    assert (args.num_inference_steps, args.prompt_prefix, args.negative_prompt) == (50, "", "")
    for options, message in (
        ({"prompt_bank": "bank.json"}, "'a photo of a <class>'; give neither `prompt_bank` nor `base_prompt`"),
        ({"base_prompt": True}, "give neither `prompt_bank` nor `base_prompt`"),
        ({"num_inference_steps": 3}, "int\\(3 · 0.25\\) = 0 denoising steps"),
    ):
        with pytest.raises(ValueError, match=message):
            AugmentArguments(output_dir="out", method="da_fusion", **options)
    assert class_prompts(args, ["persian cat"]) == {"persian cat": ["a photo of a <persian_cat>"] * 10}


def test_each_trial_learns_its_tokens_and_records_each_images_strength(trials):
    output, summaries = trials
    for seed in SEEDS:
        folder = output / trial_name(seed)
        dataset = datasets.load_dataset(str(output), trial_name(seed), split="train")
        synthetic = dataset.filter(lambda row: row["is_synthetic"])
        assert len(synthetic) == len(PETS_CLASSES) * 2 * NUM_PROMPTS == summaries[seed]["synthetic_images"]
        for row in synthetic.remove_columns("image"):
            assert row["prompt"] == f"a photo of a {class_token(PETS_CLASSES[row['label']])}"
            assert row["ip_adapter_scale"] is None and row["clip_score"] is not None
            prompt_index = {item_seed(seed, row["source_index"], j): j for j in range(NUM_PROMPTS)}[row["seed"]]
            item = SyntheticItem(0, row["source_index"], prompt_index, row["prompt"], None, row["seed"])
            assert row["strength"] == da_fusion_strength(seed, item)
        assert set(dataset.filter(lambda row: not row["is_synthetic"])["strength"]) == {None}

        counts = Counter(synthetic["strength"])
        assert summaries[seed]["strength"] == {f"{value:g}": count for value, count in sorted(counts.items())}
        card = (folder / "README.md").read_text()
        assert "augmented with DA-Fusion" in card and f"{TOKENS_DIR}/{ALL_TOKENS_FILE}" in card
        assert "Synthetic images per img2img strength: " + ", ".join(
            f"{value:g}: {count}" for value, count in sorted(counts.items())) in card
        record = json.loads((folder / TOKENS_DIR / "textual_inversion.json").read_text())
        assert record["textual_inversion"]["seed"] == seed and record["textual_inversion"]["max_train_steps"] == 3
        tokens = load_file(folder / TOKENS_DIR / ALL_TOKENS_FILE)
        assert set(tokens) == {class_token(name) for name in PETS_CLASSES}


def test_a_trials_tokens_are_learned_from_that_trials_shots(trials, tiny_models, pets):
    """A trial's token is the one trained directly, on the same models, from that trial's shots with the trial's
    class seed; from the other trial's shots, with the same seed, the token is another. (That the trials' tokens
    differ proves nothing: their seeds differ too.)"""
    output, _ = trials
    source = SourceArguments(dataset=str(pets / "dataset"), num_shots=2)
    shots = {seed: class_shots(source, seed) for seed in SEEDS}
    name = next(name for name in PETS_CLASSES
                if images_fingerprint(shots[SEEDS[0]][name]) != images_fingerprint(shots[SEEDS[1]][name]))
    seed, other_seed = SEEDS[1], SEEDS[0]
    token = class_token(name)
    models = method_models(AugmentArguments(output_dir="out", method="da_fusion"), kit_model_args(tiny_models))
    trainer = TextualInversionTrainer(load_dalda_pipeline(models), training())
    own = trainer.train(token, shots[seed][name], class_seed(seed, name), show_progress=False).embedding
    other = trainer.train(token, shots[other_seed][name], class_seed(seed, name), show_progress=False).embedding
    learned = load_file(output / trial_name(seed) / TOKENS_DIR / ALL_TOKENS_FILE)[token]
    torch.testing.assert_close(learned, own, rtol=0, atol=1e-6)
    assert (other - own).abs().max() > 1e-4


def test_a_rows_image_is_diffusers_img2img_with_the_learned_token(trials, tiny_models, pets):
    """Two rows of other strengths made again with diffusers' own img2img pipeline, the trial's token file loaded
    with diffusers' `load_textual_inversion`: the same images (up to PNG rounding)."""
    output, _ = trials
    seed = SEEDS[1]
    dataset = datasets.load_dataset(str(output), trial_name(seed), split="train")
    source = datasets.load_from_disk(str(pets / "dataset"))
    img2img = StableDiffusionImg2ImgPipeline.from_pretrained(tiny_models.stable_diffusion, safety_checker=None)
    img2img.set_progress_bar_config(disable=True)
    load_class_tokens(img2img, output / trial_name(seed) / TOKENS_DIR / ALL_TOKENS_FILE)
    rows = dataset.filter(lambda row: row["is_synthetic"])
    chosen = {}
    for row in rows:
        chosen.setdefault(row["strength"], row)
    assert len(chosen) >= 2
    for strength, row in list(chosen.items())[:2]:
        real = source[row["source_index"]]["image"].convert("RGB")
        size = img2img.unet.config.sample_size * img2img.vae_scale_factor
        expected = img2img(
            prompt=row["prompt"], image=real.resize((size, size), PIL.Image.BILINEAR), strength=strength,
            num_inference_steps=STEPS, guidance_scale=7.5, negative_prompt="", generator=noise_generator(row["seed"]),
        ).images[0].resize(real.size, PIL.Image.BILINEAR)
        difference = np.abs(np.asarray(row["image"], dtype=float) - np.asarray(expected, dtype=float))
        assert difference.max() <= 2, (strength, difference.max())


def test_a_rerun_trains_nothing_and_other_training_settings_are_refused(trials, tiny_models, pets):
    output, _ = trials
    tokens = output / trial_name(SEEDS[0]) / TOKENS_DIR / ALL_TOKENS_FILE
    stamp = tokens.stat().st_mtime_ns
    da_fusion(tiny_models, pets, output)
    assert tokens.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="other settings \\(textual_inversion\\)"):
        da_fusion(tiny_models, pets, output, textual_inversion=training(max_train_steps=5))


def test_evaluate_reads_the_trials(trials, tiny_models, tmp_path):
    output, _ = trials
    args = EvaluateArguments(
        dataset=str(output), output_dir=str(tmp_path / "report"), backbone=str(tiny_models.clip_scorer),
        epochs=1, iterations_per_epoch=2, batch_size=4, image_size=32, cache_dir=str(tmp_path / "feature-cache"),
    )
    evaluate_augmented_dataset(args)
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert results["method"] == "DA-Fusion" and [trial["seed"] for trial in results["trials"]] == SEEDS
