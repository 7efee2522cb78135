"""Frozen image backbones for the few-shot classifiers, loaded from any transformers checkpoint.

Two kinds, decided by the checkpoint:
- image–text models (CLIP, SigLIP, ...; they have `get_image_features` and `get_text_features`): the feature is the
  projected image embedding, and the linear head starts from the text embeddings of "a photo of a {class}" — the
  paper's CLIP ViT-B/16 classifier;
- image models (ResNet, DINOv2, ViT, ...): the feature is the pooled output (the mean of the last hidden states where
  a model has no pooler) and the head starts at random — the paper's ResNet-50 classifier.
"""

import copy
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer, PreTrainedModel
from transformers.utils import CONFIG_NAME
from transformers.utils.hub import cached_file, extract_commit_hash

from pipeline_dalda.dalda_scoring import class_prompt


logger = logging.getLogger(__name__)

PAPER_MEAN, PAPER_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
"""The paper normalises every backbone's input with mean 0.5 and std 0.5."""


@dataclass(frozen=True)
class HeadRecipe:
    """How the linear head is trained (the paper's Table 4 and the released code)."""

    optimizer: Literal["adamw", "adam"]
    learning_rate: float
    weight_decay: float


CLIP_RECIPE = HeadRecipe("adamw", 2e-4, 0.1)
IMAGE_MODEL_RECIPE = HeadRecipe("adam", 1e-4, 0.0)


def _pooled(output) -> torch.Tensor:
    """The embedding of a `get_*_features` or image-model output, whatever the transformers version returns."""
    if isinstance(output, torch.Tensor):
        return output
    if getattr(output, "pooler_output", None) is not None:
        return output.pooler_output.flatten(1)
    return output.last_hidden_state.mean(dim=1)


class FrozenBackbone:
    """A frozen feature extractor: `features(pixels)` and, for image–text models, a text-initialised head."""

    def __init__(
        self, name: str, model: PreTrainedModel, tokenizer=None, mean=PAPER_MEAN, std=PAPER_STD, revision=None
    ):
        self.name = name
        self.revision: str | None = revision
        """The Hub commit the weights were loaded from (None for a local folder)."""
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.is_image_text = hasattr(model, "get_image_features") and hasattr(model, "get_text_features")
        self.recipe = CLIP_RECIPE if self.is_image_text else IMAGE_MODEL_RECIPE
        self.processor_mean, self.processor_std = tuple(mean), tuple(std)
        vision_config = getattr(model.config, "vision_config", model.config)
        probe_size = int(getattr(vision_config, "image_size", 224))
        self.fingerprint = self._fingerprint()
        self.feature_dim = int(self.features(torch.zeros(1, 3, probe_size, probe_size)).shape[1])

    def _fingerprint(self) -> str:
        """A digest of the architecture and every weight, computed once as the backbone loads: cached features are
        valid for these weights only, and `dalda compare` keys a backbone by it. Where the checkpoint was loaded from
        and by which transformers (the config's `_name_or_path`, `transformers_version`) are left out, so the same
        weights have one fingerprint wherever they lie and whichever transformers reads them."""
        config = json.loads(self.model.config.to_json_string(use_diff=False))
        for provenance in ("_name_or_path", "transformers_version"):
            config.pop(provenance, None)
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:24]

    @property
    def has_batch_norm(self) -> bool:
        """Whether the backbone has batch-norm layers, which the released code runs in training mode."""
        return any(isinstance(module, torch.nn.modules.batchnorm._BatchNorm) for module in self.model.modules())

    def with_own_batch_norm_statistics(self) -> "FrozenBackbone":
        """A copy of this backbone whose model (and so its batch-norm running statistics) is its own: the pretrained
        statistics to start from, for one classifier of the paper's batch-norm mode."""
        twin = copy.copy(self)
        twin.model = copy.deepcopy(self.model)
        return twin

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.no_grad()
    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Float32 features of a batch of normalised pixels `(B, 3, H, W)`, with the weights frozen (no gradient) and
        the model in whichever mode it is in: eval mode, unless a paper-mode classifier put its copy in training
        mode."""
        pixel_values = pixel_values.to(self.device, self.dtype)
        if self.is_image_text:
            output = self.model.get_image_features(pixel_values=pixel_values)
        else:
            output = self.model(pixel_values=pixel_values)
        return _pooled(output).float()

    @torch.no_grad()
    def initial_head(self, class_names: list[str], seed: int) -> torch.nn.Linear:
        r"""
        The linear head `Linear(feature_dim, C)` before training.

        Image models: PyTorch's default initialisation, `W, b ~ U(−1/√D, 1/√D)`, drawn from `seed`. Image–text
        models: `W[c] = text_embedding("a photo of a {class c}")` (not normalised) and the same default bias drawn
        from `seed`, as the released `train_classifier.py` (a default `nn.Linear` whose weight only it overwrites).
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = torch.nn.Linear(self.feature_dim, len(class_names))
        if self.is_image_text:
            prompts = [class_prompt(name) for name in class_names]
            # SigLIP was trained on text padded to its full length, CLIP on unpadded text.
            padding = "max_length" if "siglip" in self.model.config.model_type else True
            tokens = self.tokenizer(prompts, padding=padding, truncation=True, return_tensors="pt").to(self.device)
            text = self.model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
            head.weight.copy_(_pooled(text).float().cpu())
        return head


def load_backbone(name_or_path: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Loads a frozen backbone from a Hub id or a local folder with transformers' Auto classes."""
    try:
        config = AutoConfig.from_pretrained(name_or_path)
        model = AutoModel.from_pretrained(name_or_path, dtype=dtype)
    except (OSError, ValueError) as error:
        raise ValueError(f"The backbone {name_or_path!r} cannot be loaded: {error}") from error
    tokenizer = None
    if hasattr(config, "text_config"):
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    try:
        processor = AutoImageProcessor.from_pretrained(name_or_path)
        mean, std = processor.image_mean, processor.image_std
    except (OSError, ValueError):
        mean, std = PAPER_MEAN, PAPER_STD
    logger.info("Loaded the backbone %s (%s)", name_or_path, type(model).__name__)
    return FrozenBackbone(name_or_path, model.to(device), tokenizer, mean, std, hub_revision(name_or_path))


def hub_revision(name_or_path: str) -> str | None:
    """The commit of a Hub checkpoint as loaded (the snapshot its config.json was read from, in the Hub cache), so
    that a report names the very weights; None for a local folder."""
    if os.path.isdir(name_or_path):
        return None
    return extract_commit_hash(cached_file(name_or_path, CONFIG_NAME), None)
