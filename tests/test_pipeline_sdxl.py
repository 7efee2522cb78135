"""`DALDAXLPipeline` on the SDXL kit: a batch with a different λ per item gives, item for item, what diffusers'
`StableDiffusionXLPipeline` gives for that item alone, for each of h94's SDXL IP-Adapter layouts; and it loads as
users load a community pipeline."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusionXLPipeline
from diffusers.utils.dynamic_modules_utils import get_relative_imports
from transformers import CLIPModel, CLIPProcessor

import pipeline_dalda
from pipeline_dalda import DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT_PREFIX, DALDAXLPipeline
from pipeline_dalda.dalda_per_item import SHARED_MODULES
from pipeline_dalda.testing_sdxl import SDXL_IP_ADAPTER, SDXL_PLUS_VIT_H_IP_ADAPTER, SDXL_VIT_H_IP_ADAPTER

from .helpers import random_images


STEPS = 2
PROMPTS = ["a dog on the grass", "a red cat, side view", "a small bird in the snow", "a fish near coral"]
SCALES = [0.0, 0.3, 0.7, 1.0]
SEEDS = [11, 12, 13, 14]
PLAIN = {"prompt_prefix": "", "negative_prompt": None}
"""DALDA's prompt prefix and negative prompt switched off."""
PIPELINE_FILE = Path(pipeline_dalda.__file__).parent / "pipeline_sdxl.py"


def generate(pipe, *args, seeds=(1,), **kwargs):
    generator = [torch.Generator().manual_seed(seed) for seed in seeds]
    return pipe(*args, num_inference_steps=STEPS, generator=generator, output_type="np", **kwargs).images


def max_difference(first, second) -> float:
    return float(np.abs(np.asarray(first) - np.asarray(second)).max())


def with_ip_adapter(pipe, tiny_sdxl, weights, **overrides):
    pipe.load_ip_adapter(tiny_sdxl.ip_adapter, **{**dataclasses.asdict(weights), **overrides})
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def text_pipes(tiny_sdxl):
    """The kit's SDXL without an IP-Adapter, as a `DALDAXLPipeline` and as diffusers' pipeline."""
    pipes = (
        DALDAXLPipeline.from_pretrained(tiny_sdxl.stable_diffusion),
        StableDiffusionXLPipeline.from_pretrained(tiny_sdxl.stable_diffusion),
    )
    for pipe in pipes:
        pipe.set_progress_bar_config(disable=True)
    return pipes


@pytest.mark.parametrize(
    "weights", [SDXL_IP_ADAPTER, SDXL_VIT_H_IP_ADAPTER, SDXL_PLUS_VIT_H_IP_ADAPTER], ids=["vit-bigg", "vit-h", "plus"]
)
def test_per_item_scales_match_diffusers_item_by_item(tiny_sdxl, weights):
    dalda = with_ip_adapter(DALDAXLPipeline.from_pretrained(tiny_sdxl.stable_diffusion), tiny_sdxl, weights)
    diffusers = with_ip_adapter(
        StableDiffusionXLPipeline.from_pretrained(tiny_sdxl.stable_diffusion), tiny_sdxl, weights
    )
    images = random_images(len(PROMPTS), size=(dalda.generation_size,) * 2)  # which diffusers does not resize to
    output = dalda(
        PROMPTS,
        ip_adapter_image=images,
        ip_adapter_scale=SCALES,
        num_inference_steps=STEPS,
        generator=[torch.Generator().manual_seed(seed) for seed in SEEDS],
        output_type="np",
    )
    assert output.ip_adapter_scales == SCALES
    assert output.images.shape == (len(PROMPTS), 64, 64, 3)

    for item, (prompt, image, scale, seed) in enumerate(zip(PROMPTS, images, SCALES, SEEDS)):
        diffusers.set_ip_adapter_scale(scale)
        expected = generate(
            diffusers,
            DEFAULT_PROMPT_PREFIX + prompt,
            negative_prompt=DEFAULT_NEGATIVE_PROMPT,
            ip_adapter_image=image,
            seeds=[seed],
        )[0]
        difference = max_difference(output.images[item], expected)
        assert difference <= 1e-4, f"item {item} (λ={scale}) differs from diffusers by {difference}"

    # λ must matter, or the comparison above proves nothing: two items' λ's swapped change both items.
    swapped = generate(dalda, PROMPTS, ip_adapter_image=images, ip_adapter_scale=[0.3, 0.0, 0.7, 1.0], seeds=SEEDS)
    for item in (0, 1):
        assert max_difference(swapped[item], output.images[item]) > 1e-3


def test_without_an_image_prompt_the_call_is_sdxls_text_to_image(text_pipes):
    dalda, diffusers = text_pipes
    plain = generate(dalda, "a cat", **PLAIN)
    assert max_difference(plain, generate(diffusers, "a cat")) <= 1e-5

    # The defaults keep DALDA's prefix and negative prompt, which change the image.
    with_defaults = generate(dalda, "a cat")
    expected = generate(diffusers, DEFAULT_PROMPT_PREFIX + "a cat", negative_prompt=DEFAULT_NEGATIVE_PROMPT)
    assert max_difference(with_defaults, expected) <= 1e-5
    assert max_difference(with_defaults, plain) > 1e-3


def test_loads_as_a_custom_pipeline_from_its_file_and_from_a_saved_folder(tiny_sdxl, text_pipes, tmp_path):
    # diffusers copies only the modules the pipeline file imports (a module cache left by earlier loads can hide one).
    assert {f"{name}.py" for name in get_relative_imports(PIPELINE_FILE)} == set(SHARED_MODULES)
    pipe = DiffusionPipeline.from_pretrained(
        tiny_sdxl.stable_diffusion, custom_pipeline=str(PIPELINE_FILE), trust_remote_code=True
    )
    assert type(pipe).__name__ == "DALDAXLPipeline"
    assert pipe.clip_model is None and pipe.clip_processor is None

    pipe.register_modules(
        clip_model=CLIPModel.from_pretrained(tiny_sdxl.clip_scorer),
        clip_processor=CLIPProcessor.from_pretrained(tiny_sdxl.clip_scorer),
    )
    pipe.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "dalda_xl.py").read_text() == PIPELINE_FILE.read_text()
    for module in SHARED_MODULES:
        assert (tmp_path / "saved" / module).read_text() == (PIPELINE_FILE.parent / module).read_text()

    loaded = DiffusionPipeline.from_pretrained(tmp_path / "saved", custom_pipeline="dalda_xl", trust_remote_code=True)
    assert type(loaded).__name__ == "DALDAXLPipeline"
    assert isinstance(loaded.clip_model, CLIPModel) and isinstance(loaded.clip_processor, CLIPProcessor)
    loaded.set_progress_bar_config(disable=True)
    assert max_difference(generate(loaded, "a cat"), generate(text_pipes[0], "a cat")) <= 1e-6


def test_ip_adapter_errors_come_through(tiny_sdxl, text_pipes):
    with pytest.raises(ValueError, match=r"No IP-Adapter image encoder is loaded; call `pipe.load_ip_adapter"):
        text_pipes[0]("a cat", ip_adapter_image=random_images(1)[0], ip_adapter_scale=0.5)

    # ViT-bigG weights on the ViT-H encoder fail as they fail in diffusers.
    mismatched = with_ip_adapter(
        DALDAXLPipeline.from_pretrained(tiny_sdxl.stable_diffusion),
        tiny_sdxl,
        SDXL_IP_ADAPTER,
        image_encoder_folder=SDXL_VIT_H_IP_ADAPTER.image_encoder_folder,
    )
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        generate(mismatched, "a cat", ip_adapter_image=random_images(1)[0], ip_adapter_scale=0.5)
