"""Offline model kit: tiny, randomly initialised models with the real architectures, saved to disk.

No weights can be downloaded in offline CI. These folders have the layouts of the real checkpoints, so tests, the
offline demo and users' own CI load them with the same calls as the real models:

    paths = save_tiny_models("tiny")
    pipe = DALDAPipeline.from_pretrained(paths.stable_diffusion, clip_model=..., clip_processor=...)
    pipe.load_ip_adapter(paths.ip_adapter, subfolder="models", weight_name=IP_ADAPTER_WEIGHT_NAME)

Random weights make noise images: the kit checks mechanics and equivalence, never image quality. The SDXL kit is in
`pipeline_dalda.testing_sdxl`; it shares this module's tokenizer, IP-Adapter writer, image encoders and scorer.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from tokenizers import pre_tokenizers
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    ConvNextImageProcessor,
    ResNetConfig,
    ResNetModel,
)

from .dalda_per_item import DALDA_SCHEDULER_CONFIG


IP_ADAPTER_SUBFOLDER = "models"
IP_ADAPTER_WEIGHT_NAME = "ip-adapter_sd15.safetensors"
IMAGE_ENCODER_FOLDER = "image_encoder"
"""The image encoder's folder inside an IP-Adapter subfolder (`load_ip_adapter`'s default `image_encoder_folder`)."""


@dataclass(frozen=True)
class KitArchitecture:
    """The configs the kit builds its models from: tiny ones for tests, or the real checkpoints' for benchmarks."""

    unet: dict[str, Any]
    """`UNet2DConditionModel` arguments."""
    vae: dict[str, Any]
    """`AutoencoderKL` arguments."""
    text_encoder: dict[str, Any]
    """`CLIPTextConfig` arguments of the text encoder (the vocabulary comes from the tokenizer)."""
    image_encoder: dict[str, Any]
    """`CLIPVisionConfig` arguments of the IP-Adapter's image encoder, the ViT-H/14 role (`models/image_encoder`)."""
    scorer_text: dict[str, Any]
    scorer_vision: dict[str, Any]
    scorer_projection: int
    """The CLIP scorer's text and vision `CLIPConfig` parts and its projection width."""
    max_tokens: int
    """The text context, in tokens."""
    ip_adapter_tokens: int = 4


_TINY_TRANSFORMER = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
_TINY_VISION = {**_TINY_TRANSFORMER, "image_size": 32, "patch_size": 4, "projection_dim": 32}

TINY = KitArchitecture(
    unet={
        "sample_size": 32,
        "layers_per_block": 1,
        "block_out_channels": (32, 64),
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": 32,
        "attention_head_dim": (2, 4),
        "norm_num_groups": 8,
    },
    vae={
        "block_out_channels": (16, 32),
        "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
        "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
        "norm_num_groups": 8,
        "sample_size": 64,
    },
    text_encoder={**_TINY_TRANSFORMER, "projection_dim": 32},
    image_encoder=_TINY_VISION,
    scorer_text=_TINY_TRANSFORMER,
    scorer_vision=_TINY_VISION,
    scorer_projection=32,
    # Longer than CLIP's 77 tokens: the byte-level tokenizer spends one token per byte.
    max_tokens=256,
)
"""64×64 px images, 32-channel latents with cross-attention in both resolutions; everything 32 wide."""

SD15 = KitArchitecture(
    unet={"sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8},  # the rest: diffusers' defaults
    vae={
        "block_out_channels": (128, 256, 512, 512),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 2,
        "sample_size": 512,
    },
    text_encoder={  # CLIP ViT-L/14's text tower
        "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
        "projection_dim": 768,
    },
    image_encoder={  # the IP-Adapter's OpenCLIP ViT-H/14
        "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 16,
        "image_size": 224, "patch_size": 14, "projection_dim": 1024,
    },
    scorer_text={"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 8},
    scorer_vision={  # openai/clip-vit-base-patch16
        "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
        "image_size": 224, "patch_size": 16,
    },
    scorer_projection=512,
    max_tokens=77,
)
"""Stable Diffusion 1.5 (UNet, VAE, text encoder), IP-Adapter SD 1.5 with its ViT-H/14 image encoder, and a
ViT-B/16 CLIP scorer, at their real sizes: for benchmarks (about 7 GB of random float32 weights)."""


@dataclass(frozen=True)
class TinyModelPaths:
    """Where [`save_tiny_models`] put each model."""

    stable_diffusion: Path
    """The pipeline folder: Stable Diffusion 1.x (UNet, VAE, CLIP text encoder and tokenizer, DDIM scheduler), or
    SDXL in the SDXL kit."""
    ip_adapter: Path
    """An `h94/IP-Adapter`-shaped repo: `models/ip-adapter_sd15.safetensors` and `models/image_encoder/`, or in the
    SDXL kit `models/image_encoder/` and `sdxl_models/`."""
    clip_scorer: Path
    """A CLIP model and processor folder for CLIPScore; also the CLIP backbone of `dalda evaluate`."""
    resnet: Path | None
    """A ResNet and its image processor in `microsoft/resnet-50`'s layout: the image-model backbone of
    `dalda evaluate` (tiny kit only)."""


def tiny_clip_tokenizer(max_tokens: int = TINY.max_tokens) -> CLIPTokenizer:
    """A byte-level CLIP tokenizer built locally: every byte is a token, so any text tokenizes."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = ["<|startoftext|>", "<|endoftext|>"] + alphabet + [symbol + "</w>" for symbol in alphabet]
    return CLIPTokenizer(
        vocab={token: index for index, token in enumerate(tokens)}, merges=[], model_max_length=max_tokens
    )


def clip_text_config(settings: dict[str, Any], vocab_size: int, max_tokens: int) -> CLIPTextConfig:
    """A CLIP text tower's config for the byte-level tokenizer: its vocabulary, context and special tokens."""
    return CLIPTextConfig(
        **settings,
        vocab_size=vocab_size,
        max_position_embeddings=max_tokens,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def _image_processor(size: int) -> CLIPImageProcessor:
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size=size)


def save_tiny_stable_diffusion(
    output_dir: str | os.PathLike, seed: int = 0, architecture: KitArchitecture = TINY
) -> Path:
    """Saves a Stable Diffusion 1.x pipeline with random weights (tiny by default)."""
    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer(architecture.max_tokens)
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, **architecture.unet)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **architecture.vae)
    text_encoder = CLIPTextModel(clip_text_config(architecture.text_encoder, len(tokenizer), architecture.max_tokens))
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**DALDA_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    output_dir = Path(output_dir)
    pipe.save_pretrained(output_dir)
    return output_dir


_RESAMPLER_DEPTH = 4
_RESAMPLER_HEAD_WIDTH = 64
_RESAMPLER_FEED_FORWARD_RATIO = 4
"""What diffusers' `IPAdapterPlusImageProjection` builds whatever the weights: 4 blocks of 64-wide heads, 4× wide
feed-forwards."""


@dataclass(frozen=True)
class ResamplerArchitecture:
    """The "plus" IP-Adapter's image projection (h94's `Resampler`, diffusers' `IPAdapterPlusImageProjection`):
    `tokens` learned queries, `hidden_size` wide, attend in 4 blocks of `heads` 64-wide heads to the image encoder's
    penultimate hidden states, and are projected to the UNet's cross-attention width."""

    hidden_size: int
    heads: int
    tokens: int


def unet_layout(pipeline_dir: str | os.PathLike) -> UNet2DConditionModel:
    """The UNet of a saved pipeline folder, built from its config on the `meta` device: its attention layers and
    their widths, which the IP-Adapter's weights follow, without reading its weights."""
    config = UNet2DConditionModel.load_config(Path(pipeline_dir), subfolder="unet")
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


def _linear_projection(random, cross_attention_dim: int, image_encoder: dict[str, Any], tokens: int) -> dict:
    """`image_proj` of `ip-adapter_sd15` and `ip-adapter_sdxl(_vit-h)`: the image embedding to `tokens` tokens."""
    return {
        "proj.weight": random(tokens * cross_attention_dim, image_encoder["projection_dim"]),
        "proj.bias": torch.zeros(tokens * cross_attention_dim),
        "norm.weight": torch.ones(cross_attention_dim),
        "norm.bias": torch.zeros(cross_attention_dim),
    }


def _resampler(random, cross_attention_dim: int, image_encoder: dict[str, Any], resampler: ResamplerArchitecture):
    """`image_proj` of `ip-adapter-plus_*`, keyed as h94's `Resampler`: `layers.N.0` the attention (`norm1` the
    image features', `norm2` the queries' layer norm), `layers.N.1` the feed-forward (LayerNorm, Linear, GELU,
    Linear)."""
    width, inner = resampler.hidden_size, resampler.heads * _RESAMPLER_HEAD_WIDTH
    feed_forward = _RESAMPLER_FEED_FORWARD_RATIO * width
    state_dict = {
        "latents": random(1, resampler.tokens, width),
        "proj_in.weight": random(width, image_encoder["hidden_size"]),
        "proj_in.bias": torch.zeros(width),
        "proj_out.weight": random(cross_attention_dim, width),
        "proj_out.bias": torch.zeros(cross_attention_dim),
        "norm_out.weight": torch.ones(cross_attention_dim),
        "norm_out.bias": torch.zeros(cross_attention_dim),
    }
    for block in range(_RESAMPLER_DEPTH):
        attention, mlp = f"layers.{block}.0", f"layers.{block}.1"
        for norm in ("norm1", "norm2"):
            state_dict[f"{attention}.{norm}.weight"] = torch.ones(width)
            state_dict[f"{attention}.{norm}.bias"] = torch.zeros(width)
        state_dict |= {
            f"{attention}.to_q.weight": random(inner, width),
            f"{attention}.to_kv.weight": random(2 * inner, width),
            f"{attention}.to_out.weight": random(width, inner),
            f"{mlp}.0.weight": torch.ones(width),
            f"{mlp}.0.bias": torch.zeros(width),
            f"{mlp}.1.weight": random(feed_forward, width),
            f"{mlp}.3.weight": random(width, feed_forward),
        }
    return state_dict


def save_ip_adapter_weights(
    path: Path,
    unet: UNet2DConditionModel,
    image_encoder: dict[str, Any],
    seed: int,
    tokens: int = 4,
    resampler: ResamplerArchitecture | None = None,
) -> None:
    """Writes one IP-Adapter weight file in h94's layout for `unet`, fed by an image encoder of config
    `image_encoder`: a linear projection of its image embedding to `tokens` tokens, or with `resampler` the "plus"
    Resampler over its hidden states; then key/value projections of those tokens into every cross-attention.

    Weights are drawn larger than a default init so that λ visibly changes the output of a random model.
    """
    generator = torch.Generator().manual_seed(seed)

    def random(*shape):
        return torch.randn(*shape, generator=generator) / shape[-1] ** 0.5

    cross_attention_dim = unet.config.cross_attention_dim
    if resampler is None:
        image_proj = _linear_projection(random, cross_attention_dim, image_encoder, tokens)
    else:
        image_proj = _resampler(random, cross_attention_dim, image_encoder, resampler)
    state_dict = {f"image_proj.{key}": value for key, value in image_proj.items()}
    # The released checkpoints number the UNet's attention layers in processor order and keep the odd ones, the
    # cross-attentions, each with key/value projections into that layer's width.
    cross_attentions = [name for name in unet.attn_processors if name.endswith("attn2.processor")]
    for layer, name in enumerate(cross_attentions):
        hidden_size = unet.get_submodule(name.removesuffix(".processor")).to_k.out_features
        state_dict[f"ip_adapter.{2 * layer + 1}.to_k_ip.weight"] = 4 * random(hidden_size, cross_attention_dim)
        state_dict[f"ip_adapter.{2 * layer + 1}.to_v_ip.weight"] = 4 * random(hidden_size, cross_attention_dim)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state_dict, str(path))


def save_image_encoder(output_dir: Path, image_encoder: dict[str, Any], seed: int) -> None:
    """Saves an IP-Adapter's CLIP vision encoder (`CLIPVisionModelWithProjection`) of config `image_encoder`."""
    torch.manual_seed(seed)
    CLIPVisionModelWithProjection(CLIPVisionConfig(**image_encoder)).save_pretrained(output_dir)


def save_tiny_ip_adapter(
    output_dir: str | os.PathLike,
    stable_diffusion_dir: str | os.PathLike,
    seed: int = 0,
    architecture: KitArchitecture = TINY,
) -> Path:
    """Saves an IP-Adapter for the kit's SD 1.x UNet in the `h94/IP-Adapter` layout: `models/ip-adapter_sd15` and
    its CLIP vision encoder (the ViT-H/14 role) in `models/image_encoder`."""
    weights_dir = Path(output_dir) / IP_ADAPTER_SUBFOLDER
    unet = unet_layout(stable_diffusion_dir)
    tokens = architecture.ip_adapter_tokens
    save_ip_adapter_weights(weights_dir / IP_ADAPTER_WEIGHT_NAME, unet, architecture.image_encoder, seed, tokens)
    save_image_encoder(weights_dir / IMAGE_ENCODER_FOLDER, architecture.image_encoder, seed)
    return Path(output_dir)


def save_tiny_clip_scorer(output_dir: str | os.PathLike, seed: int = 0, architecture: KitArchitecture = TINY) -> Path:
    """Saves a CLIP model and processor for CLIPScore (the role of `openai/clip-vit-base-patch16`)."""
    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer(architecture.max_tokens)
    config = CLIPConfig(
        text_config=clip_text_config(architecture.scorer_text, len(tokenizer), architecture.max_tokens).to_dict(),
        vision_config=CLIPVisionConfig(**architecture.scorer_vision).to_dict(),
        projection_dim=architecture.scorer_projection,
    )
    output_dir = Path(output_dir)
    CLIPModel(config).save_pretrained(output_dir)
    processor = _image_processor(architecture.scorer_vision["image_size"])
    CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(output_dir)
    return output_dir


def save_tiny_resnet(output_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Saves a tiny ResNet (two basic stages, 16 features) and image processor (the role of `microsoft/resnet-50`)."""
    torch.manual_seed(seed)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    output_dir = Path(output_dir)
    ResNetModel(config).save_pretrained(output_dir)
    image_size = TINY.scorer_vision["image_size"]
    ConvNextImageProcessor(size={"shortest_edge": image_size}, crop_pct=1.0).save_pretrained(output_dir)
    return output_dir


def save_tiny_models(
    output_dir: str | os.PathLike, seed: int = 0, architecture: KitArchitecture = TINY
) -> TinyModelPaths:
    """Saves the whole kit under `output_dir` and returns where each model is; [`SD15`] saves the real sizes
    (without the evaluation's ResNet)."""
    output_dir = Path(output_dir)
    stable_diffusion = save_tiny_stable_diffusion(output_dir / "stable-diffusion", seed, architecture)
    return TinyModelPaths(
        stable_diffusion=stable_diffusion,
        ip_adapter=save_tiny_ip_adapter(output_dir / "ip-adapter", stable_diffusion, seed, architecture),
        clip_scorer=save_tiny_clip_scorer(output_dir / "clip-scorer", seed, architecture),
        resnet=save_tiny_resnet(output_dir / "resnet", seed=seed) if architecture is TINY else None,
    )
