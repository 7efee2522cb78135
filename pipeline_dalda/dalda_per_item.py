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
"""What every DALDA pipeline adds to its diffusers base, whatever the model family: each item of a batch pairs a real
image with a text prompt and gets its own IP-Adapter weight λ ([`DALDAPipelineMixin`]), and the bookkeeping of items
and their image embeddings.

A family's pipeline (`pipeline.py` for Stable Diffusion 1.x, `pipeline_sdxl.py` for SDXL) subclasses this mixin and
its diffusers pipeline, and keeps only what differs by family: its components, its text inputs and its call's
signature. The DALDA community-pipeline modules (this one, `dalda_scoring.py`, `dalda_attention.py`) import
third-party packages and each other only; diffusers copies a pipeline file's relative imports beside it, but only
the ones the pipeline file itself names, so a pipeline file imports from all three.
"""

import inspect
import os
import shutil
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import PIL.Image
import torch
from diffusers.models.embeddings import ImageProjection
from diffusers.utils import BaseOutput

from .dalda_attention import IP_ADAPTER_PROCESSORS, per_item_ip_adapter_scales
from .dalda_scoring import DEFAULT_CLIP_SCORE_MODEL, AdaptiveGuidanceScaling, CLIPScorer, to_rgb


DEFAULT_PROMPT_PREFIX = "best quality, high quality, "
DEFAULT_NEGATIVE_PROMPT = "monochrome, lowres, bad anatomy, worst quality, low quality"
# DDIM settings of DALDA's released code, for `DDIMScheduler.from_config(pipe.scheduler.config, **...)`.
DALDA_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}
SHARED_MODULES = ("dalda_scoring.py", "dalda_attention.py", "dalda_per_item.py")
"""The modules every DALDA pipeline file imports, saved and published beside it."""
IMAGE_PROMPT_WEIGHTS = ("ip_adapter_scale", "clip_scores", "class_labels", "ags", "ags_generator")
"""The call's arguments that set the image prompt's weight; given without an image prompt, they are refused."""


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
    num_adapters: int,
    ip_adapter_scale: float | Sequence[float] | Sequence[Sequence[float]] | None,
    clip_scores: np.ndarray | None,
    ags: AdaptiveGuidanceScaling,
    num_shots: int,
    ags_generator: np.random.Generator | int | Sequence[np.random.Generator] | None,
) -> np.ndarray:
    """Each item's λ for each IP-Adapter, shape `(num_items, num_adapters)`: the caller's, or sampled with AGS from
    the items' CLIPScores (one λ per item, for every adapter).

    `ip_adapter_scale` is one λ, one λ per item (a flat list is always per item, whatever the number of adapters),
    or one row per item holding one λ per adapter. `ags_generator` is one generator (or seed) for the batch, or one
    generator per item; with one per item, an item's λ does not depend on the other items of its batch.
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
            scales = np.array(
                [ags.sample([score], num_shots, generator)[0] for score, generator in zip(scores, ags_generator)]
            )
        else:
            scales = ags.sample(scores, num_shots=num_shots, generator=ags_generator)
        return np.repeat(scales[:, None], num_adapters, axis=1)
    scales = np.asarray(ip_adapter_scale, dtype=np.float64)
    if scales.ndim <= 1 and scales.size not in (1, num_items):
        raise ValueError(f"`ip_adapter_scale` has {scales.size} λ's for {num_items} items; give 1 or one per item.")
    if scales.ndim <= 1:
        scales = scales.reshape(-1, 1)
    if scales.ndim != 2 or scales.shape[0] not in (1, num_items) or scales.shape[1] not in (1, num_adapters):
        raise ValueError(
            f"`ip_adapter_scale` has shape {scales.shape} for {num_items} items and {num_adapters} IP-Adapters; give "
            f"one λ, one per item, or one row per item with one λ per IP-Adapter ({num_items} × {num_adapters})."
        )
    if not np.all(np.isfinite(scales)):
        raise ValueError(f"`ip_adapter_scale` must be finite, got {ip_adapter_scale}.")
    return np.broadcast_to(scales, (num_items, num_adapters)).copy()


def reported_scales(scales: np.ndarray) -> list[float | list[float]]:
    """Each item's λ as the output reports it: one number when every IP-Adapter has the same, else one per adapter."""
    return [float(row[0]) if np.all(row == row[0]) else row.tolist() for row in scales]


@dataclass
class DALDAPipelineOutput(BaseOutput):
    r"""
    Output of every DALDA pipeline ([`DALDAPipeline`], [`DALDAXLPipeline`]).

    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`): the generated images, one per item.
        nsfw_content_detected (`list[bool]`, *optional*): the safety checker's verdicts, if it ran.
        ip_adapter_scales (`list[float]`, *optional*): the IP-Adapter weight λ each item was generated with (a list
            of one λ per IP-Adapter where they differ); `None` for a text-to-image call, or when the scale set with
            `set_ip_adapter_scale` differs by adapter or block.
        clip_scores (`list[float]`, *optional*): each item's real-image CLIPScore, when it was known or computable.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    nsfw_content_detected: list[bool] | None
    ip_adapter_scales: list[float | list[float]] | None
    clip_scores: list[float] | None


class DALDAPipelineMixin:
    r"""
    DALDA's part of a pipeline, for a diffusers pipeline class with IP-Adapter support (`IPAdapterMixin`) that it is
    mixed into: the CLIP scoring components, the real image squashed to the generation size before the image
    encoder, and a call in which every item has its own IP-Adapter weight λ.

    The call contract every DALDA pipeline keeps with its diffusers base (its `__call__` says which base):

    - **Without an image prompt** (neither `ip_adapter_image` nor `ip_adapter_image_embeds`) the call is a
      text-to-image call on a pipeline with no IP-Adapter loaded. DALDA's prompt prefix and negative prompt stay the
      defaults; with `prompt_prefix=""` and `negative_prompt=None` it is exactly the base pipeline's call. (With an
      IP-Adapter loaded diffusers cannot generate without an image prompt either; the call says so.)
    - **The IP-Adapter scale**, in this order: `ip_adapter_scale` given → that λ, one for all items or one per item;
      else AGS inputs given (`clip_scores`, `class_labels`, `ags` or `ags_generator`) → AGS's λ per item; else the
      scale set with [`~loaders.IPAdapterMixin.set_ip_adapter_scale`] (a float, per adapter or per block), applied
      by diffusers' own IP-Adapter processors exactly as the base pipeline applies it.
    - **Several IP-Adapters**: a per-item λ (given or AGS's) weights every adapter; `ip_adapter_scale` with one row
      per item gives each adapter its own. A flat list is always one λ per item, also when the batch has as many
      items as there are adapters; per-adapter scales for the whole batch go through `set_ip_adapter_scale`.
    - **IP-Adapter masks** (`cross_attention_kwargs={"ip_adapter_masks": ...}`) apply with per-item λ's as
      diffusers' processor applies them at one scale: each masked image attends alone, within its region.
    - **Features that replace the attention processors** (`fuse_qkv_projections()`, `enable_attention_slicing()`,
      `set_attn_processor`) remove the IP-Adapter's; a call with an image prompt then says which feature did it and
      how to undo it (diffusers' call fails there with an `AttributeError`).
    - The base pipeline's own parameters (`prompt` or `prompt_embeds` with `negative_prompt_embeds`,
      `cross_attention_kwargs`, `callback_on_step_end`, `num_images_per_prompt`, `output_type`, `return_dict`, ...)
      behave as in the base pipeline, and so do its checks (e.g. both `prompt` and `prompt_embeds` raise its error).
    """

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs):
        """Saves the pipeline as [`DiffusionPipeline.save_pretrained`] does, plus its pipeline file (as
        `custom_pipeline_file`) and the DALDA modules it imports, so the folder (or the Hub repo it is pushed to)
        loads with `custom_pipeline=` that file's name."""
        os.makedirs(save_directory, exist_ok=True)
        family = next(cls for cls in type(self).__mro__ if "custom_pipeline_file" in vars(cls))
        shutil.copyfile(inspect.getfile(family), os.path.join(save_directory, self.custom_pipeline_file))
        for module in SHARED_MODULES:
            shutil.copyfile(os.path.join(os.path.dirname(__file__), module), os.path.join(save_directory, module))
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
        """The side of the square images the UNet generates by default (512 for Stable Diffusion 1.x, 1024 for SDXL)."""
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

        Each image is first resized to the generation size ([`~DALDAPipelineMixin.resize_to_generation_size`]).

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
        if any(isinstance(processor, IP_ADAPTER_PROCESSORS) for processor in processors):
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
            if isinstance(processor, IP_ADAPTER_PROCESSORS)
        }
        if len(scales) == 1 and len(scale := next(iter(scales))) == 1:
            return float(scale[0])
        return None

    @staticmethod
    def _check_ip_adapter_masks(call_kwargs: dict[str, Any], ip_adapter_image_embeds: list[torch.Tensor]) -> None:
        """IP-Adapter masks as diffusers' processor takes them, checked once before denoising (the per-item processor
        applies them as diffusers' does): one entry per IP-Adapter, each `None` or a `[1, num_images, height, width]`
        mask. The older form, one tensor `[num_adapters, 1, height, width]`, becomes that list, as in diffusers."""
        cross_attention_kwargs = call_kwargs["cross_attention_kwargs"]
        masks = (cross_attention_kwargs or {}).get("ip_adapter_masks")
        if masks is None:
            return
        if isinstance(masks, torch.Tensor):
            masks = list(masks.unsqueeze(1))
            call_kwargs["cross_attention_kwargs"] = {**cross_attention_kwargs, "ip_adapter_masks": masks}
        if len(masks) != len(ip_adapter_image_embeds):
            raise ValueError(
                f"`ip_adapter_masks` has {len(masks)} entries for {len(ip_adapter_image_embeds)} IP-Adapters; give one "
                "per IP-Adapter (`None` for an unmasked one)."
            )
        for index, (mask, embeds) in enumerate(zip(masks, ip_adapter_image_embeds)):
            if mask is None:
                continue
            if not isinstance(mask, torch.Tensor) or mask.ndim != 4 or mask.shape[1] != embeds.shape[1]:
                raise ValueError(
                    f"`ip_adapter_masks[{index}]` must be a tensor of shape [1, {embeds.shape[1]}, height, width] (one "
                    "mask per image of that IP-Adapter); make it with `IPAdapterMaskProcessor().preprocess`."
                )

    def _item_prompts(
        self, prompt: str | list[str] | None, prompt_prefix: str, prompt_embeds: torch.Tensor | None
    ) -> tuple[list[str] | None, int]:
        """Each item's prompt with DALDA's prefix, and the number of items (the rows of `prompt_embeds` without one).
        """
        if prompt is not None:
            prompt = [prompt_prefix + text for text in ([prompt] if isinstance(prompt, str) else prompt)]
            batch_size = len(prompt)
        else:
            batch_size = prompt_embeds.shape[0]
        if batch_size == 0:
            raise ValueError("`prompt` is empty; give one prompt per item.")
        return prompt, batch_size

    @staticmethod
    def _item_negative_prompts(negative_prompt: str | list[str] | None, batch_size: int) -> list[str] | None:
        """One negative prompt per item."""
        if isinstance(negative_prompt, str):
            negative_prompt = [negative_prompt] * batch_size
        if negative_prompt is not None and len(negative_prompt) != batch_size:
            raise ValueError(f"Got {len(negative_prompt)} negative prompts for {batch_size} prompts.")
        return negative_prompt

    def _generate(
        self,
        call_kwargs: dict[str, Any],
        batch_size: int,
        return_dict: bool,
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
    ):
        """The call past the family's own inputs: `call_kwargs` are the base pipeline's arguments, with one prompt
        per item; the rest are DALDA's image prompt and λ inputs, as the family's `__call__` documents them."""
        if ip_adapter_image is not None and ip_adapter_image_embeds is not None:
            raise ValueError("Pass exactly one of `ip_adapter_image` and `ip_adapter_image_embeds`.")
        num_images_per_prompt = call_kwargs["num_images_per_prompt"]

        def per_image(values):
            return [value for value in values for _ in range(num_images_per_prompt)]

        # Without an image prompt: text-to-image, as in diffusers.
        if ip_adapter_image is None and ip_adapter_image_embeds is None:
            given = dict(zip(IMAGE_PROMPT_WEIGHTS, (ip_adapter_scale, clip_scores, class_labels, ags, ags_generator)))
            for name, value in given.items():
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
            return self._output(super().__call__(**call_kwargs), None, None, return_dict)

        # Encode the image prompt, one row per item.
        images = None
        if ip_adapter_image is not None:
            images = [ip_adapter_image] if isinstance(ip_adapter_image, PIL.Image.Image) else list(ip_adapter_image)
            if len(images) != batch_size:
                raise ValueError(f"Got {len(images)} `ip_adapter_image`s for {batch_size} prompts; give one per item.")
            ip_adapter_image_embeds = self.encode_ip_adapter_images(images)
        self._check_ip_adapter_processors()
        do_classifier_free_guidance = call_kwargs["guidance_scale"] > 1 and self.unet.config.time_cond_proj_dim is None
        ip_adapter_image_embeds, given_negative_embeds = split_ip_adapter_image_embeds(
            ip_adapter_image_embeds, batch_size, do_classifier_free_guidance
        )
        uses_ags = any(value is not None for value in (clip_scores, class_labels, ags, ags_generator))
        per_item_scales = ip_adapter_scale is not None or uses_ags
        num_adapters = len(ip_adapter_image_embeds)
        if per_item_scales:
            self._check_ip_adapter_masks(call_kwargs, ip_adapter_image_embeds)

        # Each item's λ, in the order of the call contract.
        scores = self._item_clip_scores(batch_size, clip_scores, images, class_names, class_labels, clip_score_mode)
        if per_item_scales:
            scales = item_ip_adapter_scales(
                batch_size, num_adapters, ip_adapter_scale, scores, ags or AdaptiveGuidanceScaling(), num_shots, ags_generator
            )
        else:
            scale_set = self._ip_adapter_scale_set()
            scales = None if scale_set is None else np.full((batch_size, num_adapters), scale_set)

        # Image embeddings per generated image, `[negative..., positive...]` under classifier-free guidance.
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

        # Denoise: with per-item λ's through the per-item processor, else with diffusers' own processors.
        if per_item_scales:
            image_scales = torch.from_numpy(scales).float().repeat_interleave(num_images_per_prompt, dim=0)
            unet_scales = torch.cat([image_scales, image_scales]) if do_classifier_free_guidance else image_scales
            with per_item_ip_adapter_scales(self.unet, unet_scales):
                output = super().__call__(**call_kwargs)
        else:
            output = super().__call__(**call_kwargs)
        item_scales = per_image(reported_scales(scales)) if scales is not None else None
        item_scores = per_image(scores.tolist()) if scores is not None else None
        return self._output(output, item_scales, item_scores, return_dict)

    @staticmethod
    def _output(
        output, ip_adapter_scales: list[float] | None, clip_scores: list[float] | None, return_dict: bool
    ) -> DALDAPipelineOutput | tuple:
        """diffusers' output with each generated image's λ and CLIPScore, as `return_dict` asks."""
        nsfw_content_detected = getattr(output, "nsfw_content_detected", None)  # SDXL has no safety checker
        if not return_dict:
            return output.images, nsfw_content_detected, ip_adapter_scales, clip_scores
        return DALDAPipelineOutput(
            images=output.images,
            nsfw_content_detected=nsfw_content_detected,
            ip_adapter_scales=ip_adapter_scales,
            clip_scores=clip_scores,
        )
