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
"""DALDA on Stable Diffusion XL: [`DALDAXLPipeline`], IP-Adapter SDXL with Adaptive Guidance Scaling from CLIPScore,
one IP-Adapter weight λ per item of a batch.

A diffusers community pipeline, as `pipeline.py` is for Stable Diffusion 1.x: it imports third-party packages and the
DALDA modules beside it only, so diffusers loads it with `custom_pipeline=` from this file, from a saved pipeline (as
`dalda_xl.py`) or from a Hub repository, and fetches those modules with it.
"""

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import (
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from .dalda_attention import IP_ADAPTER_PROCESSORS  # noqa: F401  (diffusers copies only the modules named here)
from .dalda_per_item import DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT_PREFIX, DALDAPipelineMixin, DALDAPipelineOutput
from .dalda_scoring import AdaptiveGuidanceScaling, CLIPScorer


class DALDAXLPipeline(DALDAPipelineMixin, StableDiffusionXLPipeline):
    r"""
    DALDA generation on SDXL: [`StableDiffusionXLPipeline`] + IP-Adapter, where each item of a batch pairs a real image
    with a text prompt and is generated with its own IP-Adapter weight λ, as in [`DALDAPipeline`].

    For a real image already at the generation size (1024 px for SDXL base), each item is what
    [`StableDiffusionXLPipeline`] with `set_ip_adapter_scale(λ)` gives for that item alone.

    Load an IP-Adapter with [`~loaders.IPAdapterMixin.load_ip_adapter`] before calling, e.g.
    `pipe.load_ip_adapter("h94/IP-Adapter", subfolder="sdxl_models", weight_name="ip-adapter_sdxl.safetensors")`.

    Args:
        vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler, image_encoder, feature_extractor,
        force_zeros_for_empty_prompt, add_watermarker: as in [`StableDiffusionXLPipeline`].
        clip_model ([`~transformers.CLIPModel`], *optional*): the CLIP model that scores real images for AGS.
        clip_processor ([`~transformers.CLIPProcessor`], *optional*): its processor.
    """

    custom_pipeline_file = "dalda_xl.py"
    _optional_components = StableDiffusionXLPipeline._optional_components + ["clip_model", "clip_processor"]
    _exclude_from_cpu_offload = StableDiffusionXLPipeline._exclude_from_cpu_offload + ["clip_model"]

    # The component type hints are diffusers' own: `from_pipe` carries over only the components whose types match.
    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        text_encoder_2: CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        tokenizer_2: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        image_encoder: CLIPVisionModelWithProjection = None,
        feature_extractor: CLIPImageProcessor = None,
        force_zeros_for_empty_prompt: bool = True,
        add_watermarker: bool | None = None,
        clip_model: CLIPModel | None = None,
        clip_processor: CLIPProcessor | None = None,
    ):
        super().__init__(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=scheduler,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
            force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
            add_watermarker=add_watermarker,
        )
        self.register_modules(clip_model=clip_model, clip_processor=clip_processor)
        self._scorer: CLIPScorer | None = None

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
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
        negative_prompt_2: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 30,
        guidance_scale: float = 5.0,
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

        The call contract of every DALDA pipeline ([`DALDAPipelineMixin`]), kept with [`StableDiffusionXLPipeline`].
        DALDA's arguments (`ip_adapter_image` to `prompt_prefix`, `negative_prompt`) are those of
        [`DALDAPipeline.__call__`]; `prompt_2` and `negative_prompt_2`, one per item or one for all, are the second
        text encoder's, as in diffusers, and `prompt_2` gets DALDA's prefix too. The other parameters are
        [`StableDiffusionXLPipeline.__call__`]'s (`guidance_scale` defaults to its 5.0), and `kwargs` go to it.

        Returns:
            [`DALDAPipelineOutput`] or a tuple `(images, None, ip_adapter_scales, clip_scores)` (SDXL has no safety
            checker), with `num_images_per_prompt` consecutive entries per item.
        """
        # 1. Check inputs: diffusers' own checks first, so its inputs fail as they fail in diffusers.
        if negative_prompt is DEFAULT_NEGATIVE_PROMPT and negative_prompt_embeds is not None:
            negative_prompt = None
        self.check_inputs(
            prompt,
            prompt_2,
            height or self.generation_size,
            width or self.generation_size,
            None,
            negative_prompt,
            negative_prompt_2,
            prompt_embeds,
            negative_prompt_embeds,
            pooled_prompt_embeds,
            negative_pooled_prompt_embeds,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )

        # 2. One prompt per item for each text encoder, then DALDA's part of the call.
        prompt, batch_size = self._item_prompts(prompt, prompt_prefix, prompt_embeds)
        if prompt_2 is not None:
            prompt_2, count = self._item_prompts(prompt_2, prompt_prefix, None)
            if count not in (1, batch_size):
                raise ValueError(
                    f"Got {count} `prompt_2`s for {batch_size} prompts; give one per item or one for all."
                )
            prompt_2 = prompt_2 * (batch_size // count)
        call_kwargs = dict(
            prompt=prompt,
            prompt_2=prompt_2,
            negative_prompt=self._item_negative_prompts(negative_prompt, batch_size),
            negative_prompt_2=self._item_negative_prompts(negative_prompt_2, batch_size),
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
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
        return self._generate(
            call_kwargs,
            batch_size,
            return_dict,
            ip_adapter_image=ip_adapter_image,
            ip_adapter_image_embeds=ip_adapter_image_embeds,
            ip_adapter_scale=ip_adapter_scale,
            class_names=class_names,
            class_labels=class_labels,
            clip_scores=clip_scores,
            clip_score_mode=clip_score_mode,
            ags=ags,
            num_shots=num_shots,
            ags_generator=ags_generator,
        )
