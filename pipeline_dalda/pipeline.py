# Copyright 2026 The dalda authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""DALDA: Stable Diffusion + IP-Adapter with Adaptive Guidance Scaling from CLIPScore.

This file is a self-contained diffusers community pipeline: it imports third-party packages only, so diffusers can
load it with `custom_pipeline=` from a folder, from a saved pipeline (as `dalda.py`) or from a Hub repository.

It holds the three parts of the method that run at generation time:

- [`CLIPScorer`]: how well a real image matches its class name, as CLIP sees it.
- [`AdaptiveGuidanceScaling`]: the IP-Adapter weight λ drawn from that score.
- [`DALDAPipeline`]: Stable Diffusion with IP-Adapter, denoising a batch in which every item has its own λ.
"""

import inspect
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import PIL.Image
import scipy.stats
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.models.attention_processor import (
    Attention,
    IPAdapterAttnProcessor,
    IPAdapterAttnProcessor2_0,
    IPAdapterXFormersAttnProcessor,
)
from diffusers.models.embeddings import ImageProjection
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput, logging
from transformers import (
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)


logger = logging.get_logger(__name__)

DEFAULT_CLIP_SCORE_MODEL = "openai/clip-vit-base-patch16"
DEFAULT_PROMPT_PREFIX = "best quality, high quality, "
DEFAULT_NEGATIVE_PROMPT = "monochrome, lowres, bad anatomy, worst quality, low quality"
CLASS_PROMPT_TEMPLATE = "a photo of a {}"
# DDIM settings of DALDA's released code, for `DDIMScheduler.from_config(pipe.scheduler.config, **...)`.
DALDA_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}

CLIP_SCORE_MODES = ("probability", "cosine")
AGS_MODES = ("truncnorm", "reference", "random", "fixed")

_IP_ADAPTER_PROCESSORS = (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0, IPAdapterXFormersAttnProcessor)


def class_prompt(class_name: str, template: str = CLASS_PROMPT_TEMPLATE) -> str:
    """The prompt that names a class, with the class name as it reads in a sentence: `golden_retriever` → "a photo
    of a golden retriever". Hub datasets often spell labels in snake_case; CLIP scores the words, not the label.

    (The same reading as `pipeline_dalda.prompts.matching.display_name`; this file imports no dalda code.)
    """
    return template.format(" ".join(class_name.replace("_", " ").split()))


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Returns `image` as 8-bit RGB, whatever mode it arrived in.

    Transparent images are composited on white (dropping alpha would show whatever colour hides under transparent
    pixels, often black), and 16-bit or float images are rescaled to 8 bits instead of being clipped.
    """
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16"):
            values = values / 65535.0
        else:
            low, high = float(values.min()), float(values.max())
            values = (values - low) / (high - low) if high > low else np.zeros_like(values)
        gray = np.clip(np.round(values * 255.0), 0, 255).astype(np.uint8)
        return PIL.Image.fromarray(gray, mode="L").convert("RGB")
    return image.convert("RGB")


@dataclass(frozen=True)
class AdaptiveGuidanceScaling:
    r"""
    Adaptive Guidance Scaling (AGS): samples the IP-Adapter weight λ of each synthetic image from its real image's
    CLIPScore.

    A low score means the text prompt could pull the image out of its class, so λ is drawn high (stay close to the
    real image); a high score lets λ be low, so the text prompt adds diversity. With threshold α, a score `s <= α`
    uses the low-score range `[low_min, low_max]` and a score `s > α` the high-score range `[high_min, high_max]`:

        μ = min + (max − min) · (1 − s),   σ = sigma_per_shot · n,   λ ~ TruncatedNormal(μ, σ², min, max)

    Args:
        mode (`str`, defaults to `"truncnorm"`):
            `"truncnorm"`: a true truncated normal, every sample inside its range. `"reference"`: the authors'
            released code, a normal draw clamped to the low range, or to `[high_min, high_max + 0.1·√n]` for high
            scores (clamping piles mass on the bounds). `"random"`: λ ~ Uniform[0, 1] (ablation). `"fixed"`: λ =
            `fixed_scale` for every image (ablation).
        threshold (`float`, defaults to 0.3): α, in [0, 1].
        low_min, low_max (`float`, defaults to 0.7 and 0.9): range of λ for scores `<= threshold`.
        high_min, high_max (`float`, defaults to 0.1 and 0.4): range of λ for scores `> threshold`.
        sigma_per_shot (`float`, defaults to 0.05): σ per real example of a class, so σ = 0.05 · n.
        sigma (`float`, *optional*): a fixed σ that overrides `sigma_per_shot · n`.
        fixed_scale (`float`, *optional*): λ for every image; required by the `"fixed"` mode.
    """

    mode: str = "truncnorm"
    threshold: float = 0.3
    low_min: float = 0.7
    low_max: float = 0.9
    high_min: float = 0.1
    high_max: float = 0.4
    sigma_per_shot: float = 0.05
    sigma: float | None = None
    fixed_scale: float | None = None

    def __post_init__(self):
        if self.mode not in AGS_MODES:
            raise ValueError(f"`mode` must be one of {AGS_MODES}, got {self.mode!r}.")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"`threshold` (α) must lie in [0, 1], got {self.threshold}.")
        for name in ("low_min", "low_max", "high_min", "high_max", "sigma_per_shot"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"`{name}` must be a finite number, got {getattr(self, name)}.")
        if self.low_min > self.low_max:
            raise ValueError(f"`low_min` ({self.low_min}) must not exceed `low_max` ({self.low_max}).")
        if self.high_min > self.high_max:
            raise ValueError(f"`high_min` ({self.high_min}) must not exceed `high_max` ({self.high_max}).")
        if self.sigma_per_shot <= 0:
            raise ValueError(f"`sigma_per_shot` must be > 0, got {self.sigma_per_shot}.")
        if self.sigma is not None and not self.sigma > 0:
            raise ValueError(f"`sigma` must be > 0, got {self.sigma}.")
        if self.mode == "fixed" and (self.fixed_scale is None or not math.isfinite(self.fixed_scale)):
            raise ValueError(f"`fixed_scale` must be a finite number in the 'fixed' mode, got {self.fixed_scale}.")

    def standard_deviation(self, num_shots: int) -> float:
        """σ for a dataset with `num_shots` real examples per class."""
        if isinstance(num_shots, bool) or not isinstance(num_shots, (int, np.integer)) or num_shots < 1:
            raise ValueError(f"`num_shots` (real examples per class) must be an integer >= 1, got {num_shots!r}.")
        return self.sigma if self.sigma is not None else self.sigma_per_shot * int(num_shots)

    def distribution(self, clip_scores: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Returns the mean μ and the range `[low, high]` that each score's λ is drawn from, one entry per score."""
        scores = np.asarray(clip_scores, dtype=np.float64).reshape(-1)
        not_finite = np.flatnonzero(~np.isfinite(scores))
        if not_finite.size:
            raise ValueError(f"`clip_scores[{not_finite[0]}]` is {scores[not_finite[0]]}; CLIPScores must be finite.")
        is_low = scores <= self.threshold
        low = np.where(is_low, self.low_min, self.high_min)
        high = np.where(is_low, self.low_max, self.high_max)
        mean = low + (high - low) * (1.0 - scores)
        return mean, low, high

    def sample(
        self,
        clip_scores: Sequence[float] | np.ndarray,
        num_shots: int = 1,
        generator: np.random.Generator | int | None = None,
    ) -> np.ndarray:
        """
        Draws one λ per CLIPScore.

        Args:
            clip_scores: the CLIPScore of each item's real image.
            num_shots: real examples per class (n), which sets σ.
            generator: a NumPy generator or a seed; the same seed gives the same λ's.

        Returns:
            `np.ndarray` of float64, one λ per score.
        """
        mean, low, high = self.distribution(clip_scores)
        sigma = self.standard_deviation(num_shots)
        rng = np.random.default_rng(generator)
        if self.mode == "fixed":
            return np.full(mean.shape, float(self.fixed_scale))
        if self.mode == "random":
            return rng.uniform(0.0, 1.0, size=mean.shape)
        if self.mode == "reference":
            # The released code clamps instead of truncating, and widens the high range's top with √n.
            is_high = np.asarray(clip_scores, dtype=np.float64).reshape(-1) > self.threshold
            top = np.where(is_high, self.high_max + 0.1 * math.sqrt(num_shots), high)
            return np.clip(rng.normal(mean, sigma), low, top)
        if mean.size == 0:
            return mean
        return scipy.stats.truncnorm.rvs(
            (low - mean) / sigma, (high - mean) / sigma, loc=mean, scale=sigma, size=mean.shape, random_state=rng
        )


class CLIPScorer:
    r"""
    Scores how well each image matches its class name ("a photo of a {class}", see [`class_prompt`]) with a CLIP
    model. Images are scored as given: the CLIP image processor resizes and crops them itself.

    Args:
        model ([`~transformers.CLIPModel`]): the scoring model, e.g. `openai/clip-vit-base-patch16`.
        processor ([`~transformers.CLIPProcessor`]): its image processor and tokenizer.
        mode (`str`, defaults to `"probability"`):
            `"probability"`: the softmax over CLIP's logits of the image against every class prompt of the dataset,
            read at the image's own class (what produced the paper's numbers). `"cosine"`: the cosine similarity of
            the image and class-prompt embeddings.
        prompt_template (`str`, defaults to `"a photo of a {}"`): how a class name becomes a text prompt.
    """

    def __init__(
        self,
        model: CLIPModel,
        processor: CLIPProcessor,
        mode: str = "probability",
        prompt_template: str = CLASS_PROMPT_TEMPLATE,
    ):
        if mode not in CLIP_SCORE_MODES:
            raise ValueError(f"`mode` must be one of {CLIP_SCORE_MODES}, got {mode!r}.")
        self.model = model
        self.processor = processor
        self.mode = mode
        self.prompt_template = prompt_template
        self._cached_classes: tuple[str, ...] | None = None
        self._cached_text_embeds: torch.Tensor | None = None

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike = DEFAULT_CLIP_SCORE_MODEL,
        mode: str = "probability",
        **kwargs,
    ) -> "CLIPScorer":
        """Loads the scoring model and processor from a Hub id or a local folder (`kwargs` go to both loaders)."""
        model = CLIPModel.from_pretrained(pretrained_model_name_or_path, **kwargs)
        processor = CLIPProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs)
        return cls(model.eval(), processor, mode=mode)

    @property
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def class_embeddings(self, class_names: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """L2-normalised text embeddings of every class prompt; the last class list's embeddings are kept."""
        class_names = tuple(class_names)
        if not class_names:
            raise ValueError("`class_names` is empty; CLIPScore needs the dataset's classes.")
        if class_names != self._cached_classes:
            prompts = [class_prompt(name, self.prompt_template) for name in class_names]
            chunks = []
            for start in range(0, len(prompts), batch_size):
                tokens = self.processor.tokenizer(
                    prompts[start : start + batch_size], padding=True, truncation=True, return_tensors="pt"
                ).to(self._device)
                text_output = self.model.text_model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
                chunks.append(self.model.text_projection(text_output.pooler_output))
            self._cached_text_embeds = F.normalize(torch.cat(chunks).float(), dim=-1)
            self._cached_classes = class_names
        return self._cached_text_embeds

    @torch.no_grad()
    def image_embeddings(self, images: Sequence[PIL.Image.Image]) -> torch.Tensor:
        """L2-normalised image embeddings."""
        pixel_values = self.processor.image_processor(
            images=[to_rgb(image) for image in images], return_tensors="pt"
        ).pixel_values
        dtype = next(self.model.parameters()).dtype
        vision_output = self.model.vision_model(pixel_values=pixel_values.to(self._device, dtype))
        return F.normalize(self.model.visual_projection(vision_output.pooler_output).float(), dim=-1)

    @torch.no_grad()
    def __call__(
        self,
        images: Sequence[PIL.Image.Image],
        labels: Sequence[int],
        class_names: Sequence[str],
    ) -> torch.Tensor:
        """
        Scores each image against its own class.

        Args:
            images: the real images (any PIL mode).
            labels: each image's class, as an index into `class_names`.
            class_names: every class of the dataset (the probability mode normalises over all of them).

        Returns:
            `torch.Tensor` of float32 on the CPU, one score per image.
        """
        if len(images) != len(labels):
            raise ValueError(f"Got {len(images)} images but {len(labels)} labels; they must pair up.")
        if len(images) == 0:
            return torch.empty(0)
        text_embeds = self.class_embeddings(class_names)
        for item, label in enumerate(labels):
            if not 0 <= int(label) < len(class_names):
                raise ValueError(f"`labels[{item}]` is {label}, outside the {len(class_names)} classes.")
        image_embeds = self.image_embeddings(images)
        labels = torch.as_tensor(labels, dtype=torch.long, device=image_embeds.device)
        if self.mode == "cosine":
            scores = (image_embeds * text_embeds[labels]).sum(dim=-1)
        else:
            logits = self.model.logit_scale.exp().float() * image_embeds @ text_embeds.T
            scores = logits.softmax(dim=-1).gather(1, labels[:, None]).squeeze(1)
        return scores.cpu()


class PerItemIPAdapterAttnProcessor(torch.nn.Module):
    r"""
    IP-Adapter decoupled cross-attention, `Z = Attn(Q, K_t, V_t) + λ_b · Attn(Q, K_i, V_i)`, with one λ per batch
    item `b`.

    diffusers' IP-Adapter processors hold one scale for the whole batch. This one reuses an IP-Adapter processor's
    key/value projections (shared, not copied) and multiplies the image branch by a per-item scale, so a batch
    whose items have different λ's is denoised in one pass; item for item it computes what the diffusers
    processor computes at that item's λ.

    Args:
        ip_adapter_processor: a loaded diffusers IP-Adapter processor whose weights are used.
        item_scales (`torch.Tensor`): λ per item of the UNet batch, shape `(batch,)`; with classifier-free guidance
            the UNet batch is `[uncond..., cond...]`, so λ's appear twice.
    """

    def __init__(self, ip_adapter_processor: torch.nn.Module, item_scales: torch.Tensor):
        super().__init__()
        self.to_k_ip = ip_adapter_processor.to_k_ip
        self.to_v_ip = ip_adapter_processor.to_v_ip
        self.item_scales = item_scales

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: tuple[torch.Tensor, list[torch.Tensor]],
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if not isinstance(encoder_hidden_states, tuple):
            raise ValueError("The per-item IP-Adapter processor expects `(text_states, ip_states)` from the UNet.")
        encoder_hidden_states, ip_hidden_states = encoder_hidden_states
        residual = hidden_states

        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        batch_size, sequence_length, _ = encoder_hidden_states.shape
        if batch_size != self.item_scales.shape[0]:
            raise ValueError(f"UNet batch of {batch_size} but {self.item_scales.shape[0]} per-item IP-Adapter scales.")

        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

        hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        scales = self.item_scales.to(device=hidden_states.device, dtype=hidden_states.dtype).view(-1, 1, 1)
        for ip_states, to_k_ip, to_v_ip in zip(ip_hidden_states, self.to_k_ip, self.to_v_ip):
            ip_key = to_k_ip(ip_states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            ip_value = to_v_ip(ip_states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            ip_attention = F.scaled_dot_product_attention(query, ip_key, ip_value)
            ip_attention = ip_attention.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
            hidden_states = hidden_states + scales * ip_attention.to(query.dtype)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextmanager
def per_item_ip_adapter_scales(unet: torch.nn.Module, item_scales: torch.Tensor) -> Iterator[None]:
    """Within the block, every IP-Adapter attention of `unet` applies `item_scales` (one λ per UNet batch item).

    The UNet's own processors are put back on exit, so later calls behave exactly as before.
    """
    original_processors = unet.attn_processors
    if not any(isinstance(p, _IP_ADAPTER_PROCESSORS) for p in original_processors.values()):
        raise ValueError("No IP-Adapter is loaded; call `pipe.load_ip_adapter(...)` first.")
    unet.set_attn_processor(
        {
            name: PerItemIPAdapterAttnProcessor(processor, item_scales)
            if isinstance(processor, _IP_ADAPTER_PROCESSORS)
            else processor
            for name, processor in original_processors.items()
        }
    )
    try:
        yield
    finally:
        unet.set_attn_processor(original_processors)


def split_ip_adapter_image_embeds(
    ip_adapter_image_embeds: list[torch.Tensor], num_items: int, do_classifier_free_guidance: bool
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """Each IP-Adapter's positive rows, one per item, and the negative rows when the caller gave them.

    Told apart by the row count: `num_items` rows are one positive row per item (ours, or diffusers' layout without
    classifier-free guidance); under classifier-free guidance `2 · num_items` rows are diffusers' layout, as its
    `prepare_ip_adapter_image_embeds` returns it, `[negative rows, positive rows]` with one row per item in each half.
    The two never coincide (`num_items >= 1`).
    """
    positives, negatives = [], []
    for index, embeds in enumerate(ip_adapter_image_embeds):
        if embeds.shape[0] == num_items:
            positives.append(embeds)
        elif do_classifier_free_guidance and embeds.shape[0] == 2 * num_items:
            negative, positive = embeds.chunk(2)
            negatives.append(negative)
            positives.append(positive)
        else:
            layouts = f"{num_items} (one per item, see `encode_ip_adapter_images`)"
            if do_classifier_free_guidance:
                layouts += f" or {2 * num_items} (negative rows, then positive rows)"
            raise ValueError(
                f"`ip_adapter_image_embeds[{index}]` has {embeds.shape[0]} rows for {num_items} prompts; "
                f"give {layouts}."
            )
    if negatives and len(negatives) != len(positives):
        raise ValueError(
            "`ip_adapter_image_embeds` mixes layouts: give the negative rows for every IP-Adapter or for none."
        )
    return positives, negatives or None


def class_indices(class_labels: Sequence[int | str], class_names: Sequence[str]) -> list[int]:
    """Each item's class as an index into `class_names`; items may give a class name or an index."""
    labels = []
    for item, label in enumerate(class_labels):
        if isinstance(label, str):
            if label not in class_names:
                raise ValueError(f"`class_labels[{item}]` is {label!r}, which is not one of `class_names`.")
            labels.append(list(class_names).index(label))
        elif isinstance(label, (int, np.integer)) and not isinstance(label, bool) and 0 <= label < len(class_names):
            labels.append(int(label))
        else:
            raise ValueError(
                f"`class_labels[{item}]` is {label!r}; expected a class name or an index in [0, {len(class_names)})."
            )
    return labels


def item_ip_adapter_scales(
    num_items: int,
    ip_adapter_scale: float | Sequence[float] | None,
    clip_scores: np.ndarray | None,
    ags: AdaptiveGuidanceScaling,
    num_shots: int,
    ags_generator: np.random.Generator | int | Sequence[np.random.Generator] | None,
) -> np.ndarray:
    """Each item's λ: the caller's, or sampled with AGS from the items' CLIPScores.

    `ags_generator` is one generator (or seed) for the batch, or one generator per item; with one per item, an
    item's λ does not depend on the other items of its batch.
    """
    if ip_adapter_scale is None:
        if clip_scores is None and ags.mode in ("truncnorm", "reference"):
            raise ValueError(
                "`ip_adapter_scale=None` samples λ from CLIPScores: pass `clip_scores`, or `ip_adapter_image` with "
                "`class_names`, `class_labels` and a pipeline holding `clip_model` and `clip_processor`."
            )
        scores = clip_scores if clip_scores is not None else np.zeros(num_items)
        if isinstance(ags_generator, (list, tuple)):
            if len(ags_generator) != num_items:
                raise ValueError(f"`ags_generator` has {len(ags_generator)} generators for {num_items} items.")
            return np.array(
                [ags.sample([score], num_shots, generator)[0] for score, generator in zip(scores, ags_generator)]
            )
        return ags.sample(scores, num_shots=num_shots, generator=ags_generator)
    scales = np.asarray(ip_adapter_scale, dtype=np.float64).reshape(-1)
    if scales.size not in (1, num_items):
        raise ValueError(f"`ip_adapter_scale` has {scales.size} entries for {num_items} items; give 1 or one each.")
    scales = np.broadcast_to(scales, (num_items,)).copy()
    if not np.all(np.isfinite(scales)):
        raise ValueError(f"`ip_adapter_scale` must be finite, got {ip_adapter_scale}.")
    return scales


@dataclass
class DALDAPipelineOutput(BaseOutput):
    r"""
    Output of [`DALDAPipeline`].

    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`): the generated images, one per item.
        nsfw_content_detected (`list[bool]`, *optional*): the safety checker's verdicts, if it ran.
        ip_adapter_scales (`list[float]`, *optional*): the IP-Adapter weight λ each item was generated with; `None`
            for a text-to-image call, or when the scale set with `set_ip_adapter_scale` differs by adapter or block.
        clip_scores (`list[float]`, *optional*): each item's real-image CLIPScore, when it was known or computable.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    nsfw_content_detected: list[bool] | None
    ip_adapter_scales: list[float] | None
    clip_scores: list[float] | None


class DALDAPipeline(StableDiffusionPipeline):
    r"""
    DALDA generation: Stable Diffusion 1.x + IP-Adapter, where each item of a batch pairs a real image (the image
    prompt) with a text prompt and is generated with its own IP-Adapter weight λ, sampled by
    [`AdaptiveGuidanceScaling`] from the real image's CLIPScore or given by the caller.

    For a real image already at the generation size, each item is what [`StableDiffusionPipeline`] with
    `set_ip_adapter_scale(λ)` gives for that item alone; a real image of another size is squashed to the generation
    size before the image encoder ([`~DALDAPipeline.resize_to_generation_size`]), which diffusers does not do.

    Load an IP-Adapter with [`~loaders.IPAdapterMixin.load_ip_adapter`] before calling, e.g.
    `pipe.load_ip_adapter("h94/IP-Adapter", subfolder="models", weight_name="ip-adapter_sd15.bin")`.

    Args:
        vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor, image_encoder,
        requires_safety_checker: as in [`StableDiffusionPipeline`].
        clip_model ([`~transformers.CLIPModel`], *optional*):
            the CLIP model that scores real images for AGS (e.g. `openai/clip-vit-base-patch16`). Saved and loaded
            with the pipeline.
        clip_processor ([`~transformers.CLIPProcessor`], *optional*): its processor.
    """

    _optional_components = StableDiffusionPipeline._optional_components + ["clip_model", "clip_processor"]
    _exclude_from_cpu_offload = StableDiffusionPipeline._exclude_from_cpu_offload + ["clip_model"]

    # The component type hints are diffusers' own: `from_pipe` carries over only the components whose types match.
    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        safety_checker: StableDiffusionSafetyChecker,
        feature_extractor: CLIPImageProcessor,
        image_encoder: CLIPVisionModelWithProjection = None,
        requires_safety_checker: bool = True,
        clip_model: CLIPModel | None = None,
        clip_processor: CLIPProcessor | None = None,
    ):
        super().__init__(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=safety_checker,
            feature_extractor=feature_extractor,
            image_encoder=image_encoder,
            requires_safety_checker=requires_safety_checker,
        )
        self.register_modules(clip_model=clip_model, clip_processor=clip_processor)
        self._scorer: CLIPScorer | None = None

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs):
        """Saves the pipeline as [`DiffusionPipeline.save_pretrained`] does, plus this file as `dalda.py`, so the
        folder (or the Hub repo it is pushed to) loads with `custom_pipeline="dalda"`."""
        os.makedirs(save_directory, exist_ok=True)
        with open(inspect.getfile(DALDAPipeline), "rb") as source:
            code = source.read()
        with open(os.path.join(save_directory, "dalda.py"), "wb") as target:
            target.write(code)
        super().save_pretrained(save_directory, **kwargs)

    def clip_scorer(self, mode: str = "probability") -> CLIPScorer:
        """A [`CLIPScorer`] over the pipeline's CLIP scoring components, kept across calls so that the class
        prompts' embeddings are computed once per class list.

        The scoring model is kept in float32 whatever the pipeline's dtype: a CLIPScore within rounding of AGS's
        threshold must not change branch with the precision.
        """
        if self.clip_model is not None and self.clip_model.dtype != torch.float32:
            self.clip_model.to(torch.float32)
        scorer = self._scorer
        if (
            scorer is not None
            and scorer.model is self.clip_model
            and scorer.processor is self.clip_processor
            and scorer.mode == mode
        ):
            return scorer
        if self.clip_model is None or self.clip_processor is None:
            raise ValueError(
                "CLIPScore needs the `clip_model` and `clip_processor` components; load them with the pipeline, e.g. "
                f"`from_pretrained(..., clip_model=CLIPModel.from_pretrained({DEFAULT_CLIP_SCORE_MODEL!r}), "
                f"clip_processor=CLIPProcessor.from_pretrained({DEFAULT_CLIP_SCORE_MODEL!r}))`."
            )
        self._scorer = CLIPScorer(self.clip_model, self.clip_processor, mode=mode)
        return self._scorer

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the pipeline denoises in: the UNet's. (`DiffusionPipeline.dtype` reports the first component's,
        which can be the CLIP scoring model, kept in float32 whatever the pipeline's dtype; diffusers itself loads the
        IP-Adapter's image encoder in `pipe.dtype`.)"""
        return self.unet.dtype

    @property
    def generation_size(self) -> int:
        """The side of the square images the UNet generates by default (512 for Stable Diffusion 1.x)."""
        return self.unet.config.sample_size * self.vae_scale_factor

    def resize_to_generation_size(self, image: PIL.Image.Image) -> PIL.Image.Image:
        """`image` squashed to the generation size (bilinear), as DALDA's released code prepares a real image.

        Squashing, not cropping: the IP-Adapter's image processor then center-crops a square, which would cut the
        sides off a wide photo that had kept its shape.
        """
        return to_rgb(image).resize((self.generation_size, self.generation_size), PIL.Image.BILINEAR)

    @torch.no_grad()
    def encode_ip_adapter_images(self, images: Sequence[PIL.Image.Image]) -> list[torch.Tensor]:
        """
        Encodes real images for the loaded IP-Adapter(s), so an image reused by many items is encoded once.

        Each image is first resized to the generation size ([`~DALDAPipeline.resize_to_generation_size`]).

        Returns:
            One tensor per IP-Adapter, of shape `(len(images), 1, ...)`; index it to build a batch and pass it as
            `ip_adapter_image_embeds`.
        """
        if self.image_encoder is None:
            raise ValueError("No IP-Adapter image encoder is loaded; call `pipe.load_ip_adapter(...)` first.")
        resized = [self.resize_to_generation_size(image) for image in images]
        pixel_values = self.feature_extractor(resized, return_tensors="pt").pixel_values
        return [
            self._encode_ip_adapter_pixels(pixel_values, projection)[:, None]
            for projection in self._ip_adapter_projections()
        ]

    def _encode_ip_adapter_pixels(self, pixel_values: torch.Tensor, projection: torch.nn.Module) -> torch.Tensor:
        """What diffusers feeds an IP-Adapter projection: CLIP image embeds, or penultimate hidden states for the
        adapters whose projection is not a plain [`ImageProjection`] (e.g. IP-Adapter Plus)."""
        pixel_values = pixel_values.to(self._execution_device, next(self.image_encoder.parameters()).dtype)
        if isinstance(projection, ImageProjection):
            return self.image_encoder(pixel_values).image_embeds
        return self.image_encoder(pixel_values, output_hidden_states=True).hidden_states[-2]

    def prepare_ip_adapter_image_embeds(
        self, ip_adapter_image, ip_adapter_image_embeds, device, num_images_per_prompt, do_classifier_free_guidance
    ):
        """As in diffusers, except that precomputed embeddings with one row per generated image stay per item.

        diffusers repeats the embeddings it is given for every image of the batch, which assumes one image prompt
        for the whole batch; with one row per image that would hand each item the rows of other items.
        """
        rows_per_item = 2 if do_classifier_free_guidance else 1
        if ip_adapter_image_embeds is not None and num_images_per_prompt > 1:
            if all(embeds.shape[0] == rows_per_item * num_images_per_prompt for embeds in ip_adapter_image_embeds):
                return [embeds.to(device) for embeds in ip_adapter_image_embeds]
        return super().prepare_ip_adapter_image_embeds(
            ip_adapter_image, ip_adapter_image_embeds, device, num_images_per_prompt, do_classifier_free_guidance
        )

    def _has_ip_adapter(self) -> bool:
        return getattr(self.unet, "encoder_hid_proj", None) is not None

    def _ip_adapter_projections(self) -> list[torch.nn.Module]:
        if not self._has_ip_adapter():
            raise ValueError("No IP-Adapter is loaded; call `pipe.load_ip_adapter(...)` first.")
        return list(self.unet.encoder_hid_proj.image_projection_layers)

    def _check_ip_adapter_processors(self) -> None:
        """Says so when no IP-Adapter is loaded, or when a diffusers feature replaced its attention processors
        (diffusers' own call then fails on the image prompt with an `AttributeError`): which feature, and the way
        back."""
        self._ip_adapter_projections()
        processors = self.unet.attn_processors.values()
        if any(isinstance(processor, _IP_ADAPTER_PROCESSORS) for processor in processors):
            return
        kinds = {type(processor).__name__ for processor in processors}
        if "FusedAttnProcessor2_0" in kinds:
            raise ValueError(
                "`fuse_qkv_projections()` replaced the IP-Adapter's attention processors, which the image prompt "
                "needs; call `pipe.unfuse_qkv_projections()` first."
            )
        if kinds & {"SlicedAttnProcessor", "SlicedAttnAddedKVProcessor"}:
            raise ValueError(
                "`enable_attention_slicing()` replaced the IP-Adapter's attention processors, which the image prompt "
                "needs; call `pipe.disable_attention_slicing()`, then `pipe.unload_ip_adapter()` and "
                "`pipe.load_ip_adapter(...)` again."
            )
        raise ValueError(
            f"The IP-Adapter's attention processors, which the image prompt needs, were replaced (the UNet now has "
            f"{', '.join(sorted(kinds))}); call `pipe.unload_ip_adapter()` and `pipe.load_ip_adapter(...)` again."
        )

    @torch.no_grad()
    def _negative_ip_adapter_embeds(self, positive_embeds: list[torch.Tensor]) -> list[torch.Tensor]:
        """The unconditional image embedding diffusers uses: zeros for the adapters fed CLIP image embeds, and for
        FaceID adapters (no image encoder; diffusers' FaceID recipe passes zeros as the negative face embedding), else
        the encoder's features of a black image (IP-Adapter Plus)."""
        negatives = []
        for projection, positive in zip(self._ip_adapter_projections(), positive_embeds):
            if isinstance(projection, ImageProjection) or self.image_encoder is None:
                negatives.append(torch.zeros_like(positive))
                continue
            size = self.feature_extractor.crop_size
            black = torch.zeros(1, 3, size["height"], size["width"])
            negative = self._encode_ip_adapter_pixels(black, projection)[:, None]
            negatives.append(negative.to(positive.dtype).expand_as(positive))
        return negatives

    def _item_clip_scores(
        self,
        batch_size: int,
        clip_scores: Sequence[float] | None,
        images: list[PIL.Image.Image] | None,
        class_names: Sequence[str] | None,
        class_labels: Sequence[int | str] | None,
        clip_score_mode: str,
    ) -> np.ndarray | None:
        """Each item's CLIPScore: as given, else computed when the images, classes and scoring model are at hand."""
        if clip_scores is not None:
            scores = np.asarray(clip_scores, dtype=np.float64).reshape(-1)
            if scores.size != batch_size:
                raise ValueError(f"`clip_scores` has {scores.size} entries for {batch_size} items.")
            return scores
        if images is None or class_names is None or class_labels is None or self.clip_model is None:
            return None
        if len(class_labels) != batch_size:
            raise ValueError(f"`class_labels` has {len(class_labels)} entries for {batch_size} items.")
        labels = class_indices(class_labels, class_names)
        return self.clip_scorer(clip_score_mode)(images, labels, class_names).double().numpy()

    def _ip_adapter_scale_set(self) -> float | None:
        """The scale [`~loaders.IPAdapterMixin.set_ip_adapter_scale`] set, when it is one number for every adapter and
        block; `None` when it differs between them (then each item's λ is not one number)."""
        scales = {
            tuple(processor.scale)
            for processor in self.unet.attn_processors.values()
            if isinstance(processor, _IP_ADAPTER_PROCESSORS)
        }
        if len(scales) == 1 and len(scale := next(iter(scales))) == 1:
            return float(scale[0])
        return None

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        ip_adapter_image: PIL.Image.Image | list[PIL.Image.Image] | None = None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        ip_adapter_scale: float | Sequence[float] | None = None,
        class_names: Sequence[str] | None = None,
        class_labels: Sequence[int | str] | None = None,
        clip_scores: Sequence[float] | None = None,
        clip_score_mode: str = "probability",
        ags: AdaptiveGuidanceScaling | None = None,
        num_shots: int = 1,
        ags_generator: np.random.Generator | int | list[np.random.Generator] | None = None,
        prompt_prefix: str = DEFAULT_PROMPT_PREFIX,
        negative_prompt: str | list[str] | None = DEFAULT_NEGATIVE_PROMPT,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 30,
        guidance_scale: float = 7.5,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        **kwargs,
    ) -> DALDAPipelineOutput | tuple:
        r"""
        Generates `num_images_per_prompt` images per item; item `i` pairs `prompt[i]` with the real image
        `ip_adapter_image[i]`.

        The call contract, kept with [`StableDiffusionPipeline`]:

        - **Without an image prompt** (neither `ip_adapter_image` nor `ip_adapter_image_embeds`) the call is a
          text-to-image call on a pipeline with no IP-Adapter loaded. DALDA's prompt prefix and negative prompt stay
          the defaults; with `prompt_prefix=""` and `negative_prompt=None` it is exactly `StableDiffusionPipeline`'s
          call. (With an IP-Adapter loaded diffusers cannot generate without an image prompt either; this call says
          so.)
        - **The IP-Adapter scale**, in this order: `ip_adapter_scale` given → that λ, one for all items or one per
          item; else AGS inputs given (`clip_scores`, `class_labels`, `ags` or `ags_generator`) → AGS's λ per item;
          else the scale set with [`~loaders.IPAdapterMixin.set_ip_adapter_scale`] (a float, per adapter or per
          block), applied by diffusers' own IP-Adapter processors exactly as `StableDiffusionPipeline` applies it.
        - **Features that replace the attention processors** (`fuse_qkv_projections()`,
          `enable_attention_slicing()`, `set_attn_processor`) remove the IP-Adapter's; a call with an image prompt
          then says which feature did it and how to undo it (diffusers' call fails there with an `AttributeError`).
        - `prompt` or `prompt_embeds` (with `negative_prompt_embeds`), `cross_attention_kwargs`,
          `callback_on_step_end`, `num_images_per_prompt`, `output_type` and `return_dict` behave as in
          [`StableDiffusionPipeline`], and so do its checks (e.g. both `prompt` and `prompt_embeds` raise its error).

        Args:
            prompt (`str` or `list[str]`, *optional*):
                the text prompt of each item (a single string is one item); or pass `prompt_embeds`.
            ip_adapter_image (`PIL.Image.Image` or `list[PIL.Image.Image]`, *optional*):
                each item's real image, the IP-Adapter image prompt (any PIL mode, any size). CLIPScore scores it as
                given; the IP-Adapter encodes it resized to the generation size, as DALDA's released code does.
            ip_adapter_image_embeds (`list[torch.Tensor]`, *optional*):
                instead of `ip_adapter_image`, one tensor per IP-Adapter: one row per item, e.g. from
                [`~DALDAPipeline.encode_ip_adapter_images`] or FaceID face embeddings (the negative rows are then
                made as diffusers makes them: zeros, for FaceID adapters too, or an encoded black image for IP-Adapter
                Plus); or, under classifier-free guidance, diffusers' layout as `prepare_ip_adapter_image_embeds`
                returns it, the negative rows and then the positive rows, one row per item in each (told apart by
                the row count).
            ip_adapter_scale (`float`, `list[float]` or `None`):
                λ: one value for all items, one per item, or `None` for AGS's λ or the scale set with
                `set_ip_adapter_scale` (see the order above).
            class_names (`list[str]`, *optional*): every class of the dataset, for CLIPScore.
            class_labels (`list[int | str]`, *optional*): each item's class, as an index or a name.
            clip_scores (`list[float]`, *optional*): precomputed CLIPScores of the items' real images.
            clip_score_mode (`str`, defaults to `"probability"`): `"probability"` or `"cosine"`, see [`CLIPScorer`].
            ags ([`AdaptiveGuidanceScaling`], *optional*): the AGS settings; the paper's defaults if not given.
            num_shots (`int`, defaults to 1): real examples per class (n), which sets AGS's σ.
            ags_generator (`np.random.Generator`, `int` or `list[np.random.Generator]`, *optional*):
                seed or generator for sampling λ, or one generator per item (as `generator` may hold one per image),
                so that an item's λ does not depend on the rest of its batch.
            prompt_prefix (`str`, defaults to `"best quality, high quality, "`):
                put before every prompt; `""` switches it off. Not applied to `prompt_embeds`.
            negative_prompt (`str` or `list[str]`, defaults to DALDA's negative prompt):
                `None` switches it off (diffusers' empty negative prompt); the default is not used when
                `negative_prompt_embeds` is given.
            prompt_embeds, negative_prompt_embeds (`torch.Tensor`, *optional*):
                as in [`StableDiffusionPipeline`]: text embeddings instead of `prompt` and `negative_prompt`, one row
                per item.
            height, width, num_inference_steps, guidance_scale, num_images_per_prompt, generator, latents,
            output_type, return_dict, cross_attention_kwargs, callback_on_step_end,
            callback_on_step_end_tensor_inputs:
                as in [`StableDiffusionPipeline`]; `generator` may hold one generator per generated image.
            kwargs: passed on to [`StableDiffusionPipeline.__call__`].

        Returns:
            [`DALDAPipelineOutput`] or a tuple `(images, nsfw_content_detected, ip_adapter_scales, clip_scores)`,
            with `num_images_per_prompt` consecutive entries per item.
        """
        # 1. Check inputs: diffusers' own checks first, so its inputs fail as they fail in diffusers.
        if negative_prompt is DEFAULT_NEGATIVE_PROMPT and negative_prompt_embeds is not None:
            negative_prompt = None
        self.check_inputs(
            prompt,
            height or self.generation_size,
            width or self.generation_size,
            None,
            negative_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            None,
            None,
            callback_on_step_end_tensor_inputs,
        )
        has_image_prompt = ip_adapter_image is not None or ip_adapter_image_embeds is not None
        if ip_adapter_image is not None and ip_adapter_image_embeds is not None:
            raise ValueError("Pass exactly one of `ip_adapter_image` and `ip_adapter_image_embeds`.")

        # 2. Define call parameters
        if prompt is not None:
            prompt = [prompt_prefix + text for text in ([prompt] if isinstance(prompt, str) else prompt)]
            batch_size = len(prompt)
        else:
            batch_size = prompt_embeds.shape[0]
        if batch_size == 0:
            raise ValueError("`prompt` is empty; give one prompt per item.")
        if isinstance(negative_prompt, str):
            negative_prompt = [negative_prompt] * batch_size
        if negative_prompt is not None and len(negative_prompt) != batch_size:
            raise ValueError(f"Got {len(negative_prompt)} negative prompts for {batch_size} prompts.")
        call_kwargs = dict(
            prompt=prompt,
            negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            num_images_per_prompt=num_images_per_prompt,
            generator=generator,
            latents=latents,
            output_type=output_type,
            return_dict=True,
            cross_attention_kwargs=cross_attention_kwargs,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            **kwargs,
        )

        def per_image(values):
            return [value for value in values for _ in range(num_images_per_prompt)]

        # 3. Without an image prompt: text-to-image, as in diffusers.
        if not has_image_prompt:
            image_prompt_weights = {
                "ip_adapter_scale": ip_adapter_scale,
                "clip_scores": clip_scores,
                "class_labels": class_labels,
                "ags": ags,
                "ags_generator": ags_generator,
            }
            for name, value in image_prompt_weights.items():
                if value is not None:
                    raise ValueError(
                        f"`{name}` sets the image prompt's weight, but no image prompt was given; pass "
                        "`ip_adapter_image` or `ip_adapter_image_embeds`."
                    )
            if self._has_ip_adapter():
                raise ValueError(
                    "An IP-Adapter is loaded, and it needs an image prompt: pass `ip_adapter_image` or "
                    "`ip_adapter_image_embeds`, or call `pipe.unload_ip_adapter()` for text-to-image."
                )
            output = super().__call__(**call_kwargs)
            return self._output(output, None, None, return_dict)

        # 4. Encode the image prompt, one row per item.
        images = None
        if ip_adapter_image is not None:
            images = [ip_adapter_image] if isinstance(ip_adapter_image, PIL.Image.Image) else list(ip_adapter_image)
            if len(images) != batch_size:
                raise ValueError(f"Got {len(images)} `ip_adapter_image`s for {batch_size} prompts; give one per item.")
            ip_adapter_image_embeds = self.encode_ip_adapter_images(images)
        self._check_ip_adapter_processors()
        do_classifier_free_guidance = guidance_scale > 1 and self.unet.config.time_cond_proj_dim is None
        ip_adapter_image_embeds, given_negative_embeds = split_ip_adapter_image_embeds(
            ip_adapter_image_embeds, batch_size, do_classifier_free_guidance
        )
        uses_ags = any(value is not None for value in (clip_scores, class_labels, ags, ags_generator))
        per_item_scales = ip_adapter_scale is not None or uses_ags
        if per_item_scales and "ip_adapter_masks" in (cross_attention_kwargs or {}):
            raise ValueError("IP-Adapter masks are not supported with per-item IP-Adapter scales.")

        # 5. Each item's λ, in the order of the docstring.
        scores = self._item_clip_scores(batch_size, clip_scores, images, class_names, class_labels, clip_score_mode)
        if per_item_scales:
            scales = item_ip_adapter_scales(
                batch_size, ip_adapter_scale, scores, ags or AdaptiveGuidanceScaling(), num_shots, ags_generator
            )
        else:
            scale_set = self._ip_adapter_scale_set()
            scales = None if scale_set is None else np.full(batch_size, scale_set)

        # 6. Image embeddings per generated image, `[negative..., positive...]` under classifier-free guidance.
        # Items are expanded here, not by diffusers, which tiles image embeddings instead of repeating each item.
        def per_image_embeds(embeds_per_adapter):
            return [
                embeds.to(self._execution_device).repeat_interleave(num_images_per_prompt, dim=0)
                for embeds in embeds_per_adapter
            ]

        positive_embeds = per_image_embeds(ip_adapter_image_embeds)
        if do_classifier_free_guidance:
            if given_negative_embeds is not None:
                negative_embeds = per_image_embeds(given_negative_embeds)
            else:
                negative_embeds = self._negative_ip_adapter_embeds(positive_embeds)
            call_kwargs["ip_adapter_image_embeds"] = [
                torch.cat([neg, pos]) for neg, pos in zip(negative_embeds, positive_embeds)
            ]
        else:
            call_kwargs["ip_adapter_image_embeds"] = positive_embeds

        # 7. Denoise: with per-item λ's through the per-item processor, else with diffusers' own processors.
        if per_item_scales:
            image_scales = torch.from_numpy(scales).float().repeat_interleave(num_images_per_prompt)
            unet_scales = torch.cat([image_scales, image_scales]) if do_classifier_free_guidance else image_scales
            with per_item_ip_adapter_scales(self.unet, unet_scales):
                output = super().__call__(**call_kwargs)
        else:
            output = super().__call__(**call_kwargs)
        item_scales = per_image(scales.tolist()) if scales is not None else None
        item_scores = per_image(scores.tolist()) if scores is not None else None
        return self._output(output, item_scales, item_scores, return_dict)

    @staticmethod
    def _output(
        output, ip_adapter_scales: list[float] | None, clip_scores: list[float] | None, return_dict: bool
    ) -> DALDAPipelineOutput | tuple:
        """diffusers' output with each generated image's λ and CLIPScore, as `return_dict` asks."""
        if not return_dict:
            return output.images, output.nsfw_content_detected, ip_adapter_scales, clip_scores
        return DALDAPipelineOutput(
            images=output.images,
            nsfw_content_detected=output.nsfw_content_detected,
            ip_adapter_scales=ip_adapter_scales,
            clip_scores=clip_scores,
        )
