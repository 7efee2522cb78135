"""A batch with a different λ per item gives, item for item, what diffusers gives for that item alone."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

from pipeline_dalda import DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT_PREFIX

from .helpers import load_ip_adapter, random_images


STEPS = 4
PROMPTS = ["a dog on the grass", "a red cat, side view", "a small bird in the snow", "a fish near coral"]
SCALES = [0.0, 0.35, 0.8, 1.0]
SEEDS = [11, 12, 13, 14]


def generators(seeds):
    return [torch.Generator().manual_seed(seed) for seed in seeds]


@pytest.fixture
def diffusers_pipe(tiny_models):
    return load_ip_adapter(StableDiffusionPipeline.from_pretrained(tiny_models.stable_diffusion), tiny_models)


def diffusers_image(pipe, prompt, image, scale, seed):
    pipe.set_ip_adapter_scale(scale)
    return pipe(
        DEFAULT_PROMPT_PREFIX + prompt,
        negative_prompt=DEFAULT_NEGATIVE_PROMPT,
        ip_adapter_image=image,
        num_inference_steps=STEPS,
        guidance_scale=7.5,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).images[0]


def test_per_item_scales_match_diffusers_item_by_item(dalda_pipe, diffusers_pipe):
    # At the generation size, which DALDAPipeline resizes to and diffusers does not.
    images = random_images(len(PROMPTS), size=(64, 64))
    output = dalda_pipe(
        PROMPTS,
        ip_adapter_image=images,
        ip_adapter_scale=SCALES,
        num_inference_steps=STEPS,
        generator=generators(SEEDS),
        output_type="np",
    )
    assert output.ip_adapter_scales == SCALES
    assert output.images.shape == (len(PROMPTS), 64, 64, 3)

    for item, (prompt, image, scale, seed) in enumerate(zip(PROMPTS, images, SCALES, SEEDS)):
        expected = diffusers_image(diffusers_pipe, prompt, image, scale, seed)
        difference = np.abs(output.images[item] - expected).max()
        assert difference <= 1e-4, f"item {item} (λ={scale}) differs from diffusers by {difference}"

    # λ must matter, or the comparison above proves nothing.
    full_scale = diffusers_image(diffusers_pipe, PROMPTS[0], images[0], 1.0, SEEDS[0])
    assert np.abs(output.images[0] - full_scale).max() > 1e-2


def test_processors_are_restored_after_a_call(dalda_pipe, diffusers_pipe):
    processors_before = dict(dalda_pipe.unet.attn_processors)
    image = random_images(1, seed=3)[0]
    dalda_pipe(["a cat", "a dog"], ip_adapter_image=[image, image], ip_adapter_scale=[0.2, 0.9], num_inference_steps=2)

    processors_after = dalda_pipe.unet.attn_processors
    assert processors_after.keys() == processors_before.keys()
    assert all(processors_after[name] is processor for name, processor in processors_before.items())
    assert any(isinstance(processor, IPAdapterAttnProcessor2_0) for processor in processors_after.values())

    # A plain diffusers call through the DALDA pipeline now equals one on a fresh diffusers pipeline.
    dalda_pipe.set_ip_adapter_scale(0.6)
    after_dalda = StableDiffusionPipeline.__call__(
        dalda_pipe,
        DEFAULT_PROMPT_PREFIX + "a cat",
        negative_prompt=DEFAULT_NEGATIVE_PROMPT,
        ip_adapter_image=image,
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(5),
        output_type="np",
    ).images[0]
    fresh = diffusers_image(diffusers_pipe, "a cat", image, 0.6, 5)
    assert np.abs(after_dalda - fresh).max() <= 1e-5


def test_processors_are_restored_when_a_call_fails(dalda_pipe):
    processors_before = dict(dalda_pipe.unet.attn_processors)

    def fail(pipe, step, timestep, callback_kwargs):
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        dalda_pipe("a cat", ip_adapter_image=random_images(1)[0], ip_adapter_scale=0.5, callback_on_step_end=fail)
    assert all(dalda_pipe.unet.attn_processors[name] is p for name, p in processors_before.items())


def test_precomputed_embeddings_and_images_per_prompt(dalda_pipe):
    images = random_images(2, seed=7)
    embeds = dalda_pipe.encode_ip_adapter_images(images)
    assert [tuple(e.shape[:2]) for e in embeds] == [(2, 1)]

    kwargs = dict(ip_adapter_scale=[0.1, 0.9], num_inference_steps=STEPS, output_type="np")
    from_images = dalda_pipe(["a cat", "a dog"], ip_adapter_image=images, generator=generators([1, 2]), **kwargs)
    from_embeds = dalda_pipe(["a cat", "a dog"], ip_adapter_image_embeds=embeds, generator=generators([1, 2]), **kwargs)
    np.testing.assert_allclose(from_images.images, from_embeds.images, atol=1e-6)

    # Two images per item: each item's images are consecutive and carry the item's λ.
    repeated = dalda_pipe(
        ["a cat", "a dog"],
        ip_adapter_image_embeds=embeds,
        num_images_per_prompt=2,
        generator=generators([1, 9, 2, 9]),
        **kwargs,
    )
    assert repeated.ip_adapter_scales == [0.1, 0.1, 0.9, 0.9]
    np.testing.assert_allclose(repeated.images[[0, 2]], from_embeds.images, atol=1e-4)


def test_return_tuple_and_single_item(dalda_pipe):
    images, nsfw, scales, scores = dalda_pipe(
        "a cat", ip_adapter_image=random_images(1)[0], ip_adapter_scale=0.4, num_inference_steps=2, return_dict=False
    )
    assert len(images) == 1 and images[0].size == (64, 64)
    assert scales == [0.4] and nsfw is None and scores is None
