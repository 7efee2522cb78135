"""The offline model kit's SDXL part loads as SDXL base and h94's SDXL IP-Adapters load, with diffusers' own calls."""

import dataclasses
import filecmp
import json

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, EulerDiscreteScheduler, StableDiffusionXLPipeline
from diffusers.models.embeddings import ImageProjection, IPAdapterPlusImageProjection
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from pipeline_dalda.testing_sdxl import (
    SDXL,
    SDXL_IP_ADAPTER,
    SDXL_PLUS_VIT_H_IP_ADAPTER,
    SDXL_VIT_H_IP_ADAPTER,
    TINY_SDXL,
    build_sdxl_models,
)

from .helpers import random_images


def test_the_kit_loads_as_sdxl_base(tiny_sdxl):
    folder = tiny_sdxl.stable_diffusion
    model_index = DiffusionPipeline.load_config(folder)
    assert model_index["_class_name"] == "StableDiffusionXLPipeline"  # what picks the family
    assert model_index["force_zeros_for_empty_prompt"] is True
    assert json.loads((folder / "vae" / "config.json").read_text())["force_upcast"] is True

    pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    assert type(pipe.text_encoder) is CLIPTextModel
    assert type(pipe.text_encoder_2) is CLIPTextModelWithProjection
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)
    unet = pipe.unet.config
    assert unet.addition_embed_type == "text_time" and unet.use_linear_projection
    assert tuple(unet.transformer_layers_per_block) == (1, 2)
    assert unet.cross_attention_dim == pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    time_ids = 6 * unet.addition_time_embed_dim
    assert unet.projection_class_embeddings_input_dim == time_ids + pipe.text_encoder_2.config.projection_dim


def test_the_kit_shares_the_sd_kits_vit_h_encoder_and_scorer(tiny_models, tiny_sdxl):
    """Saved into one folder, the two kits make one `h94/IP-Adapter`-shaped folder: the files they both write agree."""
    vit_h = SDXL_VIT_H_IP_ADAPTER.image_encoder_folder
    shared = {"ip-adapter": vit_h, "clip-scorer": "."}
    for folder, inside in shared.items():
        sd = tiny_models.stable_diffusion.parent / folder / inside
        sdxl = tiny_sdxl.stable_diffusion.parent / folder / inside
        files = sorted(path.name for path in sd.iterdir())
        assert files == sorted(path.name for path in sdxl.iterdir())
        _, mismatch, errors = filecmp.cmpfiles(sd, sdxl, files, shallow=False)
        assert (mismatch, errors) == ([], []), folder


def _sdxl_with_ip_adapter(tiny_sdxl, weights, image_encoder_folder=None) -> StableDiffusionXLPipeline:
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl.stable_diffusion)
    options = dataclasses.asdict(weights)
    if image_encoder_folder is not None:
        options["image_encoder_folder"] = image_encoder_folder
    pipe.load_ip_adapter(tiny_sdxl.ip_adapter, **options)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generate(pipe, scale):
    pipe.set_ip_adapter_scale(scale)
    return pipe(
        "a dog",
        ip_adapter_image=random_images(1, seed=3)[0],
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images


@pytest.mark.parametrize(
    "weights, projection, encoder_width",
    [
        (SDXL_IP_ADAPTER, ImageProjection, TINY_SDXL.vit_bigg_encoder["hidden_size"]),
        (SDXL_VIT_H_IP_ADAPTER, ImageProjection, TINY_SDXL.image_encoder["hidden_size"]),
        (SDXL_PLUS_VIT_H_IP_ADAPTER, IPAdapterPlusImageProjection, TINY_SDXL.image_encoder["hidden_size"]),
    ],
    ids=["vit-bigg", "vit-h", "plus-vit-h"],
)
def test_each_sdxl_ip_adapter_loads_with_its_image_encoder_and_its_scale_changes_the_image(
    tiny_sdxl, weights, projection, encoder_width
):
    pipe = _sdxl_with_ip_adapter(tiny_sdxl, weights)
    assert pipe.image_encoder.config.hidden_size == encoder_width
    assert type(pipe.unet.encoder_hid_proj.image_projection_layers[0]) is projection

    images = _generate(pipe, 0.5)
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()
    assert np.abs(_generate(pipe, 0.0) - _generate(pipe, 1.0)).max() > 0.05


@pytest.mark.parametrize(
    "weights, image_encoder_folder",
    [(SDXL_IP_ADAPTER, SDXL_VIT_H_IP_ADAPTER.image_encoder_folder), (SDXL_PLUS_VIT_H_IP_ADAPTER, "image_encoder")],
    ids=["vit-bigg-weights-on-vit-h", "vit-h-weights-on-vit-bigg"],
)
def test_weights_with_the_other_image_encoder_fail(tiny_sdxl, weights, image_encoder_folder):
    pipe = _sdxl_with_ip_adapter(tiny_sdxl, weights, image_encoder_folder)
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        _generate(pipe, 0.5)


def test_the_sdxl_size_kit_has_sdxl_bases_parameter_counts():
    """Built on the `meta` device (nothing allocated); the text encoders differ only in their vocabulary."""
    vocab_size = 514
    with torch.device("meta"):
        models = build_sdxl_models(SDXL, vocab_size)
    counts = {name: sum(parameter.numel() for parameter in model.parameters()) for name, model in models.items()}
    vocabulary = {"text_encoder": 768, "text_encoder_2": 1280}  # token embedding widths
    for name, width in vocabulary.items():
        counts[name] += (49_408 - vocab_size) * width
    assert counts == {
        "unet": 2_567_463_684,
        "vae": 83_653_863,
        "text_encoder": 123_060_480,
        "text_encoder_2": 694_659_840,
    }
