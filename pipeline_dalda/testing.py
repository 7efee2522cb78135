"""Offline model kit: tiny, randomly initialised models with the real architectures, saved to disk.

No weights can be downloaded in offline CI. These folders have the layouts of the real checkpoints, so tests, the
offline demo and users' own CI load them with the same calls as the real models:

    paths = save_tiny_models("tiny")
    pipe = DALDAPipeline.from_pretrained(paths.stable_diffusion, clip_model=..., clip_processor=...)
    pipe.load_ip_adapter(paths.ip_adapter, subfolder="models", weight_name=IP_ADAPTER_WEIGHT_NAME)

Random weights make noise images: the kit checks mechanics and equivalence, never image quality.
"""

import os
from dataclasses import dataclass
from pathlib import Path

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

from .pipeline import DALDA_SCHEDULER_CONFIG


IP_ADAPTER_SUBFOLDER = "models"
IP_ADAPTER_WEIGHT_NAME = "ip-adapter_sd15.safetensors"

_HIDDEN_SIZE = 32
_IMAGE_SIZE = 32
_IP_ADAPTER_TOKENS = 4
_MAX_TOKENS = 256


@dataclass(frozen=True)
class TinyModelPaths:
    """Where [`save_tiny_models`] put each model."""

    stable_diffusion: Path
    """A Stable Diffusion 1.x pipeline folder (UNet, VAE, CLIP text encoder and tokenizer, DDIM scheduler)."""
    ip_adapter: Path
    """An `h94/IP-Adapter`-shaped repo: `models/ip-adapter_sd15.safetensors` and `models/image_encoder/`."""
    clip_scorer: Path
    """A CLIP model and processor folder for CLIPScore; also the CLIP backbone of `dalda evaluate`."""
    resnet: Path
    """A ResNet and its image processor in `microsoft/resnet-50`'s layout: the image-model backbone of
    `dalda evaluate`."""


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP tokenizer built locally: every byte is a token, so any text tokenizes.

    Its context is longer than CLIP's 77 tokens, since one byte per token would truncate ordinary prompts."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = ["<|startoftext|>", "<|endoftext|>"] + alphabet + [symbol + "</w>" for symbol in alphabet]
    return CLIPTokenizer(
        vocab={token: index for index, token in enumerate(tokens)}, merges=[], model_max_length=_MAX_TOKENS
    )


def _text_config(vocab_size: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=_HIDDEN_SIZE,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=_MAX_TOKENS,
        projection_dim=_HIDDEN_SIZE,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def _vision_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=_HIDDEN_SIZE,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=_IMAGE_SIZE,
        patch_size=4,
        projection_dim=_HIDDEN_SIZE,
    )


def _image_processor() -> CLIPImageProcessor:
    return CLIPImageProcessor(size={"shortest_edge": _IMAGE_SIZE}, crop_size=_IMAGE_SIZE)


def save_tiny_stable_diffusion(output_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Saves a tiny SD 1.x pipeline: 64×64 px images, 32-channel latents with cross-attention in both resolutions."""
    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=_IMAGE_SIZE,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=_HIDDEN_SIZE,
        attention_head_dim=(2, 4),
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=2 * _IMAGE_SIZE,
    )
    text_encoder = CLIPTextModel(_text_config(len(tokenizer)))
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


def save_tiny_ip_adapter(output_dir: str | os.PathLike, stable_diffusion_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Saves an IP-Adapter for the tiny UNet in the `h94/IP-Adapter` layout, with its CLIP vision encoder.

    Weights are drawn larger than a default init so that λ visibly changes the output of a random model.
    """
    generator = torch.Generator().manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(Path(stable_diffusion_dir), subfolder="unet")
    cross_attention_dim = unet.config.cross_attention_dim

    def random(*shape):
        return torch.randn(*shape, generator=generator) / shape[-1] ** 0.5

    state_dict = {
        "image_proj.proj.weight": random(_IP_ADAPTER_TOKENS * cross_attention_dim, _HIDDEN_SIZE),
        "image_proj.proj.bias": torch.zeros(_IP_ADAPTER_TOKENS * cross_attention_dim),
        "image_proj.norm.weight": torch.ones(cross_attention_dim),
        "image_proj.norm.bias": torch.zeros(cross_attention_dim),
    }
    # The released checkpoints number the UNet's attention layers in processor order and keep the odd ones, the
    # cross-attentions, each with key/value projections into that layer's width.
    cross_attentions = [name for name in unet.attn_processors if name.endswith("attn2.processor")]
    for layer, name in enumerate(cross_attentions):
        hidden_size = unet.get_submodule(name.removesuffix(".processor")).to_k.out_features
        state_dict[f"ip_adapter.{2 * layer + 1}.to_k_ip.weight"] = 4 * random(hidden_size, cross_attention_dim)
        state_dict[f"ip_adapter.{2 * layer + 1}.to_v_ip.weight"] = 4 * random(hidden_size, cross_attention_dim)

    output_dir = Path(output_dir)
    weights_dir = output_dir / IP_ADAPTER_SUBFOLDER
    weights_dir.mkdir(parents=True, exist_ok=True)
    save_file(state_dict, str(weights_dir / IP_ADAPTER_WEIGHT_NAME))
    torch.manual_seed(seed)
    CLIPVisionModelWithProjection(_vision_config()).save_pretrained(weights_dir / "image_encoder")
    return output_dir


def save_tiny_clip_scorer(output_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Saves a tiny CLIP model and processor for CLIPScore (the role of `openai/clip-vit-base-patch16`)."""
    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    config = CLIPConfig(
        text_config=_text_config(len(tokenizer)).to_dict(),
        vision_config=_vision_config().to_dict(),
        projection_dim=_HIDDEN_SIZE,
    )
    output_dir = Path(output_dir)
    CLIPModel(config).save_pretrained(output_dir)
    CLIPProcessor(image_processor=_image_processor(), tokenizer=tokenizer).save_pretrained(output_dir)
    return output_dir


def save_tiny_resnet(output_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Saves a tiny ResNet (two basic stages, 16 features) and image processor (the role of `microsoft/resnet-50`)."""
    torch.manual_seed(seed)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    output_dir = Path(output_dir)
    ResNetModel(config).save_pretrained(output_dir)
    ConvNextImageProcessor(size={"shortest_edge": _IMAGE_SIZE}, crop_pct=1.0).save_pretrained(output_dir)
    return output_dir


def save_tiny_models(output_dir: str | os.PathLike, seed: int = 0) -> TinyModelPaths:
    """Saves the whole kit under `output_dir` and returns where each model is."""
    output_dir = Path(output_dir)
    stable_diffusion = save_tiny_stable_diffusion(output_dir / "stable-diffusion", seed=seed)
    return TinyModelPaths(
        stable_diffusion=stable_diffusion,
        ip_adapter=save_tiny_ip_adapter(output_dir / "ip-adapter", stable_diffusion, seed=seed),
        clip_scorer=save_tiny_clip_scorer(output_dir / "clip-scorer", seed=seed),
        resnet=save_tiny_resnet(output_dir / "resnet", seed=seed),
    )
