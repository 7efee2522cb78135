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
"""What λ each item of a DALDA batch gets: its real image's CLIPScore ([`CLIPScorer`]) and the weight Adaptive
Guidance Scaling draws from it ([`AdaptiveGuidanceScaling`]).

Part of the DALDA community pipelines: it imports third-party packages only, so diffusers fetches it beside a
pipeline file that imports it (see `dalda_per_item.py`).
"""

import math
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import PIL.Image
import scipy.stats
import torch
import torch.nn.functional as F
from transformers import CLIPModel, CLIPProcessor


DEFAULT_CLIP_SCORE_MODEL = "openai/clip-vit-base-patch16"
CLASS_PROMPT_TEMPLATE = "a photo of a {}"
CLIP_SCORE_MODES = ("probability", "cosine")
AGS_MODES = ("truncnorm", "reference", "random", "fixed")


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
