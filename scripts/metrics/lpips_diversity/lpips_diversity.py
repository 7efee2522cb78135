"""LPIPS diversity: how different the synthetic images of one source image are from each other (higher = more
diverse), as in DALDA's Table 1."""

import warnings

import datasets
import evaluate
import lpips
import numpy as np
import PIL.Image
import torch
from evaluate import logging


NETS = ("alex", "vgg", "squeeze")

_CITATION = """\
@inproceedings{jung2024dalda,
  title     = {DALDA: Data Augmentation Leveraging Diffusion Model and LLM with Adaptive Guidance Scaling},
  author    = {Jung, Kyuheon and others},
  booktitle = {ECCV 2024 Workshop on Synthetic Data for Computer Vision},
  year      = {2024},
  eprint    = {2409.16949},
  archivePrefix = {arXiv}
}
@inproceedings{zhang2018lpips,
  title     = {The Unreasonable Effectiveness of Deep Features as a Perceptual Metric},
  author    = {Zhang, Richard and Isola, Phillip and Efros, Alexei A. and Shechtman, Eli and Wang, Oliver},
  booktitle = {CVPR},
  year      = {2018}
}
"""

_DESCRIPTION = """\
LPIPS diversity is the mean pairwise LPIPS distance among the synthetic images generated from one source image,
averaged over sources; higher means more diverse synthetic images (DALDA, Jung et al. 2024, Table 1: LPIPS ↑).
Every image is resized to `image_size` × `image_size` and scaled to [-1, 1], as LPIPS expects.

    lpips_diversity = 1/|G| · Σ_{g ∈ G} 2 / (|g| (|g| − 1)) · Σ_{i < j ∈ g} LPIPS(p_i, p_j)
    lpips_to_source = 1/N · Σ_i LPIPS(p_i, s_i)          (only with `source_images`)

where G is the set of groups with at least two predictions (a group of k images has k (k − 1) / 2 pairs; smaller
groups are skipped and counted), p_i is prediction i and s_i its source image.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of images):
        The synthetic images: PIL images, numpy arrays, file paths or `{"bytes", "path"}` dicts (anything
        `datasets.Image` encodes).
    groups (`list`, *optional*):
        One hashable group id per prediction, typically the index of its source image. Without it, all predictions
        form one group.
    source_images (`list` of images, *optional*):
        The source image of each prediction, in the same order (same types as `predictions`). Adds
        `lpips_to_source`. (A compute argument, not `references`: evaluate only forwards `references` to modules
        that declare it as a required feature.)
    net (`str`, defaults to `"alex"`):
        The LPIPS backbone: `"alex"` (the LPIPS paper's recommendation for a distance), `"vgg"` or `"squeeze"`.
    pretrained_backbone (`bool`, defaults to `True`):
        Use the ImageNet backbone (torchvision downloads it on first use). `False` uses a random backbone
        (`pnet_rand=True`): no download, for offline tests only; its values mean nothing.
    image_size (`int`, defaults to 256):
        Side of the square every image is resized to before LPIPS.
    batch_size (`int`, defaults to 32):
        Image pairs per forward pass.
    device (`str`, *optional*):
        Where LPIPS runs; CUDA when available, else the CPU.
Returns:
    lpips_diversity (`float`): the mean over groups of the mean pairwise LPIPS; NaN when no group has two images.
    num_groups (`int`): the groups with at least two predictions.
    num_skipped_groups (`int`): the groups with a single prediction.
    num_pairs (`int`): the pairs compared, Σ_g |g| (|g| − 1) / 2.
    lpips_to_source (`float`): with `source_images` only; the mean LPIPS of each prediction to its source.
Examples:
    >>> import evaluate
    >>> lpips_diversity = evaluate.load("scripts/metrics/lpips_diversity")
    >>> results = lpips_diversity.compute(predictions=synthetic_images, groups=source_indices)
    >>> results["lpips_diversity"], results["num_pairs"]
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class LpipsDiversity(evaluate.Metric):
    _loaded: tuple | None = None
    """(net, pretrained_backbone, device, model) of the last `compute`, reused while those stay the same."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Image()}),
            codebase_urls=["https://github.com/richzhang/PerceptualSimilarity"],
            reference_urls=["https://arxiv.org/abs/2409.16949", "https://arxiv.org/abs/1801.03924"],
        )

    def _compute(
        self,
        predictions,
        groups=None,
        source_images=None,
        net: str = "alex",
        pretrained_backbone: bool = True,
        image_size: int = 256,
        batch_size: int = 32,
        device: str | None = None,
    ) -> dict:
        # 1. Check inputs
        if groups is None:
            groups = [0] * len(predictions)
        if len(groups) != len(predictions):
            raise ValueError(
                f"Got {len(groups)} `groups` for {len(predictions)} `predictions`; give one per prediction."
            )
        if source_images is not None and len(source_images) != len(predictions):
            raise ValueError(
                f"Got {len(source_images)} `source_images` for {len(predictions)} `predictions`; "
                "give one per prediction."
            )
        if net not in NETS:
            raise ValueError(f"`net` must be one of {NETS}, got {net!r}.")
        self._load(net, pretrained_backbone, device or ("cuda" if torch.cuda.is_available() else "cpu"))

        # 2. Mean pairwise LPIPS within each group
        members: dict = {}
        for index, group in enumerate(groups):
            members.setdefault(group, []).append(index)
        group_means, num_pairs = [], 0
        for indices in logging.tqdm(list(members.values()), desc="LPIPS within groups"):
            if len(indices) < 2:
                continue
            images = _to_tensor([predictions[index] for index in indices], image_size)
            first, second = torch.triu_indices(len(indices), len(indices), offset=1)
            distances = torch.cat(
                [
                    self._lpips(images[first[start : start + batch_size]], images[second[start : start + batch_size]])
                    for start in range(0, len(first), batch_size)
                ]
            )
            group_means.append(distances.mean().item())
            num_pairs += len(distances)
        results = {
            "lpips_diversity": sum(group_means) / len(group_means) if group_means else float("nan"),
            "num_groups": len(group_means),
            "num_skipped_groups": len(members) - len(group_means),
            "num_pairs": num_pairs,
        }

        # 3. Mean LPIPS of each prediction to its source image
        if source_images is not None:
            sources = _decode(source_images)
            distances = [
                self._lpips(
                    _to_tensor(predictions[start : start + batch_size], image_size),
                    _to_tensor(sources[start : start + batch_size], image_size),
                )
                for start in logging.tqdm(range(0, len(predictions), batch_size), desc="LPIPS to sources")
            ]
            results["lpips_to_source"] = torch.cat(distances).mean().item() if distances else float("nan")
        return results

    def _load(self, net: str, pretrained_backbone: bool, device: str):
        if self._loaded is None or self._loaded[:3] != (net, pretrained_backbone, device):
            with warnings.catch_warnings():
                # lpips 0.1.4 builds its backbone with torchvision's deprecated `pretrained=` argument.
                warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*", category=UserWarning)
                # `pretrained=True` is the package's own calibrated linear layers, shipped inside it (no download).
                model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=not pretrained_backbone, verbose=False)
            self._loaded = (net, pretrained_backbone, device, model.to(device).eval())

    @torch.inference_mode()
    def _lpips(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """LPIPS of each pair (first[i], second[i]), float32 on the CPU."""
        _, _, device, model = self._loaded
        return model(first.to(device), second.to(device)).flatten().float().cpu()


def _decode(images) -> list:
    """Decodes compute-argument images through `datasets.Image`, the codec evaluate uses for `predictions`, so both
    sides of a pair are read the same way."""
    feature = datasets.Image()
    return [feature.decode_example(feature.encode_example(image)) for image in images]


def _to_tensor(images, image_size: int) -> torch.Tensor:
    """RGB images resized (bilinear) to `image_size` × `image_size`, as an N×3×H×W tensor in [-1, 1]."""
    resized = [image.convert("RGB").resize((image_size, image_size), PIL.Image.BILINEAR) for image in images]
    return torch.cat([lpips.im2tensor(np.asarray(image)) for image in resized])
