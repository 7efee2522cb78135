"""How each method of `dalda augment` turns a batch of real images into synthetic images: its prompts, the models it
loads, and its generation step. The three methods write the same rows in the same layout and differ only here.

- **DALDA** ([`DALDAGeneration`]): each prompt of the bank with the real image as the IP-Adapter image prompt, at a
  λ drawn by AGS from the real image's CLIPScore.
- **Real Guidance** (the paper's first baseline, as DA-Fusion's `semantic_aug/augmentations/real_guidance.py` does
  it): Stable Diffusion img2img from the real image with "a photo of a {class}", at one strength for every image
  ([`Img2ImgGeneration`]).
- **DA-Fusion** (Trabucco et al., 2023, the paper's second baseline): img2img from the real image with "a photo of a
  <class>", `<class>` the class's one token learned by textual inversion ([`dataset_builders.textual_inversion`]), at
  a strength t0 drawn per synthetic image from {0.25, 0.5, 0.75, 1.0} ([`da_fusion_strength`]).

DALDA's released code has neither baseline; following DA-Fusion's own code (`fine_tune.py` with its
`scripts/fine_tuning` settings, then its img2img augmentations) is our reading of what the paper ran. Both denoise
with the run's DDIM scheduler, 50 steps by default as DA-Fusion's img2img, where DA-Fusion's PNDM makes one UNet call
more at each strength (at 0.5: 26 from t = 501, against our 25 from t = 481).
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Callable, NamedTuple, Protocol

import PIL.Image
import torch
from diffusers import StableDiffusionImg2ImgPipeline

from pipeline_dalda import AdaptiveGuidanceScaling, DALDAPipeline
from pipeline_dalda.arguments import ModelArguments
from pipeline_dalda.dalda_scoring import CLASS_PROMPT_TEMPLATE, class_prompt
from pipeline_dalda.prompts import PromptBank
from pipeline_dalda.seeding import item_seed, noise_generator, scale_generator, stream
from pipeline_dalda.textual_inversion import class_token, load_class_tokens

from .arguments import DA_FUSION_STRENGTHS, AugmentArguments


def class_prompts(args: AugmentArguments, class_names: list[str]) -> dict[str, list[str]]:
    """M prompts per class: from the bank; "a photo of a {class}" (`base_prompt`, and always for Real Guidance); or
    "a photo of a <class>" with the class's learned token (DA-Fusion)."""
    if args.method == "da_fusion":
        return {name: [CLASS_PROMPT_TEMPLATE.format(class_token(name))] * args.num_prompts for name in class_names}
    if args.base_prompt or args.method == "real_guidance":
        return {name: [class_prompt(name)] * args.num_prompts for name in class_names}
    bank = PromptBank.load(args.prompt_bank)
    short = {name: len(bank.prompts.get(name, [])) for name in class_names}
    short = {name: count for name, count in short.items() if count < args.num_prompts}
    if short:
        raise ValueError(
            f"The prompt bank {args.prompt_bank!r} has fewer than {args.num_prompts} prompts for {len(short)} classes "
            f"(prompts per class: {dict(list(short.items())[:10])}); make it with `dalda prompts --num_prompts "
            f"{args.num_prompts}`."
        )
    return {name: bank.prompts[name][: args.num_prompts] for name in class_names}


def method_models(args: AugmentArguments, model_args: ModelArguments) -> ModelArguments:
    """The models `args.method` generates with: DALDA needs the IP-Adapter; the img2img methods run without one,
    since IP-Adapter attention processors given no image embeddings read text tokens as image tokens."""
    if args.method != "dalda":
        return replace(model_args, ip_adapter="", ip_adapter_subfolder="", ip_adapter_weight_name="")
    if not model_args.ip_adapter:
        raise ValueError("`method='dalda'` generates with an IP-Adapter, but `ip_adapter` is empty; name one.")
    return model_args


@dataclass(frozen=True)
class SyntheticItem:
    """One synthetic image to generate."""

    real_index: int
    """Its real image's position in the batch of real images."""
    source_index: int
    """Its real image's row in the source split."""
    prompt_index: int
    prompt: str
    clip_score: float | None
    """Its real image's CLIPScore; None where no CLIP model is loaded."""
    seed: int
    """The seed of its initial noise, from [`item_seed`]."""
    attempt: int = 0
    """0 for the first generation of the image; k for its k-th regeneration ([`next_attempt`])."""
    ip_adapter_scale: float | None = None
    """Its λ when the attempt sets it (a regeneration); None where AGS draws it (a first attempt)."""

    def next_attempt(self, run_seed: int, ip_adapter_scale: float, scale_step: float) -> "SyntheticItem":
        """The item made again, for an image too far from its class: a new seed, from the attempt's own stream
        ([`item_seed`]), and λ moved toward the real image by the rule λ ← min(1, λ + Δ), Δ = `scale_step`."""
        attempt = self.attempt + 1
        return replace(
            self,
            attempt=attempt,
            seed=item_seed(run_seed, self.source_index, self.prompt_index, attempt),
            ip_adapter_scale=min(1.0, ip_adapter_scale + scale_step),
        )


class GeneratedImages(NamedTuple):
    """A batch of synthetic images, at the generation size, and what each was made with."""

    images: list[PIL.Image.Image]
    ip_adapter_scales: list[float | None]
    """Each image's λ (None where the method has no image prompt)."""
    strengths: list[float | None]
    """Each image's img2img strength (None where the method does not start from the real image)."""


class Generation(Protocol):
    """How a method turns real images and [`SyntheticItem`]s into synthetic images."""

    def prepare(self, images: list[PIL.Image.Image]) -> Any:
        """What the method needs from a batch of real images, once for all their items."""

    def __call__(self, prepared: Any, items: list[SyntheticItem]) -> GeneratedImages:
        """One synthetic image per item."""


class DALDAGeneration:
    """DALDA: each item's prompt with its real image as the IP-Adapter image prompt, at a λ drawn by the pipeline's
    AGS from the real image's CLIPScore, with the item's own λ stream; a regeneration brings its own λ. The items of
    one call are all first attempts or all regenerations."""

    def __init__(self, pipe: DALDAPipeline, args: AugmentArguments, ags: AdaptiveGuidanceScaling, num_shots: int):
        self.pipe, self.args, self.ags, self.num_shots = pipe, args, ags, num_shots

    def prepare(self, images: list[PIL.Image.Image]) -> list[torch.Tensor]:
        """The real images' IP-Adapter embeddings, encoded once for all their synthetic images."""
        return self.pipe.encode_ip_adapter_images(images)

    def __call__(self, prepared: list[torch.Tensor], items: list[SyntheticItem]) -> GeneratedImages:
        rows = torch.tensor([item.real_index for item in items])
        scores = [item.clip_score for item in items]
        scales = [item.ip_adapter_scale for item in items]
        if None in scales and scales.count(None) < len(scales):
            raise ValueError("A batch mixes first attempts (λ drawn by AGS) with regenerations (λ given).")
        output = self.pipe(
            [item.prompt for item in items],
            ip_adapter_image_embeds=[embeds[rows.to(embeds.device)] for embeds in prepared],
            ip_adapter_scale=None if None in scales else scales,
            clip_scores=None if None in scores else scores,
            ags=self.ags,
            num_shots=self.num_shots,
            ags_generator=[scale_generator(self.args.seed, item.source_index, item.prompt_index) for item in items],
            prompt_prefix=self.args.prompt_prefix,
            negative_prompt=self.args.negative_prompt,
            num_inference_steps=self.args.num_inference_steps,
            guidance_scale=self.args.guidance_scale,
            generator=[noise_generator(item.seed) for item in items],
        )
        return GeneratedImages(output.images, output.ip_adapter_scales, [None] * len(items))


def da_fusion_strength(run_seed: int, item: SyntheticItem) -> float:
    """DA-Fusion's t0 of one synthetic image: one of [`DA_FUSION_STRENGTHS`], each with probability 1/4, from the
    image's own stream (so it does not depend on the batch, the order or a resume)."""
    return float(stream("strength", run_seed, item.source_index, item.prompt_index).choice(DA_FUSION_STRENGTHS))


class Img2ImgGeneration:
    """Stable Diffusion img2img from each item's real image with the item's prompt, at the strength `strength_of`
    gives the item; no image prompt, so no λ. Real Guidance gives every item one strength, DA-Fusion draws one per
    item; the items of a batch that share a strength are denoised together.

    The img2img pipeline shares the loaded pipeline's modules, which must carry no IP-Adapter (see
    [`method_models`]). It is built with its constructor rather than `from_pipe`, which casts the shared modules to
    its `dtype` argument (float32 unless given, and spelled differently across diffusers versions).
    """

    def __init__(self, pipe: DALDAPipeline, args: AugmentArguments, strength_of: Callable[[SyntheticItem], float]):
        self.pipe, self.args, self.strength_of = pipe, args, strength_of
        self.img2img = StableDiffusionImg2ImgPipeline(
            vae=pipe.vae,
            text_encoder=pipe.text_encoder,
            tokenizer=pipe.tokenizer,
            unet=pipe.unet,
            scheduler=pipe.scheduler,
            safety_checker=pipe.safety_checker,
            feature_extractor=pipe.feature_extractor,
            requires_safety_checker=pipe.config.requires_safety_checker,
        )
        self.img2img.set_progress_bar_config(disable=True)  # the run's own bar counts images

    def prepare(self, images: list[PIL.Image.Image]) -> list[PIL.Image.Image]:
        """The real images at the generation size: img2img starts from them."""
        return [self.pipe.resize_to_generation_size(image) for image in images]

    def __call__(self, prepared: list[PIL.Image.Image], items: list[SyntheticItem]) -> GeneratedImages:
        strengths = [self.strength_of(item) for item in items]
        images: list[PIL.Image.Image | None] = [None] * len(items)
        for strength in sorted(set(strengths)):
            group = [position for position, value in enumerate(strengths) if value == strength]
            output = self.img2img(
                prompt=[self.args.prompt_prefix + items[position].prompt for position in group],
                image=[prepared[items[position].real_index] for position in group],
                strength=strength,
                num_inference_steps=self.args.num_inference_steps,
                guidance_scale=self.args.guidance_scale,
                negative_prompt=[self.args.negative_prompt] * len(group),
                generator=[noise_generator(items[position].seed) for position in group],
            )
            for position, image in zip(group, output.images):
                images[position] = image
        return GeneratedImages(images, [None] * len(items), strengths)


@contextmanager
def class_tokens_loaded(pipe: DALDAPipeline, tokens_file: str | os.PathLike) -> Iterator[None]:
    """DA-Fusion's learned class tokens in `pipe` (and so in the img2img pipeline that shares its tokenizer and text
    encoder) for the time of a run; unloaded after, so that the next trial can load its own under the same names."""
    tokens = load_class_tokens(pipe, tokens_file)
    try:
        yield
    finally:
        pipe.unload_textual_inversion(tokens)


def method_generation(
    pipe: DALDAPipeline, args: AugmentArguments, ags: AdaptiveGuidanceScaling, num_shots: int
) -> Generation:
    """The generation step of `args.method`."""
    if args.method == "real_guidance":
        return Img2ImgGeneration(pipe, args, lambda item: args.real_guidance_strength)
    if args.method == "da_fusion":
        return Img2ImgGeneration(pipe, args, lambda item: da_fusion_strength(args.seed, item))
    return DALDAGeneration(pipe, args, ags, num_shots)
