"""CLIP-I: how close synthetic images stay to their source images in CLIP image-embedding space (lower = more
diverse), as in DALDA's Table 1."""

import datasets
import evaluate
import torch
from evaluate import logging
from transformers import CLIPModel, CLIPProcessor


DEFAULT_MODEL = "openai/clip-vit-base-patch16"

_CITATION = """\
@inproceedings{jung2024dalda,
  title     = {DALDA: Data Augmentation Leveraging Diffusion Model and LLM with Adaptive Guidance Scaling},
  author    = {Jung, Kyuheon and others},
  booktitle = {ECCV 2024 Workshop on Synthetic Data for Computer Vision},
  year      = {2024},
  eprint    = {2409.16949},
  archivePrefix = {arXiv}
}
@inproceedings{radford2021clip,
  title     = {Learning Transferable Visual Models From Natural Language Supervision},
  author    = {Radford, Alec and others},
  booktitle = {ICML},
  year      = {2021}
}
"""

_DESCRIPTION = """\
CLIP-I is the mean cosine similarity between the CLIP image embedding of each synthetic image and that of the real
image it was generated from. A data augmentation that only copies its source scores 1; lower means more diverse
synthetic images (DALDA, Jung et al. 2024, Table 1: CLIP-I ↓). With `groups` (e.g. the class of each image) it also
reports the mean pairwise similarity among the synthetic images of a group.

    e(x) = f(x) / ‖f(x)‖                     f: CLIP's projected image embedding
    clip_i = 1/N · Σ_i e(p_i) · e(r_i)       p_i: prediction i, r_i: its reference (source image)
    clip_i_within_group = 1/|G| · Σ_{g ∈ G} 2 / (|g| (|g| − 1)) · Σ_{i < j ∈ g} e(p_i) · e(p_j)

where G is the set of groups with at least two predictions; smaller groups are skipped and counted.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of images):
        The synthetic images: PIL images, numpy arrays, file paths or `{"bytes", "path"}` dicts (anything
        `datasets.Image` encodes).
    references (`list` of images):
        The source real image of each prediction, in the same order.
    groups (`list`, *optional*):
        One hashable group id per prediction (e.g. its class). Adds `clip_i_within_group`.
    model_name_or_path (`str`, defaults to `"openai/clip-vit-base-patch16"`):
        A CLIP checkpoint, loaded with `CLIPModel` and `CLIPProcessor`; kept loaded between `compute` calls.
    batch_size (`int`, defaults to 32):
        Images per forward pass.
    device (`str`, *optional*):
        Where CLIP runs; CUDA when available, else the CPU.
Returns:
    clip_i (`float`): the mean cosine similarity of each prediction to its reference, in [-1, 1].
    clip_i_within_group (`float`): with `groups` only; the mean over groups of the mean pairwise cosine similarity
        among the group's predictions; NaN when no group has two predictions.
    num_groups (`int`): with `groups` only; the groups with at least two predictions.
    num_skipped_groups (`int`): with `groups` only; the groups with a single prediction.
Examples:
    >>> import evaluate
    >>> clip_i = evaluate.load("scripts/metrics/clip_i")
    >>> results = clip_i.compute(predictions=synthetic_images, references=source_images, groups=class_labels)
    >>> results["clip_i"], results["clip_i_within_group"]
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ClipI(evaluate.Metric):
    _loaded: tuple | None = None
    """(model_name_or_path, device, model, processor) of the last `compute`, reused while those stay the same."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Image(), "references": datasets.Image()}),
            reference_urls=["https://arxiv.org/abs/2409.16949", "https://arxiv.org/abs/2103.00020"],
        )

    def _compute(
        self,
        predictions,
        references,
        groups=None,
        model_name_or_path: str = DEFAULT_MODEL,
        batch_size: int = 32,
        device: str | None = None,
    ) -> dict:
        # 1. Check inputs
        if len(predictions) == 0:
            raise ValueError("`predictions` is empty; CLIP-I needs at least one synthetic image.")
        if groups is not None and len(groups) != len(predictions):
            raise ValueError(
                f"Got {len(groups)} `groups` for {len(predictions)} `predictions`; give one per prediction."
            )

        # 2. Embed both sides
        self._load(model_name_or_path, device or ("cuda" if torch.cuda.is_available() else "cpu"))
        synthetic = self._embed(predictions, batch_size, desc="CLIP-I predictions")
        sources = self._embed(references, batch_size, desc="CLIP-I references")

        # 3. Average the cosine similarities
        results = {"clip_i": (synthetic * sources).sum(dim=-1).mean().item()}
        if groups is not None:
            results.update(_within_group(synthetic, groups))
        return results

    def _load(self, model_name_or_path: str, device: str):
        if self._loaded is None or self._loaded[:2] != (model_name_or_path, device):
            model = CLIPModel.from_pretrained(model_name_or_path).to(device).eval()
            self._loaded = (model_name_or_path, device, model, CLIPProcessor.from_pretrained(model_name_or_path))

    @torch.inference_mode()
    def _embed(self, images, batch_size: int, desc: str) -> torch.Tensor:
        """L2-normalised projected CLIP image embeddings, float32 on the CPU."""
        _, device, model, processor = self._loaded
        chunks = []
        for start in logging.tqdm(range(0, len(images), batch_size), desc=desc):
            batch = [image.convert("RGB") for image in images[start : start + batch_size]]
            pixel_values = processor(images=batch, return_tensors="pt").pixel_values.to(device, model.dtype)
            # The vision tower and projection directly: `get_image_features` returns a tensor in transformers 4
            # and a model output in transformers 5.
            pooled = model.vision_model(pixel_values=pixel_values).pooler_output
            chunks.append(model.visual_projection(pooled).float().cpu())
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)


def _within_group(embeddings: torch.Tensor, groups) -> dict:
    """Mean over groups of the mean pairwise cosine similarity over a group's distinct pairs."""
    members: dict = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    means = []
    for indices in members.values():
        size = len(indices)
        if size < 2:
            continue
        gram = embeddings[indices] @ embeddings[indices].T
        means.append(((gram.sum() - gram.diagonal().sum()) / (size * (size - 1))).item())
    return {
        "clip_i_within_group": sum(means) / len(means) if means else float("nan"),
        "num_groups": len(means),
        "num_skipped_groups": len(members) - len(means),
    }
