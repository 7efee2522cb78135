"""The options of `dalda augment` and `dalda demo` (and the class-list options `dalda prompts` shares), as
`HfArgumentParser` dataclasses.

This module imports nothing heavy, so `dalda <command> --help` answers at once. A dataclass's `_argument_group_name`
(or, per field, its `_option_groups`) files its options under a heading of `--help`.
"""

import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args


ShotSelection = Literal["random", "paper"]
Method = Literal["dalda", "real_guidance", "da_fusion"]
DA_FUSION_STRENGTHS = (0.25, 0.5, 0.75, 1.0)
"""DA-Fusion's img2img strengths t0, one drawn per synthetic image with probability 1/4 each."""
CLIPScoreMode = Literal["probability", "cosine"]
"""The modes of `CLIPScorer` (its `CLIP_SCORE_MODES`; a test keeps the two in step)."""


@dataclass
class ClassListArguments:
    """Where the class names come from: a dataset (Hub id or local path) or a file."""

    _argument_group_name = "data"

    dataset: str | None = field(
        default=None, metadata={"help": "A Hub dataset id, or a local folder (imagefolder, parquet, save_to_disk)."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    dataset_revision: str | None = field(default=None, metadata={"help": "A branch, tag or commit of a Hub dataset."})
    split: str = field(default="train", metadata={"help": "The split whose label column names the classes."})
    label_column: str = field(default="label", metadata={"help": "The label column (a ClassLabel, or class names)."})
    class_names_file: str | None = field(
        default=None, metadata={"help": "Instead of a dataset: one class name per line, or a JSON list of names."}
    )

    def __post_init__(self):
        if (self.dataset is None) == (self.class_names_file is None):
            raise ValueError("Give exactly one of `dataset` and `class_names_file`.")


@dataclass
class SourceArguments(ClassListArguments):
    """The real images: a dataset with an image column and a label column, and how many to take per class."""

    dataset: str | None = field(
        default=None,
        metadata={"help": "Required: a Hub dataset id, or a local folder (imagefolder, parquet, save_to_disk)."},
    )
    split: str = field(default="train", metadata={"help": "The split the real images are drawn from."})
    class_names_file: str | None = field(
        default=None,
        metadata={"help": "The class names (a file, one per line), when the label column has no ClassLabel names."},
    )
    image_column: str = field(default="image", metadata={"help": "The image column."})
    num_shots: int = field(default=1, metadata={"help": "Real images per class (n)."})
    shot_selection: ShotSelection = field(
        default="random",
        metadata={
            "help": "How the n shots are drawn: 'random' (each class its own stream), or 'paper' (the paper's split "
            "protocol: the first n of the first half of each class's permutation, so `dalda evaluate` can test on "
            "the second half)."
        },
    )
    allow_fewer_shots: bool = field(
        default=False, metadata={"help": "Take every image of a class that has fewer than n, instead of failing."}
    )

    def __post_init__(self):
        if self.dataset is None:
            raise ValueError("`dataset` is required: a Hub dataset id or a local folder.")
        if self.num_shots < 1:
            raise ValueError(f"`num_shots` must be >= 1, got {self.num_shots}.")
        if self.shot_selection not in get_args(ShotSelection):
            choices = get_args(ShotSelection)
            raise ValueError(f"`shot_selection` must be one of {choices}, got {self.shot_selection!r}.")


def method_defaults(method: str) -> dict[str, Any]:
    """The settings `method` uses where [`AugmentArguments`] leaves them unset.

    DALDA: the paper's (DESIGN §2, Table 4). Real Guidance and DA-Fusion: DA-Fusion's own code (`train_classifier.py`
    with `--aug real-guidance` or `textual-inversion`; our reading of the paper's baselines, for which DALDA's released
    code has none) calls diffusers' img2img with its default 50 steps, no prompt prefix and no negative prompt. Our
    DDIM runs int(50 · strength) of them; DA-Fusion's PNDM one more (26 from t = 501 at strength 0.5, ours 25 from
    t = 481).
    """
    # Imported here: the pipeline module loads torch and diffusers, which `--help` must not wait for.
    from pipeline_dalda.dalda_per_item import DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT_PREFIX

    if method == "dalda":
        return {
            "num_inference_steps": 30,
            "prompt_prefix": DEFAULT_PROMPT_PREFIX,
            "negative_prompt": DEFAULT_NEGATIVE_PROMPT,
        }
    return {"num_inference_steps": 50, "prompt_prefix": "", "negative_prompt": ""}


@dataclass
class AugmentArguments:
    """How `dalda augment` builds the augmented dataset."""

    _option_groups = {
        "prompts": ("method", "prompt_bank", "base_prompt", "num_prompts", "prompt_prefix", "negative_prompt"),
        "AGS": ("clip_score_mode",),
        "sampling": ("seed", "seeds", "num_inference_steps", "guidance_scale", "real_guidance_strength", "batch_size"),
        "class fidelity": ("min_synthetic_score", "max_attempts", "retry_scale_step"),
        "output": ("output_dir", "real_images_per_shard", "contact_sheet_rows", "push_to_hub", "private"),
    }
    """The `--help` heading of each option (read by the `dalda` command line; other parsers ignore it)."""

    output_dir: str = field(metadata={"help": "The dataset folder to write (Hub layout); rerun to resume it."})
    method: Method = field(
        default="dalda",
        metadata={
            "help": "'dalda': prompts + IP-Adapter with the real image + AGS. The paper's baselines, which take no "
            "prompt bank and load no IP-Adapter: 'real_guidance', Stable Diffusion img2img from the real image with "
            "the prompt 'a photo of a {class}'; 'da_fusion', a token learned per class by textual inversion (the "
            "'textual inversion' options), then img2img with 'a photo of a <class>' at a strength drawn per image "
            "from 0.25, 0.5, 0.75, 1.0.",
        },
    )
    prompt_bank: str | None = field(
        default=None, metadata={"help": "A prompt bank from `dalda prompts` (method 'dalda')."}
    )
    base_prompt: bool = field(
        default=False,
        metadata={"help": "Use 'a photo of a {class}' instead of a prompt bank (ablation)."},
    )
    num_prompts: int = field(default=10, metadata={"help": "Synthetic images per real image (M)."})
    prompt_prefix: str | None = field(
        default=None,
        metadata={
            "help": "Put before every prompt; unset: DALDA's (`DEFAULT_PROMPT_PREFIX`), none for real_guidance and "
            "da_fusion.",
        },
    )
    negative_prompt: str | None = field(
        default=None,
        metadata={
            "help": "Unset: DALDA's (`DEFAULT_NEGATIVE_PROMPT`), none for real_guidance and da_fusion; '' for none.",
        },
    )
    clip_score_mode: CLIPScoreMode = field(
        default="probability",
        metadata={
            "help": "CLIPScore: 'probability', the softmax of CLIP's logits over every class prompt, read at the "
            "image's class (the paper); 'cosine', the image–class-prompt cosine similarity.",
        },
    )
    seed: int = field(default=0, metadata={"help": "Seeds the few-shot selection, every λ and every image."})
    seeds: list[int] | None = field(
        default=None,
        metadata={
            "help": "The paper's trials (e.g. 0 1 2), instead of `seed`: one complete dataset per seed, each with its "
            "own shots, λ's and images, in `<output_dir>/seed_<s>/`; one Hub dataset with a configuration per trial "
            "(`load_dataset(<output_dir>, 'seed_0')`), which `dalda evaluate` evaluates trial by trial."
        },
    )
    num_inference_steps: int | None = field(
        default=None,
        metadata={"help": "DDIM steps; unset: 30 for dalda (the paper), 50 for real_guidance and da_fusion."},
    )
    guidance_scale: float = field(default=7.5, metadata={"help": "Classifier-free guidance scale (the paper: 7.5)."})
    real_guidance_strength: float = field(
        default=0.5,
        metadata={
            "help": "img2img strength of `real_guidance`, in (0, 1]: how far the real image is noised before "
            "denoising; int(num_inference_steps · strength) steps run.",
        },
    )
    batch_size: int = field(default=8, metadata={"help": "Synthetic images denoised together in one pass."})
    min_synthetic_score: float | None = field(
        default=None,
        metadata={
            "help": "Regenerate every synthetic image whose own CLIPScore (`synthetic_clip_score`, scored as its real "
            "image is) falls below this, with a new seed and λ raised by `retry_scale_step`, up to `max_attempts`; "
            "each row keeps its best-scoring attempt. Unset: each image is kept as first made, its score recorded. "
            "Method 'dalda' only. A score can move with the batch size (within 1e-4 in the tests), so an image that "
            "close to the threshold can be kept at one batch size and made again at another.",
        },
    )
    max_attempts: int = field(
        default=3, metadata={"help": "With `min_synthetic_score`: attempts per synthetic image, the first included."}
    )
    retry_scale_step: float = field(
        default=0.2,
        metadata={"help": "With `min_synthetic_score`: Δ in the rule λ ← min(1, λ + Δ) of each new attempt."},
    )
    real_images_per_shard: int = field(
        default=4, metadata={"help": "Real images per parquet shard (the unit a rerun resumes)."}
    )
    contact_sheet_rows: int = field(default=8, metadata={"help": "Real images shown in contact_sheet.png."})
    push_to_hub: str | None = field(
        default=None,
        metadata={"help": "ORG/NAME of a Hub dataset repo to upload to (token: HF_TOKEN or `hf auth login`)."},
    )
    private: bool = field(default=False, metadata={"help": "Create the Hub repo as private."})

    def __post_init__(self):
        if self.method not in get_args(Method):
            raise ValueError(f"`method` must be one of {get_args(Method)}, got {self.method!r}.")
        for name, value in method_defaults(self.method).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ValueError(f"`seeds` must be distinct seeds, at least one; got {self.seeds}.")
        for name in ("num_prompts", "batch_size", "real_images_per_shard", "num_inference_steps", "max_attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        if self.method == "dalda":
            if (self.prompt_bank is None) == (not self.base_prompt):
                raise ValueError("Give exactly one of `prompt_bank` and `base_prompt`.")
        else:
            self._check_img2img()
        self._check_retries()

    def _check_retries(self) -> None:
        if not 0 < self.retry_scale_step <= 1:
            raise ValueError(f"`retry_scale_step` must be in (0, 1], got {self.retry_scale_step}.")
        if self.min_synthetic_score is None:
            return
        if not math.isfinite(self.min_synthetic_score):
            raise ValueError(f"`min_synthetic_score` must be a number, got {self.min_synthetic_score}.")
        if self.method != "dalda":
            raise ValueError(
                f"`min_synthetic_score` regenerates an image with a larger IP-Adapter weight λ, which `method="
                f"{self.method!r}` does not have; its images' own CLIPScores are recorded all the same. Filter on "
                "them at evaluation (`dalda evaluate --min_synthetic_score`)."
            )

    def _check_img2img(self) -> None:
        """The baselines always prompt 'a photo of a {class}' (DA-Fusion with the class's token): a prompt bank given
        with them would go unused while the run's record named it, so it is refused rather than ignored."""
        prompt = "'a photo of a <class>'" if self.method == "da_fusion" else "'a photo of a {class}'"
        if self.prompt_bank is not None or self.base_prompt:
            raise ValueError(
                f"`method={self.method!r}` always uses the prompt {prompt}; give neither `prompt_bank` nor "
                "`base_prompt` (or use `method='dalda'`)."
            )
        if not 0 < self.real_guidance_strength <= 1:
            raise ValueError(f"`real_guidance_strength` must be in (0, 1], got {self.real_guidance_strength}.")
        name, strength = (
            ("the smallest DA-Fusion strength", min(DA_FUSION_STRENGTHS))
            if self.method == "da_fusion"
            else ("real_guidance_strength", self.real_guidance_strength)
        )
        if int(self.num_inference_steps * strength) < 1:
            raise ValueError(
                f"img2img runs int(num_inference_steps · {name}) = int({self.num_inference_steps} · {strength}) = 0 "
                "denoising steps; raise num_inference_steps."
            )


@dataclass
class DemoArguments:
    """What `dalda demo` draws and makes."""

    output_dir: str = field(default="dalda-demo", metadata={"help": "Where the demo writes everything."})
    images_per_class: int = field(default=2, metadata={"help": "Real images per class (n)."})
    test_images_per_class: int = field(
        default=6, metadata={"help": "Further images per class, left unselected: the evaluation's test set."}
    )
    num_prompts: int = field(default=3, metadata={"help": "Synthetic images per real image (M)."})
