"""The offline model kit's SDXL part: a Stable Diffusion XL pipeline and h94's SDXL IP-Adapter files, with random
weights, in the real checkpoints' layouts:

    paths = save_tiny_sdxl_models("tiny-sdxl")
    pipe = StableDiffusionXLPipeline.from_pretrained(paths.stable_diffusion)
    pipe.load_ip_adapter(paths.ip_adapter, **dataclasses.asdict(SDXL_VIT_H_IP_ADAPTER))

Its IP-Adapter folder holds what `h94/IP-Adapter` holds for SDXL: `sdxl_models/ip-adapter_sdxl.safetensors` with
its ViT-bigG/14 image encoder in `sdxl_models/image_encoder/`, and `sdxl_models/ip-adapter_sdxl_vit-h.safetensors`
and `sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors`, which take SD 1.5's ViT-H/14 encoder in
`models/image_encoder/`. That encoder and the CLIP scorer are the SD 1.x kit's, byte for byte: saved into one folder,
[`save_tiny_models`] and [`save_tiny_sdxl_models`] make one `h94/IP-Adapter`-shaped folder, `models/` beside
`sdxl_models/`, as on the Hub.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from .testing import (
    IMAGE_ENCODER_FOLDER,
    IP_ADAPTER_SUBFOLDER,
    SD15,
    TINY,
    KitArchitecture,
    ResamplerArchitecture,
    TinyModelPaths,
    clip_text_config,
    save_image_encoder,
    save_ip_adapter_weights,
    save_tiny_clip_scorer,
    tiny_clip_tokenizer,
    unet_layout,
)


SDXL_IP_ADAPTER_SUBFOLDER = "sdxl_models"


@dataclass(frozen=True)
class IPAdapterWeights:
    """One weight file of an `h94/IP-Adapter`-shaped folder and the image encoder it was trained with, as
    `load_ip_adapter(folder, **dataclasses.asdict(weights))` takes them.

    `image_encoder_folder` is `load_ip_adapter`'s: a bare name is inside `subfolder`, a path with a "/" is from the
    folder's root.
    """

    subfolder: str
    weight_name: str
    image_encoder_folder: str


SDXL_IP_ADAPTER = IPAdapterWeights(SDXL_IP_ADAPTER_SUBFOLDER, "ip-adapter_sdxl.safetensors", IMAGE_ENCODER_FOLDER)
"""IP-Adapter SDXL with its ViT-bigG/14 image encoder (`sdxl_models/image_encoder`)."""
SDXL_VIT_H_IP_ADAPTER = IPAdapterWeights(
    SDXL_IP_ADAPTER_SUBFOLDER, "ip-adapter_sdxl_vit-h.safetensors", f"{IP_ADAPTER_SUBFOLDER}/{IMAGE_ENCODER_FOLDER}"
)
"""IP-Adapter SDXL on SD 1.5's ViT-H/14 image encoder (`models/image_encoder`)."""
SDXL_PLUS_VIT_H_IP_ADAPTER = IPAdapterWeights(
    SDXL_IP_ADAPTER_SUBFOLDER,
    "ip-adapter-plus_sdxl_vit-h.safetensors",
    f"{IP_ADAPTER_SUBFOLDER}/{IMAGE_ENCODER_FOLDER}",
)
"""IP-Adapter Plus SDXL (the Resampler over the image encoder's hidden states) on the ViT-H/14 image encoder."""

SDXL_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
    "timestep_spacing": "leading",
    "steps_offset": 1,
}
"""`EulerDiscreteScheduler` as `stabilityai/stable-diffusion-xl-base-1.0` ships it (its scheduler_config.json, less
the keys Euler ignores). The kit keeps SDXL's scheduler so that what replaces it with DALDA's DDIM is tested on what
users load."""

_ADD_TIME_IDS = 6
"""SDXL's micro-conditioning: original size, crop top-left and target size, two numbers each."""


@dataclass(frozen=True, kw_only=True)
class SDXLKitArchitecture(KitArchitecture):
    """The configs of the SDXL kit: [`KitArchitecture`]'s, where `text_encoder` is the first text encoder (CLIP
    ViT-L/14's role) and `image_encoder` the ViT-H/14 of `models/image_encoder`, and SDXL's own parts.

    The UNet's conditioning widths follow from the text encoders, as in SDXL: `cross_attention_dim` is the two
    encoders' hidden sizes side by side, `projection_class_embeddings_input_dim` is 6 time ids of
    `addition_time_embed_dim` each and the second encoder's pooled projection.
    """

    text_encoder_2: dict[str, Any]
    """`CLIPTextConfig` arguments of the second text encoder (`CLIPTextModelWithProjection`, OpenCLIP ViT-bigG/14's
    text tower)."""
    vit_bigg_encoder: dict[str, Any] | None
    """`CLIPVisionConfig` arguments of `sdxl_models/image_encoder` (ViT-bigG/14's role), which `ip-adapter_sdxl`
    takes; None saves neither (the ViT-H adapters only)."""
    resampler: ResamplerArchitecture
    """The Resampler of `ip-adapter-plus_sdxl_vit-h`."""

    def unet_config(self) -> dict[str, Any]:
        """`UNet2DConditionModel` arguments: `unet` with the conditioning widths the text encoders give."""
        return {
            **self.unet,
            "cross_attention_dim": self.text_encoder["hidden_size"] + self.text_encoder_2["hidden_size"],
            "projection_class_embeddings_input_dim": _ADD_TIME_IDS * self.unet["addition_time_embed_dim"]
            + self.text_encoder_2["projection_dim"],
        }


TINY_SDXL = SDXLKitArchitecture(
    unet={
        "sample_size": 32,
        "layers_per_block": 1,
        "block_out_channels": (32, 64),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "attention_head_dim": (2, 4),
        "transformer_layers_per_block": (1, 2),
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 8,
        "use_linear_projection": True,
        "norm_num_groups": 8,
    },
    vae={**TINY.vae, "scaling_factor": 0.13025, "force_upcast": True},
    text_encoder=TINY.text_encoder,
    text_encoder_2={**TINY.text_encoder, "hidden_size": 48, "projection_dim": 40},
    image_encoder=TINY.image_encoder,
    vit_bigg_encoder={**TINY.image_encoder, "hidden_size": 48, "projection_dim": 40},
    resampler=ResamplerArchitecture(hidden_size=32, heads=1, tokens=16),
    scorer_text=TINY.scorer_text,
    scorer_vision=TINY.scorer_vision,
    scorer_projection=TINY.scorer_projection,
    max_tokens=TINY.max_tokens,
)
"""64×64 px images from 32×32 latents, cross-attention (2 transformer layers) in the lower resolution only, as in
diffusers' own SDXL tests. The two text encoders differ in width (32 and 48, pooled projection 40) and the two image
encoders in width and projection (ViT-H role 32/32, ViT-bigG role 48/40), so that mixing them up fails."""

SDXL = SDXLKitArchitecture(
    unet={  # stabilityai/stable-diffusion-xl-base-1.0's unet/config.json; the rest: diffusers' defaults
        "sample_size": 128,
        "block_out_channels": (320, 640, 1280),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "attention_head_dim": (5, 10, 20),
        "transformer_layers_per_block": (1, 2, 10),
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
        "use_linear_projection": True,
    },
    vae={**SD15.vae, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
    text_encoder=SD15.text_encoder,  # CLIP ViT-L/14's text tower, as in SD 1.5
    text_encoder_2={  # OpenCLIP ViT-bigG/14's text tower
        "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
        "projection_dim": 1280, "hidden_act": "gelu",
    },
    image_encoder=SD15.image_encoder,  # OpenCLIP ViT-H/14
    vit_bigg_encoder=None,
    resampler=ResamplerArchitecture(hidden_size=1280, heads=20, tokens=16),
    scorer_text=SD15.scorer_text,
    scorer_vision=SD15.scorer_vision,
    scorer_projection=SD15.scorer_projection,
    max_tokens=77,
)
"""SDXL base 1.0 (UNet, VAE, both text encoders), IP-Adapter SDXL on the ViT-H/14 image encoder (linear and plus) and
a ViT-B/16 CLIP scorer, at their real sizes: for benchmarks (about 20 GB of random float32 weights). The ViT-bigG
image encoder (1.8 B parameters) is left out so that the whole fits in 24 GiB of memory; the text encoders differ from
the real ones only in their vocabulary (the kit's 514 byte-level tokens for CLIP's 49,408)."""


def build_sdxl_models(architecture: SDXLKitArchitecture, vocab_size: int) -> dict[str, torch.nn.Module]:
    """The SDXL pipeline's models (`unet`, `vae`, `text_encoder`, `text_encoder_2`) with random weights drawn from
    torch's global generator; built under `with torch.device("meta"):` they allocate nothing (to count the parameters
    of [`SDXL`])."""
    max_tokens = architecture.max_tokens
    return {
        "unet": UNet2DConditionModel(in_channels=4, out_channels=4, **architecture.unet_config()),
        "vae": AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **architecture.vae),
        "text_encoder": CLIPTextModel(clip_text_config(architecture.text_encoder, vocab_size, max_tokens)),
        "text_encoder_2": CLIPTextModelWithProjection(
            clip_text_config(architecture.text_encoder_2, vocab_size, max_tokens)
        ),
    }


def save_tiny_sdxl(
    output_dir: str | os.PathLike, seed: int = 0, architecture: SDXLKitArchitecture = TINY_SDXL
) -> Path:
    """Saves an SDXL pipeline with random weights (tiny by default); both tokenizers are the kit's byte-level one."""
    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer(architecture.max_tokens)
    pipe = StableDiffusionXLPipeline(
        **build_sdxl_models(architecture, len(tokenizer)),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER_CONFIG),
        force_zeros_for_empty_prompt=True,  # as in SDXL base's model_index.json
    )
    output_dir = Path(output_dir)
    pipe.save_pretrained(output_dir)
    return output_dir


def save_tiny_sdxl_ip_adapter(
    output_dir: str | os.PathLike,
    sdxl_dir: str | os.PathLike,
    seed: int = 0,
    architecture: SDXLKitArchitecture = TINY_SDXL,
) -> Path:
    """Saves h94's SDXL IP-Adapter files for the kit's SDXL UNet, with their image encoders, in the `h94/IP-Adapter`
    layout (the module's docstring lists them)."""
    output_dir = Path(output_dir)
    unet = unet_layout(sdxl_dir)
    weights_dir = output_dir / SDXL_IP_ADAPTER_SUBFOLDER
    # The SD 1.x kit's ViT-H encoder, with its seed: the same files, whichever kit wrote them.
    save_image_encoder(output_dir / SDXL_VIT_H_IP_ADAPTER.image_encoder_folder, architecture.image_encoder, seed)
    tokens = architecture.ip_adapter_tokens
    if architecture.vit_bigg_encoder is not None:
        save_image_encoder(weights_dir / SDXL_IP_ADAPTER.image_encoder_folder, architecture.vit_bigg_encoder, seed)
        save_ip_adapter_weights(
            weights_dir / SDXL_IP_ADAPTER.weight_name, unet, architecture.vit_bigg_encoder, seed, tokens
        )
    save_ip_adapter_weights(
        weights_dir / SDXL_VIT_H_IP_ADAPTER.weight_name, unet, architecture.image_encoder, seed + 1, tokens
    )
    save_ip_adapter_weights(
        weights_dir / SDXL_PLUS_VIT_H_IP_ADAPTER.weight_name,
        unet,
        architecture.image_encoder,
        seed + 2,
        resampler=architecture.resampler,
    )
    return output_dir


def save_tiny_sdxl_models(
    output_dir: str | os.PathLike, seed: int = 0, architecture: SDXLKitArchitecture = TINY_SDXL
) -> TinyModelPaths:
    """Saves the SDXL kit under `output_dir` (`stable-diffusion-xl/`, `ip-adapter/`, `clip-scorer/`) and returns
    where each model is; [`SDXL`] saves the real sizes. It has no ResNet: the evaluation's kit is the SD 1.x one."""
    output_dir = Path(output_dir)
    sdxl = save_tiny_sdxl(output_dir / "stable-diffusion-xl", seed, architecture)
    return TinyModelPaths(
        stable_diffusion=sdxl,
        ip_adapter=save_tiny_sdxl_ip_adapter(output_dir / "ip-adapter", sdxl, seed, architecture),
        clip_scorer=save_tiny_clip_scorer(output_dir / "clip-scorer", seed, architecture),
        resnet=None,
    )
