"""`DALDAPipeline` keeps `StableDiffusionPipeline`'s call contract: what a diffusers user does with one gives, on ours,
what it gives on diffusers' pipeline (within 1e-5), each equality with its sensitivity check."""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.image_processor import IPAdapterMaskProcessor
from safetensors.torch import load_file, save_file

from pipeline_dalda import DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT_PREFIX, AdaptiveGuidanceScaling, DALDAPipeline
from pipeline_dalda.dalda_per_item import split_ip_adapter_image_embeds
from pipeline_dalda.testing import IP_ADAPTER_SUBFOLDER, IP_ADAPTER_WEIGHT_NAME, save_tiny_ip_adapter

from .helpers import load_ip_adapter, random_images


STEPS = 2
TOLERANCE = 1e-5
PLAIN = {"prompt_prefix": "", "negative_prompt": None}
"""DALDA's prompt prefix and negative prompt switched off, as `DALDAPipeline.__call__` documents."""


def seeded(*seeds):
    return [torch.Generator().manual_seed(seed) for seed in seeds]


def generate(pipe, *args, seeds=(1,), **kwargs):
    kwargs = {"num_inference_steps": STEPS, "output_type": "np", "generator": seeded(*seeds), **kwargs}
    return pipe(*args, **kwargs).images


def assert_close(first, second):
    difference = np.abs(np.asarray(first) - np.asarray(second)).max()
    assert difference <= TOLERANCE, f"differs by {difference}"


def assert_differs(first, second):
    assert np.abs(np.asarray(first) - np.asarray(second)).max() > 1e-3


@pytest.fixture
def text_pipes(tiny_models):
    """The kit's Stable Diffusion without an IP-Adapter, as a `DALDAPipeline` and as diffusers' pipeline."""
    pipes = (
        DALDAPipeline.from_pretrained(tiny_models.stable_diffusion),
        StableDiffusionPipeline.from_pretrained(tiny_models.stable_diffusion),
    )
    for pipe in pipes:
        pipe.set_progress_bar_config(disable=True)
    return pipes


@pytest.fixture
def diffusers_pipe(tiny_models):
    return load_ip_adapter(StableDiffusionPipeline.from_pretrained(tiny_models.stable_diffusion), tiny_models)


# No image prompt: text-to-image.


def test_without_an_image_prompt_the_call_is_text_to_image(text_pipes):
    dalda, diffusers = text_pipes
    plain = generate(dalda, "a cat", **PLAIN)
    assert_close(plain, generate(diffusers, "a cat"))

    # The defaults keep DALDA's prefix and negative prompt, which change the image.
    with_defaults = generate(dalda, "a cat")
    assert_close(
        with_defaults, generate(diffusers, DEFAULT_PROMPT_PREFIX + "a cat", negative_prompt=DEFAULT_NEGATIVE_PROMPT)
    )
    assert_differs(with_defaults, plain)

    output = dalda("a cat", num_inference_steps=1, output_type="latent")
    assert output.ip_adapter_scales is None and output.clip_scores is None


def test_with_an_ip_adapter_loaded_text_to_image_says_it_needs_an_image_prompt(dalda_pipe, diffusers_pipe):
    with pytest.raises(TypeError):  # diffusers cannot generate without an image prompt either
        diffusers_pipe("a cat", num_inference_steps=1, output_type="latent")
    with pytest.raises(ValueError, match="IP-Adapter is loaded, and it needs an image prompt"):
        dalda_pipe("a cat", num_inference_steps=1, output_type="latent")


@pytest.mark.parametrize(
    "name, value",
    [
        ("ip_adapter_scale", 0.5),
        ("clip_scores", [0.3]),
        ("class_labels", [0]),
        ("ags", AdaptiveGuidanceScaling()),
        ("ags_generator", 0),
    ],
)
def test_image_prompt_weights_without_an_image_prompt_are_named(text_pipes, name, value):
    with pytest.raises(ValueError, match=f"`{name}` sets the image prompt's weight, but no image prompt was given"):
        text_pipes[0]("a cat", num_inference_steps=1, output_type="latent", **{name: value})


# diffusers' call parameters.


def test_prompt_embeds_as_in_diffusers(text_pipes):
    dalda, diffusers = text_pipes
    cat, negative = diffusers.encode_prompt(["a cat", "a dog"], "cpu", 1, True, ["ugly", "blurry"])
    embeds = {"prompt_embeds": cat, "negative_prompt_embeds": negative}
    from_embeds = generate(dalda, seeds=(1, 2), **embeds)
    assert_close(from_embeds, generate(diffusers, seeds=(1, 2), **embeds))
    assert_close(
        from_embeds,
        generate(dalda, ["a cat", "a dog"], prompt_prefix="", negative_prompt=["ugly", "blurry"], seeds=(1, 2)),
    )
    # The embeddings are used, or the equalities above prove nothing.
    assert_differs(
        from_embeds, generate(dalda, seeds=(1, 2), prompt_embeds=cat.flip(0), negative_prompt_embeds=negative)
    )

    # Without `negative_prompt_embeds` DALDA's negative prompt is encoded; switched off, diffusers' empty one.
    assert_close(
        generate(dalda, prompt_embeds=cat[:1], negative_prompt=None), generate(diffusers, prompt_embeds=cat[:1])
    )
    assert_close(
        generate(dalda, prompt_embeds=cat[:1]),
        generate(diffusers, prompt_embeds=cat[:1], negative_prompt=DEFAULT_NEGATIVE_PROMPT),
    )

    for pipe in text_pipes:
        with pytest.raises(ValueError, match="Cannot forward both `prompt`"):
            pipe("a cat", prompt_embeds=cat[:1], num_inference_steps=1)
        with pytest.raises(ValueError, match="Cannot forward both `negative_prompt`"):
            pipe(prompt_embeds=cat, negative_prompt="ugly", negative_prompt_embeds=negative, num_inference_steps=1)


def test_callback_on_step_end_as_in_diffusers(text_pipes):
    def recorder(seen):
        def callback(pipe, step, timestep, tensors):
            seen.append((step, int(timestep), tensors["prompt_embeds"].clone(), tensors["latents"].clone()))
            return {"latents": tensors["latents"] * 0.5} if step == 0 else {}

        return callback

    seen = {id(pipe): [] for pipe in text_pipes}
    images = [
        generate(
            pipe,
            "a cat",
            callback_on_step_end=recorder(seen[id(pipe)]),
            callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"],
            **extra,
        )
        for pipe, extra in zip(text_pipes, (PLAIN, {}))
    ]
    assert_close(*images)
    (dalda_seen, diffusers_seen) = seen.values()
    assert [step for step, *_ in dalda_seen] == [0, 1] and len(diffusers_seen) == 2
    for (step, timestep, embeds, latents), (step_d, timestep_d, embeds_d, latents_d) in zip(
        dalda_seen, diffusers_seen
    ):
        assert (step, timestep) == (step_d, timestep_d)
        assert_close(embeds, embeds_d)
        assert_close(latents, latents_d)
    # The callback's latents are used, or the comparison above proves nothing.
    assert_differs(images[0], generate(text_pipes[0], "a cat", **PLAIN))
    for pipe in text_pipes:
        with pytest.raises(ValueError, match="`callback_on_step_end_tensor_inputs` has to be in"):
            pipe("a cat", num_inference_steps=1, callback_on_step_end_tensor_inputs=["noise_pred"])


def test_images_per_prompt_output_type_and_return_dict_as_in_diffusers(text_pipes):
    dalda, diffusers = text_pipes
    prompts = ["a cat", "a dog"]
    kwargs = {"num_images_per_prompt": 2, "seeds": (1, 2, 3, 4)}
    several = generate(dalda, prompts, **PLAIN, **kwargs)
    assert several.shape == (4, 64, 64, 3)
    assert_close(several, generate(diffusers, prompts, **kwargs))
    assert_differs(several[0], several[1])

    for output_type in ("latent", "pt"):
        ours = generate(dalda, prompts, output_type=output_type, **PLAIN, **kwargs)
        theirs = generate(diffusers, prompts, output_type=output_type, **kwargs)
        assert isinstance(ours, torch.Tensor) and ours.shape == theirs.shape
        assert_close(ours, theirs)

    images, nsfw, scales, scores = dalda(
        prompts, num_inference_steps=STEPS, generator=seeded(1, 2), return_dict=False, **PLAIN
    )
    diffusers_images, diffusers_nsfw = diffusers(
        prompts, num_inference_steps=STEPS, generator=seeded(1, 2), return_dict=False
    )
    assert all(isinstance(image, PIL.Image.Image) for image in images) and nsfw == diffusers_nsfw
    assert scales is None and scores is None
    assert [np.asarray(image).tolist() for image in images] == [
        np.asarray(image).tolist() for image in diffusers_images
    ]


def test_ip_adapter_masks_through_cross_attention_kwargs_as_in_diffusers(dalda_pipe, diffusers_pipe):
    image = random_images(1, size=(64, 64), seed=3)[0]
    left = np.zeros((64, 64), dtype=np.uint8)
    left[:, :32] = 255
    masks = IPAdapterMaskProcessor().preprocess([PIL.Image.fromarray(left)], height=64, width=64)
    masked = {"cross_attention_kwargs": {"ip_adapter_masks": [masks]}}
    for pipe in (dalda_pipe, diffusers_pipe):
        pipe.set_ip_adapter_scale(0.8)
    ours = generate(dalda_pipe, "a cat", ip_adapter_image=image, **masked)
    theirs = generate(
        diffusers_pipe,
        DEFAULT_PROMPT_PREFIX + "a cat",
        negative_prompt=DEFAULT_NEGATIVE_PROMPT,
        ip_adapter_image=image,
        **masked,
    )
    assert_close(ours, theirs)
    # The mask is applied, or the equality above proves nothing.
    assert_differs(ours, generate(dalda_pipe, "a cat", ip_adapter_image=image))


def left_half_masks():
    left = np.zeros((64, 64), dtype=np.uint8)
    left[:, :32] = 255
    return IPAdapterMaskProcessor().preprocess([PIL.Image.fromarray(left)], height=64, width=64)


def test_ip_adapter_masks_with_per_item_scales_item_for_item_as_in_diffusers(dalda_pipe, diffusers_pipe):
    images = random_images(2, size=(64, 64), seed=3)
    masked = {"cross_attention_kwargs": {"ip_adapter_masks": [left_half_masks()]}}
    scales = [0.3, 0.9]
    ours = generate(
        dalda_pipe, ["a cat", "a dog"], ip_adapter_image=images, ip_adapter_scale=scales, seeds=(1, 2), **masked
    )
    for item, (prompt, image, scale) in enumerate(zip(["a cat", "a dog"], images, scales)):
        diffusers_pipe.set_ip_adapter_scale(scale)
        theirs = generate(
            diffusers_pipe,
            DEFAULT_PROMPT_PREFIX + prompt,
            negative_prompt=DEFAULT_NEGATIVE_PROMPT,
            ip_adapter_image=image,
            seeds=(item + 1,),
            **masked,
        )
        assert_close(ours[item], theirs[0])
    # The mask is applied on the per-item path, or the equalities above prove nothing.
    assert_differs(
        ours, generate(dalda_pipe, ["a cat", "a dog"], ip_adapter_image=images, ip_adapter_scale=scales, seeds=(1, 2))
    )

    # The older form, one tensor for all adapters, is read as diffusers reads it; a mask per adapter is checked.
    tensor_form = {"cross_attention_kwargs": {"ip_adapter_masks": left_half_masks()}}
    assert_close(
        generate(
            dalda_pipe,
            ["a cat", "a dog"],
            ip_adapter_image=images,
            ip_adapter_scale=scales,
            seeds=(1, 2),
            **tensor_form,
        ),
        ours,
    )
    with pytest.raises(ValueError, match=r"`ip_adapter_masks` has 2 entries for 1 IP-Adapters"):
        generate(
            dalda_pipe,
            "a cat",
            ip_adapter_image=images[0],
            ip_adapter_scale=0.5,
            cross_attention_kwargs={"ip_adapter_masks": [left_half_masks()] * 2},
        )
    with pytest.raises(ValueError, match=r"`ip_adapter_masks\[0\]` must be a tensor of shape \[1, 1, height"):
        generate(
            dalda_pipe,
            "a cat",
            ip_adapter_image=images[0],
            ip_adapter_scale=0.5,
            cross_attention_kwargs={"ip_adapter_masks": [left_half_masks()[0]]},
        )


# The IP-Adapter scale.


def diffusers_image_prompt(pipe, scale, image, seed=1):
    pipe.set_ip_adapter_scale(scale)
    return generate(
        pipe,
        DEFAULT_PROMPT_PREFIX + "a cat",
        negative_prompt=DEFAULT_NEGATIVE_PROMPT,
        ip_adapter_image=image,
        seeds=(seed,),
    )


def test_without_scale_or_ags_inputs_the_scale_set_is_used_as_in_diffusers(dalda_pipe, diffusers_pipe):
    image = random_images(1, size=(64, 64), seed=5)[0]  # at the generation size, which diffusers does not resize to
    dalda_pipe.set_ip_adapter_scale(0.6)
    output = dalda_pipe(
        "a cat", ip_adapter_image=image, num_inference_steps=STEPS, generator=seeded(1), output_type="np"
    )
    assert output.ip_adapter_scales == [0.6]
    assert_close(output.images, diffusers_image_prompt(diffusers_pipe, 0.6, image))
    assert_differs(output.images, diffusers_image_prompt(diffusers_pipe, 0.2, image))

    # Per block, InstantStyle's way: applied by diffusers' own processors, so no one λ per item to report.
    per_block = {"down": {"block_1": [0.0]}, "up": {"block_0": [0.0, 1.0]}}
    dalda_pipe.set_ip_adapter_scale(per_block)
    output = dalda_pipe(
        "a cat", ip_adapter_image=image, num_inference_steps=STEPS, generator=seeded(1), output_type="np"
    )
    assert output.ip_adapter_scales is None
    assert_close(output.images, diffusers_image_prompt(diffusers_pipe, per_block, image))
    assert_differs(output.images, diffusers_image_prompt(diffusers_pipe, 1.0, image))


def test_given_scales_and_ags_inputs_come_before_the_scale_set(dalda_pipe, diffusers_pipe):
    image = random_images(1, size=(64, 64), seed=5)[0]
    dalda_pipe.set_ip_adapter_scale(0.6)
    given = generate(dalda_pipe, "a cat", ip_adapter_image=image, ip_adapter_scale=0.2)
    assert_close(given, diffusers_image_prompt(diffusers_pipe, 0.2, image))

    ags = dalda_pipe(
        "a cat",
        ip_adapter_image=image,
        clip_scores=[0.9],
        ags_generator=3,
        num_inference_steps=1,
        output_type="latent",
    )
    assert ags.ip_adapter_scales == AdaptiveGuidanceScaling().sample([0.9], generator=3).tolist()
    assert ags.ip_adapter_scales != [0.6]
    with pytest.raises(ValueError, match="samples λ from CLIPScores"):  # a λ seed alone asks for AGS too
        dalda_pipe("a cat", ip_adapter_image=image, ags_generator=3, num_inference_steps=1, output_type="latent")


# `from_pipe`.


def test_from_pipe_both_ways(text_pipes):
    dalda, diffusers = text_pipes
    from_diffusers = DALDAPipeline.from_pipe(diffusers)
    assert type(from_diffusers) is DALDAPipeline and from_diffusers.unet is diffusers.unet
    assert from_diffusers.clip_model is None
    from_dalda = StableDiffusionPipeline.from_pipe(dalda)
    assert type(from_dalda) is StableDiffusionPipeline and from_dalda.unet is dalda.unet

    expected = generate(diffusers, "a cat")
    assert_close(generate(from_diffusers, "a cat", **PLAIN), expected)
    assert_close(generate(from_dalda, "a cat"), expected)


def test_per_adapter_scales_set_are_used_as_in_diffusers(dalda_pipe, diffusers_pipe, tiny_models):
    paths = [tiny_models.ip_adapter] * 2
    for pipe in (dalda_pipe, diffusers_pipe):
        pipe.unload_ip_adapter()
        pipe.load_ip_adapter(paths, subfolder=[IP_ADAPTER_SUBFOLDER] * 2, weight_name=[IP_ADAPTER_WEIGHT_NAME] * 2)
        pipe.set_ip_adapter_scale([0.3, 0.9])
    image = random_images(1, size=(64, 64), seed=5)[0]
    output = dalda_pipe(
        "a cat", ip_adapter_image=image, num_inference_steps=STEPS, generator=seeded(1), output_type="np"
    )
    assert output.ip_adapter_scales is None
    expected = diffusers_image_prompt(diffusers_pipe, [0.3, 0.9], [image, image])
    assert_close(output.images, expected)
    assert_differs(output.images, diffusers_image_prompt(diffusers_pipe, [0.3, 0.3], [image, image]))


# `ip_adapter_image_embeds` in diffusers' layout.


def diffusers_embeds(pipe, image):
    """What diffusers' `prepare_ip_adapter_image_embeds` makes of one image under classifier-free guidance."""
    return pipe.prepare_ip_adapter_image_embeds(image, None, "cpu", 1, True)


def test_ip_adapter_image_embeds_in_diffusers_layout_as_in_diffusers(dalda_pipe, diffusers_pipe):
    image = random_images(1, size=(64, 64), seed=5)[0]
    (embeds,) = diffusers_embeds(diffusers_pipe, image)
    assert embeds.shape[0] == 2  # [negative, positive]
    for pipe in (dalda_pipe, diffusers_pipe):
        pipe.set_ip_adapter_scale(0.6)
    theirs = {"negative_prompt": DEFAULT_NEGATIVE_PROMPT}
    ours = generate(dalda_pipe, "a cat", ip_adapter_image_embeds=[embeds])
    assert_close(
        ours, generate(diffusers_pipe, DEFAULT_PROMPT_PREFIX + "a cat", ip_adapter_image_embeds=[embeds], **theirs)
    )
    assert_close(ours, generate(dalda_pipe, "a cat", ip_adapter_image=image))

    # The given negative rows are used, not diffusers' zeros made again, or the equalities above prove less.
    positive_twice = embeds[1:].repeat(2, 1, 1)
    ours = generate(dalda_pipe, "a cat", ip_adapter_image_embeds=[positive_twice])
    assert_close(
        ours,
        generate(diffusers_pipe, DEFAULT_PROMPT_PREFIX + "a cat", ip_adapter_image_embeds=[positive_twice], **theirs),
    )
    assert_differs(ours, generate(dalda_pipe, "a cat", ip_adapter_image=image))


def test_ip_adapter_image_embeds_in_diffusers_layout_with_per_item_scales(dalda_pipe, diffusers_pipe):
    images = random_images(2, size=(64, 64), seed=7)
    (first, second) = (diffusers_embeds(diffusers_pipe, image)[0] for image in images)
    negative_then_positive = torch.cat([first[:1], second[:1], first[1:], second[1:]])
    prompts = ["a cat", "a dog"]
    kwargs = {"ip_adapter_scale": [0.2, 0.9], "num_images_per_prompt": 2, "seeds": (1, 2, 3, 4)}
    ours = generate(dalda_pipe, prompts, ip_adapter_image_embeds=[negative_then_positive], **kwargs)
    assert_close(
        ours,
        generate(dalda_pipe, prompts, ip_adapter_image_embeds=dalda_pipe.encode_ip_adapter_images(images), **kwargs),
    )
    # Each item gets its own rows, or the equality above proves nothing.
    swapped = torch.cat([second[:1], first[:1], second[1:], first[1:]])
    assert_differs(ours, generate(dalda_pipe, prompts, ip_adapter_image_embeds=[swapped], **kwargs))

    with pytest.raises(ValueError, match=r"has 3 rows for 2 prompts; give 2 \(one per item.*or 4 \(negative rows"):
        dalda_pipe(prompts, ip_adapter_image_embeds=[negative_then_positive[:3]], num_inference_steps=1)
    with pytest.raises(
        ValueError, match=r"has 4 rows for 2 prompts; give 2 \(one per item, see `encode_ip_adapter_images`\)\.$"
    ):
        dalda_pipe(
            prompts, ip_adapter_image_embeds=[negative_then_positive], guidance_scale=1.0, num_inference_steps=1
        )
    with pytest.raises(ValueError, match="mixes layouts"):
        split_ip_adapter_image_embeds([negative_then_positive, negative_then_positive[2:]], 2, True)


# Features that replace the IP-Adapter's attention processors.


def undo_attention_slicing(pipe, tiny_models):
    pipe.disable_attention_slicing()
    pipe.unload_ip_adapter()
    load_ip_adapter(pipe, tiny_models)


@pytest.mark.parametrize(
    "feature, message, undo",
    [
        (
            "fuse_qkv_projections",
            r"`fuse_qkv_projections\(\)` replaced",
            lambda pipe, _: pipe.unfuse_qkv_projections(),
        ),
        ("enable_attention_slicing", r"`enable_attention_slicing\(\)` replaced", undo_attention_slicing),
    ],
)
def test_features_that_replace_the_ip_adapter_processors_are_named(
    dalda_pipe, diffusers_pipe, tiny_models, feature, message, undo
):
    image = random_images(1, size=(64, 64), seed=5)[0]
    call = {"ip_adapter_image": image, "num_inference_steps": 1, "output_type": "latent"}
    for pipe in (dalda_pipe, diffusers_pipe):
        getattr(pipe, feature)()
    with pytest.raises(AttributeError):  # what diffusers says
        diffusers_pipe("a cat", **call)
    for scale in ({}, {"ip_adapter_scale": [0.5]}):  # the scale set, and per-item λ's
        with pytest.raises(ValueError, match=message):
            dalda_pipe("a cat", **call, **scale)

    # The way back the error gives works: the call equals diffusers' again.
    for pipe in (dalda_pipe, diffusers_pipe):
        undo(pipe, tiny_models)
        pipe.set_ip_adapter_scale(0.6)
    assert_close(
        generate(dalda_pipe, "a cat", ip_adapter_image=image), diffusers_image_prompt(diffusers_pipe, 0.6, image)
    )


def test_attention_processors_replaced_otherwise_are_named(dalda_pipe):
    dalda_pipe.unet.set_default_attn_processor()
    image = random_images(1, size=(64, 64), seed=5)[0]
    with pytest.raises(
        ValueError, match="attention processors, which the image prompt needs, were replaced .*AttnProcessor"
    ):
        dalda_pipe("a cat", ip_adapter_image=image, ip_adapter_scale=0.5, num_inference_steps=1)


# FaceID adapters: face embeddings, no image encoder.

FACE_EMBED_DIM = 16


@pytest.fixture
def faceid_pipes(tiny_models, tmp_path):
    """The kit's IP-Adapter with a FaceID image projection (`h94/IP-Adapter-FaceID`'s layout), loaded without an image
    encoder, as FaceID pipelines are, into a `DALDAPipeline` and into diffusers' pipeline."""
    state_dict = load_file(str(tiny_models.ip_adapter / IP_ADAPTER_SUBFOLDER / IP_ADAPTER_WEIGHT_NAME))
    cross_attention_dim = state_dict["image_proj.norm.weight"].shape[0]
    tokens = state_dict["image_proj.proj.weight"].shape[0] // cross_attention_dim
    generator = torch.Generator().manual_seed(0)
    hidden = 2 * FACE_EMBED_DIM
    state_dict = {key: value for key, value in state_dict.items() if not key.startswith("image_proj.")}
    state_dict |= {
        "image_proj.proj.0.weight": torch.randn(hidden, FACE_EMBED_DIM, generator=generator) / FACE_EMBED_DIM**0.5,
        "image_proj.proj.0.bias": torch.zeros(hidden),
        "image_proj.proj.2.weight": torch.randn(tokens * cross_attention_dim, hidden, generator=generator)
        / hidden**0.5,
        "image_proj.proj.2.bias": torch.zeros(tokens * cross_attention_dim),
        "image_proj.norm.weight": torch.ones(cross_attention_dim),
        "image_proj.norm.bias": torch.zeros(cross_attention_dim),
    }
    save_file(state_dict, str(tmp_path / "ip-adapter-faceid_sd15.safetensors"))
    pipes = (
        DALDAPipeline.from_pretrained(tiny_models.stable_diffusion),
        StableDiffusionPipeline.from_pretrained(tiny_models.stable_diffusion),
    )
    for pipe in pipes:
        pipe.load_ip_adapter(
            str(tmp_path), subfolder="", weight_name="ip-adapter-faceid_sd15.safetensors", image_encoder_folder=None
        )
        pipe.set_progress_bar_config(disable=True)
        pipe.set_ip_adapter_scale(0.6)
    return pipes


def test_faceid_embeddings_with_zero_negatives_as_in_diffusers(faceid_pipes):
    dalda, diffusers = faceid_pipes
    assert dalda.image_encoder is None
    face = torch.randn(1, 1, FACE_EMBED_DIM, generator=torch.Generator().manual_seed(4))
    theirs = {"negative_prompt": DEFAULT_NEGATIVE_PROMPT}
    expected = generate(
        diffusers,
        DEFAULT_PROMPT_PREFIX + "a cat",
        ip_adapter_image_embeds=[torch.cat([torch.zeros_like(face), face])],
        **theirs,
    )
    assert_close(generate(dalda, "a cat", ip_adapter_image_embeds=[face]), expected)  # the scale set
    assert_close(generate(dalda, "a cat", ip_adapter_image_embeds=[face], ip_adapter_scale=0.6), expected)  # per item
    # The negative face embedding matters, or the equalities above prove nothing.
    assert_differs(
        expected,
        generate(
            diffusers,
            DEFAULT_PROMPT_PREFIX + "a cat",
            ip_adapter_image_embeds=[torch.cat([torch.ones_like(face), face])],
            **theirs,
        ),
    )


def test_per_item_scales_with_several_adapters_item_for_item_as_in_diffusers(
    dalda_pipe, diffusers_pipe, tiny_models, tmp_path
):
    """With as many items as adapters, a flat list is still one λ per item (for every adapter); one row per item
    gives each adapter its own λ."""
    other_adapter = save_tiny_ip_adapter(tmp_path / "other-ip-adapter", tiny_models.stable_diffusion, seed=1)
    paths = [tiny_models.ip_adapter, other_adapter]
    for pipe in (dalda_pipe, diffusers_pipe):
        pipe.unload_ip_adapter()
        pipe.load_ip_adapter(paths, subfolder=[IP_ADAPTER_SUBFOLDER] * 2, weight_name=[IP_ADAPTER_WEIGHT_NAME] * 2)
    dalda_pipe.set_ip_adapter_scale([0.5, 0.5])  # not used: per-item λ's come first
    images = random_images(2, size=(64, 64), seed=5)
    prompts = ["a cat", "a dog"]
    for given in ([0.2, 0.9], [[0.3, 0.9], [0.9, 0.1]]):
        output = dalda_pipe(
            prompts,
            ip_adapter_image=images,
            ip_adapter_scale=given,
            num_inference_steps=STEPS,
            generator=seeded(1, 2),
            output_type="np",
        )
        assert output.ip_adapter_scales == given
        for item, scale in enumerate(given):
            diffusers_pipe.set_ip_adapter_scale(scale if isinstance(scale, list) else [scale, scale])
            theirs = generate(
                diffusers_pipe,
                DEFAULT_PROMPT_PREFIX + prompts[item],
                negative_prompt=DEFAULT_NEGATIVE_PROMPT,
                ip_adapter_image=[images[item], images[item]],
                seeds=(item + 1,),
            )
            assert_close(output.images[item], theirs[0])
    # Each adapter gets its own λ, or the second equality proves nothing.
    diffusers_pipe.set_ip_adapter_scale([0.9, 0.3])
    swapped = generate(
        diffusers_pipe,
        DEFAULT_PROMPT_PREFIX + "a cat",
        negative_prompt=DEFAULT_NEGATIVE_PROMPT,
        ip_adapter_image=[images[0], images[0]],
    )
    assert_differs(output.images[0], swapped[0])
    with pytest.raises(ValueError, match=r"has shape \(2, 3\) for 2 items and 2 IP-Adapters"):
        dalda_pipe(prompts, ip_adapter_image=images, ip_adapter_scale=[[0.1] * 3] * 2, num_inference_steps=1)
