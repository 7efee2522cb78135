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
"""DALDA on Stable Diffusion 1.x: [`DALDAPipeline`], IP-Adapter Stable Diffusion with Adaptive Guidance Scaling from
CLIPScore, one IP-Adapter weight λ per item of a batch.

A diffusers community pipeline: it imports third-party packages and the DALDA modules beside it only
(`dalda_scoring.py`, `dalda_attention.py`, `dalda_per_item.py`), so diffusers loads it with `custom_pipeline=` from
a folder, from a saved pipeline (as `dalda.py`) or from a Hub repository, and fetches those modules with it.
"""

from typing import Any, Callable, Sequence

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import (
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from .dalda_attention import IP_ADAPTER_PROCESSORS  # noqa: F401  (diffusers copies only the modules named here)
from .dalda_per_item import DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT_PREFIX, DALDAPipelineMixin, DALDAPipelineOutput
from .dalda_scoring import AdaptiveGuidanceScaling, CLIPScorer


class DALDAPipeline(DALDAPipelineMixin, StableDiffusionPipeline):
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

    custom_pipeline_file = "dalda.py"
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

        The call contract of every DALDA pipeline ([`DALDAPipelineMixin`]), kept with [`StableDiffusionPipeline`]:
        without an image prompt a text-to-image call; the IP-Adapter scale from `ip_adapter_scale`, else AGS, else
        `set_ip_adapter_scale`; diffusers' parameters and checks as in diffusers.

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
            ip_adapter_scale (`float`, `list[float]`, `list[list[float]]` or `None`):
                λ: one value for all items, one per item (a flat list is always per item, whatever the number of
                IP-Adapters; each item's λ then weights every adapter), one row per item with one λ per
                IP-Adapter, or `None` for AGS's λ (for every adapter) or the scale set with `set_ip_adapter_scale`
                (see the order above).
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

        # 2. One prompt per item, then DALDA's part of the call.
        prompt, batch_size = self._item_prompts(prompt, prompt_prefix, prompt_embeds)
        call_kwargs = dict(
            prompt=prompt,
            negative_prompt=self._item_negative_prompts(negative_prompt, batch_size),
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
