"""The options of `dalda evaluate` and `dalda compare`, as `HfArgumentParser` dataclasses, with the defaults they
share with the modules that use them.

This module imports nothing heavy, so `dalda evaluate --help` answers at once; what needs torch is imported where an
option is used.
"""

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pipeline_dalda.arguments import resolve_device


if TYPE_CHECKING:
    import torch

    from .training import TrainingSchedule


DEFAULT_BACKBONE = "openai/clip-vit-base-patch16"
DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch16"
"""The CLIP model whose image embeddings CLIP-I compares."""
ROTATION_STEP = 1.0
"""The spacing of the cached rotation grid: -15, -14, ..., 15 degrees. Measured on the offline fixture, a 1° grid
trains to the uncached path's accuracy within 0.5 points; 2° and 5° grids did not (up to 0.9 and 2 points)."""
TestSetKind = Literal["auto", "paper", "unselected", "split"]
BatchNormMode = Literal["frozen", "paper"]
EpochSelection = Literal["last_epoch", "best_validation_epoch", "best_test_epoch"]
REFERENCE_METHOD = "DALDA (LLM + AGS)"
"""The method `dalda compare` tests every other method against (the paper's Table 3)."""


@dataclass
class EvaluateArguments:
    """What `dalda evaluate` trains, on what, and where the report goes (defaults: the paper's protocol)."""

    _option_groups = {
        "data": ("dataset", "dataset_revision", "source_dataset"),
        "test set": ("test_set", "test_split", "validation_fraction"),
        "classifier": ("backbone", "normalization", "batch_norm", "image_size", "dtype", "device"),
        "training": (
            "epochs", "iterations_per_epoch", "batch_size", "learning_rate", "weight_decay",
            "synthetic_probability", "real_only_baseline", "classifier_seeds", "select",
        ),
        "class fidelity": ("min_synthetic_score", "min_synthetic_score_sweep"),
        "cache": ("feature_cache", "rotation_step", "cache_dir", "feature_batch_size", "num_workers"),
        "diversity": ("diversity",),
        "output": ("output_dir", "method_label", "push_to_hub"),
    }
    """The `--help` heading of each option (read by the `dalda` command line; other parsers ignore it)."""
    _moved_options = {
        "seeds": "the paper's trials are now made by `dalda augment --seeds 0 1 2` (each trial its own shots and "
        "synthetic images, all evaluated together); `--classifier_seeds` repeats only the classifier on one draw"
    }
    """Options that are gone, with where their job went (read by the `dalda` command line)."""

    dataset: str = field(
        metadata={
            "help": "The augmented dataset: a folder written by `dalda augment`, or its Hub id. Written with "
            "`--seeds`, it holds one trial per seed, and every trial is evaluated."
        }
    )
    output_dir: str = field(
        metadata={"help": "Where the report goes: results.json, results.md, epochs.csv and the plots."}
    )
    dataset_revision: str | None = field(default=None, metadata={"help": "A branch, tag or commit of a Hub dataset."})
    test_set: TestSetKind = field(
        default="auto",
        metadata={
            "help": "The test images: 'paper' (the second half of the paper's per-class split), 'unselected' (the "
            "source split's rows not chosen as shots), 'split' (every row of `test_split`); 'auto' takes 'paper' "
            "for shots selected by the paper's protocol, else 'split' when `test_split` differs from the source "
            "split, else 'unselected'."
        },
    )
    test_split: str | None = field(
        default=None, metadata={"help": "The source dataset's split to test on (default: the split of the shots)."}
    )
    source_dataset: str | None = field(
        default=None,
        metadata={"help": "Where the source dataset is, when not where the augmented dataset's record says."},
    )
    validation_fraction: float = field(
        default=0.0,
        metadata={
            "help": "Share of each class's test images moved to a validation set (for `best_validation_epoch`, and "
            "to choose the threshold of `min_synthetic_score_sweep`)."
        },
    )
    backbone: str = field(
        default=DEFAULT_BACKBONE,
        metadata={
            "help": "The frozen backbone: a transformers Hub id or folder. Image-text models (CLIP, SigLIP) get a "
            "head initialised from 'a photo of a {class}' and AdamW 2e-4, wd 0.1; image models "
            "(microsoft/resnet-50, DINOv2, ...) a random head and Adam 1e-4."
        },
    )
    normalization: Literal["paper", "processor"] = field(
        default="paper",
        metadata={"help": "Pixel normalisation: 'paper' (mean 0.5, std 0.5) or 'processor' (the backbone's own)."},
    )
    image_size: int = field(
        default=224, metadata={"help": "Input size in pixels, the whole image squashed to a square (the paper: 224)."}
    )
    epochs: int = field(default=50, metadata={"help": "Training epochs (the paper: 50)."})
    iterations_per_epoch: int = field(default=200, metadata={"help": "Steps per epoch (the paper: 200)."})
    batch_size: int = field(default=32, metadata={"help": "Images per step, drawn with replacement (the paper: 32)."})
    learning_rate: float | None = field(default=None, metadata={"help": "Overrides the backbone's recipe."})
    weight_decay: float | None = field(default=None, metadata={"help": "Overrides the backbone's recipe."})
    synthetic_probability: float = field(
        default=0.5,
        metadata={"help": "Probability p that a drawn real image is replaced by one of its own synthetic images."},
    )
    real_only_baseline: bool = field(
        default=True, metadata={"help": "Also train without synthetic images (p = 0), side by side."}
    )
    classifier_seeds: list[int] | None = field(
        default=None,
        metadata={
            "help": "Unset (the paper): each trial's classifier is seeded with the trial's own seed. Several seeds "
            "on a dataset of one trial repeat only the classifier on that one draw of shots and synthetic images: "
            "their spread is the optimiser's noise, and the report calls them classifier repeats, not trials."
        },
    )
    select: EpochSelection = field(
        default="last_epoch",
        metadata={
            "help": "The epoch reported: the last one; each classifier's best on the validation set (needs "
            "`validation_fraction`); or 'best_test_epoch', the released code's rule: one epoch shared by the "
            "trials, the best by their mean test accuracy, which looks at the test set and is optimistic."
        },
    )
    batch_norm: BatchNormMode = field(
        default="frozen",
        metadata={
            "help": "Backbones with batch-norm layers (ResNet): 'frozen' runs them in eval mode with their pretrained "
            "statistics (features cached); 'paper' runs them as the released code does, in training mode while the "
            "head trains (batch statistics, running statistics updated) and with the running statistics at test "
            "time: the backbone runs at every step, no cache."
        },
    )
    min_synthetic_score: float | None = field(
        default=None,
        metadata={
            "help": "Train the augmented classifier on the synthetic images whose own CLIPScore "
            "(`synthetic_clip_score`, float32) is at or above this only; a real image with none left is never "
            "replaced. The real-only arm is unchanged. Needs a dataset made by a `dalda augment` that records that "
            "score."
        },
    )
    min_synthetic_score_sweep: list[float] | None = field(
        default=None,
        metadata={
            "help": "Thresholds to sweep in the same run: one more augmented classifier per threshold and trial, on "
            "the same draws. With the feature cache and `batch_norm frozen` (the defaults) that adds heads only; "
            "with `no_feature_cache` every added head's batch runs through the backbone at every step, and with "
            "`batch_norm paper` every threshold is one more full training. Reported as accuracy against threshold, "
            "with the synthetic images kept and the share of draws that were synthetic (results.md, "
            "accuracy_vs_min_synthetic_score.png); with `validation_fraction`, each classifier's threshold is also "
            "chosen on validation and its test accuracy reported (a threshold read off the test figures is "
            "optimistic). The main augmented arm keeps `min_synthetic_score`."
        },
    )
    feature_cache: bool = field(
        default=True,
        metadata={
            "help": "Cache the frozen backbone's features per image and view (fast). False runs the backbone on "
            "augmented pixels at every step: the slow reference the cache is checked against (the released code's "
            "data path; for its ResNet-50 classifier, see `batch_norm`)."
        },
    )
    rotation_step: float = field(
        default=ROTATION_STEP,
        metadata={
            "help": "Degrees between the cached rotations; each step trains on the cached angle nearest to the one "
            "drawn. 1° (62 views per training image) matched the uncached path within 0.5 points on the offline "
            "fixture; 5° computes 14 views, for many shots, at up to 2 points' difference there."
        },
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Where features are cached (default: $HF_HOME/dalda/features)."}
    )
    feature_batch_size: int = field(default=64, metadata={"help": "Images per backbone call."})
    num_workers: int = field(default=4, metadata={"help": "Threads decoding images."})
    device: str = field(default="auto", metadata={"help": "'auto' (CUDA when available), 'cuda', 'cpu', ..."})
    dtype: Literal["float32", "bfloat16", "float16"] = field(
        default="float32", metadata={"help": "The backbone's dtype; the head always trains in float32."}
    )
    diversity: bool = field(
        default=False,
        metadata={"help": "Also measure CLIP-I and LPIPS diversity of the synthetic images (the paper's Table 1)."},
    )
    method_label: str | None = field(
        default=None,
        metadata={
            "help": "The method's name in tables (default: from how the dataset was made, e.g. 'DALDA (LLM + AGS)')."
        },
    )
    push_to_hub: str | None = field(
        default=None,
        metadata={
            "help": "ORG/NAME of the evaluated dataset's Hub repo: uploads the report (no local path) to "
            "evaluation/<backbone>-<method>-<shots>shot/ and rewrites the card's 'Evaluation' table (token: HF_TOKEN "
            "or `hf auth login`)."
        },
    )

    def __post_init__(self):
        for name in ("epochs", "iterations_per_epoch", "batch_size", "feature_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        if not 0 <= self.synthetic_probability <= 1:
            raise ValueError(f"`synthetic_probability` must be in [0, 1], got {self.synthetic_probability}.")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"`validation_fraction` must be in [0, 1), got {self.validation_fraction}.")
        if self.select == "best_validation_epoch" and self.validation_fraction == 0:
            raise ValueError("`select best_validation_epoch` needs a validation set: set `validation_fraction`.")
        if self.classifier_seeds is not None and (
            not self.classifier_seeds or len(set(self.classifier_seeds)) != len(self.classifier_seeds)
        ):
            raise ValueError(f"`classifier_seeds` must be distinct seeds, at least one; got {self.classifier_seeds}.")
        self._check_synthetic_score_thresholds()
        from .views import view_grid

        if not 0 < self.rotation_step < math.inf:
            raise ValueError(f"`rotation_step` must be a number of degrees that divides 30, got {self.rotation_step}.")
        try:
            view_grid(self.rotation_step)  # a step that does not divide 30° is refused here
        except ValueError as error:
            raise ValueError(f"`rotation_step`: {error}") from error
        if self.image_size < 1:
            raise ValueError(f"`image_size` must be >= 1, got {self.image_size}.")

    def _check_synthetic_score_thresholds(self) -> None:
        if self.min_synthetic_score is not None and not math.isfinite(self.min_synthetic_score):
            raise ValueError(f"`min_synthetic_score` must be a finite number, got {self.min_synthetic_score}.")
        sweep = self.min_synthetic_score_sweep
        if sweep is not None and not all(math.isfinite(value) for value in sweep):
            raise ValueError(f"`min_synthetic_score_sweep` must be finite numbers, got {sweep}.")
        if sweep is not None and (not sweep or len(set(sweep)) != len(sweep)):
            raise ValueError(f"`min_synthetic_score_sweep` must be distinct thresholds, at least one; got {sweep}.")
        if self.filters_synthetic_images and self.synthetic_probability == 0:
            raise ValueError(
                "`min_synthetic_score` and `min_synthetic_score_sweep` choose the synthetic images the augmented "
                "classifier draws, and with `synthetic_probability` 0 it draws none; raise `synthetic_probability`."
            )

    @property
    def filters_synthetic_images(self) -> bool:
        """Whether a classifier trains on the synthetic images at or above a synthetic-score threshold."""
        return self.min_synthetic_score is not None or bool(self.min_synthetic_score_sweep)

    def resolved_device(self) -> "torch.device":
        return resolve_device(self.device)

    def schedule(self) -> "TrainingSchedule":
        from .training import TrainingSchedule

        return TrainingSchedule(self.epochs, self.iterations_per_epoch, self.batch_size)


@dataclass
class DiversityArguments:
    """How the diversity metrics are computed."""

    _argument_group_name = "diversity"

    diversity_clip_model: str = field(
        default=DEFAULT_CLIP_MODEL,
        metadata={"help": "The CLIP checkpoint (CLIPModel + CLIPProcessor) whose image embeddings CLIP-I compares."},
    )
    lpips_net: Literal["alex", "vgg", "squeeze"] = field(
        default="alex",
        metadata={"help": "The LPIPS backbone; `alex` is the LPIPS authors' choice for a distance metric."},
    )
    lpips_pretrained_backbone: bool = field(
        default=True,
        metadata={
            "help": "Use LPIPS's ImageNet backbone (torchvision downloads it once). False uses a random backbone, "
            "for offline tests only: its values mean nothing."
        },
    )
    diversity_batch_size: int = field(
        default=32, metadata={"help": "Images (CLIP-I) or image pairs (LPIPS) per forward pass."}
    )


@dataclass
class CompareArguments:
    """Which `dalda evaluate` reports `dalda compare` puts side by side, and where."""

    _option_groups = {"data": ("runs",), "output": ("output_dir", "reference_method", "push_to_hub")}

    runs: list[str] = field(metadata={"help": "Folders written by `dalda evaluate` (each holds a results.json)."})
    output_dir: str = field(metadata={"help": "Where comparison.md and accuracy_vs_shots.png go."})
    reference_method: str = field(
        default=REFERENCE_METHOD,
        metadata={"help": "The method every other method is tested against, trial by trial (the paper's Table 3)."},
    )
    push_to_hub: str | None = field(
        default=None,
        metadata={
            "help": "ORG/NAME of a Hub dataset repo (one `dalda evaluate --push_to_hub` wrote to): uploads "
            "comparison.md and accuracy_vs_shots.png to evaluation/compare/ and links them from the card's "
            "'Evaluation' section."
        },
    )
