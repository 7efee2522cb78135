"""`dalda augment --method real_guidance`, the paper's Real Guidance baseline, end to end on the kit's tiny models."""

from dataclasses import replace

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDIMScheduler, PNDMScheduler, StableDiffusionImg2ImgPipeline
from diffusers.models.attention_processor import IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0
from transformers import HfArgumentParser

from dataset_builders.arguments import AugmentArguments, SourceArguments
from dataset_builders.augment import augment_dataset
from dataset_builders.methods import Img2ImgGeneration
from pipeline_dalda import (
    DALDA_SCHEDULER_CONFIG,
    DEFAULT_NEGATIVE_PROMPT,
    DEFAULT_PROMPT_PREFIX,
    AdaptiveGuidanceScaling,
)
from pipeline_dalda.cli import main as dalda_main
from pipeline_dalda.loading import load_dalda_pipeline
from pipeline_dalda.seeding import item_seed

from .helpers import PETS_CLASSES, assert_same_dataset, augment, images_by_row, kit_model_args


STEPS, M = 2, 2  # strength 0.5 runs int(2 · 0.5) = 1 denoising step


@pytest.fixture(scope="module")
def real_guidance(tiny_models, pets, tmp_path_factory):
    """A Real Guidance run through the command line, with no prompt bank and no `--base_prompt`."""
    output = tmp_path_factory.mktemp("real-guidance") / "out"
    options = {
        **vars(kit_model_args(tiny_models)),
        "dataset": pets / "dataset", "num_shots": 2, "method": "real_guidance", "num_prompts": M,
        "num_inference_steps": STEPS, "batch_size": 3, "output_dir": output,
    }
    dalda_main(["augment", *[item for key, value in options.items() for item in (f"--{key}", str(value))]])
    return output


def load(output):
    """`load_dataset` on a fresh cache: the datasets cache names a local folder's data by the folder's name and its
    card's YAML only, so another test's folder of the same name (e.g. `out`) would be read back instead."""
    return datasets.load_dataset(str(output), split="train", cache_dir=str(output.parent / f"{output.name}-cache"))


def test_rows_are_img2img_of_the_real_images_with_the_class_prompt(real_guidance, pets):
    dataset = load(real_guidance)
    assert len(dataset) == len(PETS_CLASSES) * 2 * (1 + M)
    assert all(scale is None for scale in dataset["ip_adapter_scale"])
    source = datasets.load_from_disk(str(pets / "dataset"))
    real = {row["source_index"]: row for row in dataset.filter(lambda row: not row["is_synthetic"])}
    synthetic = dataset.filter(lambda row: row["is_synthetic"])
    assert len(real) == len(PETS_CLASSES) * 2 and len(synthetic) == len(real) * M
    seeds = {}
    for row in synthetic:
        source_row = source[row["source_index"]]
        assert row["label"] == source_row["label"]
        assert row["prompt"] == f"a photo of a {PETS_CLASSES[row['label']]}"
        assert row["image"].size == source_row["image"].size
        assert row["clip_score"] == real[row["source_index"]]["clip_score"] and 0 < row["clip_score"] < 1
        assert row["strength"] == 0.5 and row["ip_adapter_scale"] is None  # the one strength, recorded per row
        seeds.setdefault(row["source_index"], set()).add(row["seed"])
    assert seeds == {index: {item_seed(0, index, j) for j in range(M)} for index in real}


def test_images_are_what_diffusers_img2img_makes_for_each_item_alone(real_guidance, tiny_models, pets):
    """Each image is diffusers' own img2img at the generation size (no prefix, no negative prompt, DDIM), resized."""
    img2img = StableDiffusionImg2ImgPipeline.from_pretrained(
        tiny_models.stable_diffusion, safety_checker=None, requires_safety_checker=False
    )
    img2img.scheduler = DDIMScheduler.from_config(img2img.scheduler.config, **DALDA_SCHEDULER_CONFIG)
    img2img.set_progress_bar_config(disable=True)
    size = img2img.unet.config.sample_size * img2img.vae_scale_factor
    source = datasets.load_from_disk(str(pets / "dataset"))
    rows = load(real_guidance).filter(lambda row: row["is_synthetic"]).select(range(2))
    for row in rows:
        real_image = source[row["source_index"]]["image"].convert("RGB")
        expected = img2img(
            prompt=row["prompt"],
            image=real_image.resize((size, size), PIL.Image.BILINEAR),
            strength=0.5,
            num_inference_steps=STEPS,
            guidance_scale=7.5,
            generator=torch.Generator().manual_seed(row["seed"]),
        ).images[0].resize(real_image.size, PIL.Image.BILINEAR)
        difference = np.abs(np.asarray(expected, dtype=float) - np.asarray(row["image"], dtype=float))
        assert difference.max() <= 2


def test_result_does_not_depend_on_batch_size(real_guidance, tiny_models, pets, tmp_path):
    augment(tiny_models, pets, tmp_path / "batch-of-one", prompt_bank=None, method="real_guidance", num_prompts=M,
            num_inference_steps=STEPS, batch_size=1, real_images_per_shard=4)
    assert_same_dataset(load(real_guidance), load(tmp_path / "batch-of-one"))


def test_strength_changes_the_images(tiny_models, pets, tmp_path):
    """The sensitivity check of the comparisons above: img2img strength reaches the pipeline."""
    images = {}
    for strength in (0.3, 0.9):  # 1 and 3 of 4 steps
        output = tmp_path / f"strength-{strength}"
        augment(tiny_models, pets, output, prompt_bank=None, method="real_guidance", num_shots=1, num_prompts=1,
                num_inference_steps=4, real_guidance_strength=strength)
        images[strength] = images_by_row(load(output).filter(lambda row: row["is_synthetic"]))
    assert images[0.3].keys() == images[0.9].keys()
    for key, image in images[0.3].items():
        assert np.abs(image - images[0.9][key]).max() > 10, key


def denoised_timesteps(pipe, args: AugmentArguments) -> list[int]:
    """The timesteps at which the method's own img2img denoises a Real Guidance image, as its `__call__` sets them
    (`scheduler.set_timesteps`, then `get_timesteps` for the strength), without running the UNet."""
    img2img = Img2ImgGeneration(pipe, args, lambda item: args.real_guidance_strength).img2img
    img2img.scheduler.set_timesteps(args.num_inference_steps)
    timesteps, _ = img2img.get_timesteps(args.num_inference_steps, args.real_guidance_strength, "cpu")
    return timesteps.tolist()


def test_strength_one_half_runs_25_ddim_steps_from_481_where_da_fusions_pndm_runs_26_from_501(tiny_models):
    """DA-Fusion's 50 img2img steps at strength 0.5 are not the same denoising under our DDIM and under the PNDM
    scheduler of SD 1.4 that DA-Fusion's Real Guidance runs (the README says which)."""
    args = AugmentArguments(output_dir="out", method="real_guidance")
    assert (args.num_inference_steps, args.real_guidance_strength) == (50, 0.5)
    pipe = load_dalda_pipeline(replace(kit_model_args(tiny_models), ip_adapter=""))
    assert isinstance(pipe.scheduler, DDIMScheduler)
    ddim = denoised_timesteps(pipe, args)
    assert (len(ddim), ddim[0], ddim[-1]) == (25, 481, 1)
    # SD 1.4's `scheduler/scheduler_config.json`, which DA-Fusion's `StableDiffusionImg2ImgPipeline.from_pretrained`
    # loads; its 50-step schedule repeats one timestep.
    pipe.scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1,
    )
    pndm = denoised_timesteps(pipe, args)
    assert (len(pndm), pndm[0], pndm[-1]) == (26, 501, 1)


def test_card_names_the_method_and_leaves_out_what_does_not_apply(real_guidance):
    card = (real_guidance / "README.md").read_text()
    for fact in (
        "pretty_name: dataset augmented with Real Guidance",
        "Real Guidance baseline: SD img2img from the real image, prompt 'a photo of a {class}', "
        "strength 0.5, guidance 7.5",
        f"DDIM, {STEPS} steps", "prefix none, negative prompt none", "18 rows",
        "| λ (synthetic images) | – | – | – | – |",
    ):
        assert fact in card, fact
    assert "| IP-Adapter |" not in card and "| AGS |" not in card
    assert (real_guidance / "contact_sheet.png").is_file()


def test_resuming_with_another_method_is_refused(real_guidance, tiny_models, pets):
    with pytest.raises(ValueError, match="other settings \\(generation, models\\)"):
        augment(tiny_models, pets, real_guidance, num_prompts=M, num_inference_steps=STEPS)


def test_settings_per_method_and_their_validation():
    parser = HfArgumentParser(AugmentArguments)
    (args,) = parser.parse_args_into_dataclasses(["--output_dir", "out", "--method", "real_guidance"])
    assert (args.num_inference_steps, args.prompt_prefix, args.negative_prompt) == (50, "", "")
    assert args.real_guidance_strength == 0.5 and args.guidance_scale == 7.5
    dalda = AugmentArguments(output_dir="out", base_prompt=True)
    assert (dalda.num_inference_steps, dalda.prompt_prefix, dalda.negative_prompt) == (
        30, DEFAULT_PROMPT_PREFIX, DEFAULT_NEGATIVE_PROMPT)
    given = AugmentArguments(output_dir="out", method="real_guidance", negative_prompt="blurry", prompt_prefix="")
    assert (given.negative_prompt, given.prompt_prefix) == ("blurry", "")

    for options, message in (
        ({"prompt_bank": "bank.json"}, "neither `prompt_bank` nor `base_prompt`"),
        ({"base_prompt": True}, "neither `prompt_bank` nor `base_prompt`"),
        ({"real_guidance_strength": 0.0}, "must be in \\(0, 1\\]"),
        ({"real_guidance_strength": 0.4, "num_inference_steps": 2}, "= 0 denoising steps"),
    ):
        with pytest.raises(ValueError, match=message):
            AugmentArguments(output_dir="out", method="real_guidance", **options)
    with pytest.raises(ValueError, match="`method` must be one of"):
        AugmentArguments(output_dir="out", method="dreambooth", base_prompt=True)
    with pytest.raises(SystemExit):  # the command line refuses an unknown method too
        parser.parse_args_into_dataclasses(["--output_dir", "out", "--method", "dreambooth"])


def test_loading_without_ip_adapter_leaves_the_attention_plain(tiny_models, pets, tmp_path):
    pipe = load_dalda_pipeline(replace(kit_model_args(tiny_models), ip_adapter=""))
    assert pipe.image_encoder is None and getattr(pipe.unet, "encoder_hid_proj", None) is None
    ip_adapter_processors = (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0)
    assert not any(isinstance(processor, ip_adapter_processors) for processor in pipe.unet.attn_processors.values())
    with pytest.raises(ValueError, match="`method='dalda'` generates with an IP-Adapter"):
        augment_dataset(
            SourceArguments(dataset=str(pets / "dataset"), num_shots=1),
            AugmentArguments(output_dir=str(tmp_path / "out"), base_prompt=True),
            replace(kit_model_args(tiny_models), ip_adapter=""),
            AdaptiveGuidanceScaling(),
        )


def test_real_guidance_output_is_evaluated_like_any_augmented_dataset(real_guidance, tiny_models, tmp_path):
    from dataset_builders.evaluation.arguments import EvaluateArguments
    from dataset_builders.evaluation.run import evaluate_augmented_dataset

    results = evaluate_augmented_dataset(
        EvaluateArguments(dataset=str(real_guidance), output_dir=str(tmp_path / "evaluation"),
                          backbone=str(tiny_models.resnet), image_size=32, epochs=2, iterations_per_epoch=5,
                          classifier_seeds=[0, 1], cache_dir=str(tmp_path / "cache"))
    )
    assert results["method"] == "Real Guidance"
    assert results["training"] == {"real_images": len(PETS_CLASSES) * 2, "synthetic_images": len(PETS_CLASSES) * 2 * M}
    assert results["test_set"]["protocol"] == "unselected" and results["test_set"]["test_images"] == len(PETS_CLASSES)
    assert {"augmented", "real_only", "difference"} <= results["aggregate"].keys()
    assert "| real + synthetic (Real Guidance, p = 0.5) |" in (tmp_path / "evaluation" / "results.md").read_text()
