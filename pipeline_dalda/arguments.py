"""The options of the pipeline's commands (`dalda generate`, `dalda prompts`, `dalda tiny-models`, `dalda
pipeline-repo`), of `dalda metrics-repo`, and the model and AGS options `dalda augment` shares, as `HfArgumentParser`
dataclasses.

This module imports nothing heavy, so `dalda <command> --help` answers at once: what needs torch or diffusers is
imported where an option is turned into a model or a setting, after parsing.
"""

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args
from urllib.parse import urlsplit


if TYPE_CHECKING:
    import torch

    from .dalda_scoring import AdaptiveGuidanceScaling


AGSMode = Literal["truncnorm", "reference", "random", "fixed"]
"""The modes of `AdaptiveGuidanceScaling` (its `AGS_MODES`; a test keeps the two in step)."""
Backend = Literal["template", "openai", "file"]
DType = Literal["auto", "float32", "float16", "bfloat16"]


def resolve_device(device: str) -> "torch.device":
    """A device option as a torch device: 'auto' is CUDA when available, else the CPU."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class ModelArguments:
    """Which models DALDA generates with. Hub ids or local folders; an empty string leaves a part out."""

    _argument_group_name = "models"

    pretrained_model_name_or_path: str = field(
        default="CompVis/stable-diffusion-v1-4", metadata={"help": "A Stable Diffusion 1.x pipeline."}
    )
    vae: str = field(
        default="stabilityai/sd-vae-ft-mse",
        metadata={"help": "A VAE to replace the pipeline's (as DALDA's released code does); '' keeps the pipeline's."},
    )
    ip_adapter: str = field(
        default="h94/IP-Adapter",
        metadata={"help": "The IP-Adapter repository; '' loads none (plain Stable Diffusion, e.g. for img2img)."},
    )
    ip_adapter_subfolder: str = field(default="models", metadata={"help": "The IP-Adapter repository's folder."})
    ip_adapter_weight_name: str = field(default="ip-adapter_sd15.bin", metadata={"help": "Its weight file."})
    clip_score_model: str = field(
        default="openai/clip-vit-base-patch16", metadata={"help": "The CLIP model for CLIPScore; '' loads none."}
    )
    safety_checker: bool = field(
        default=False,
        metadata={"help": "Keep the pipeline's safety checker (DALDA's released code runs without it)."},
    )
    device: str = field(default="auto", metadata={"help": "'auto' (CUDA when available), 'cuda:1', 'cpu', ..."})
    dtype: DType = field(
        default="auto",
        metadata={"help": "'auto': float16 on CUDA, float32 elsewhere. CLIPScore is always computed in float32."},
    )
    compile: bool = field(
        default=False,
        metadata={
            "help": "torch.compile the UNet: one graph per batch size, which new per-item λ's do not recompile. "
            "Measured only on 2 CPU cores in float32 (scripts/README.md): 0.95× to 1.01× the eager UNet's speed, "
            "after about 8 minutes of compiling; not yet measured on a GPU."
        },
    )

    def resolved_device(self) -> "torch.device":
        return resolve_device(self.device)

    def resolved_dtype(self) -> "torch.dtype":
        import torch

        if self.dtype == "auto":
            return torch.float16 if self.resolved_device().type == "cuda" else torch.float32
        if self.dtype not in get_args(DType):
            raise ValueError(f"`dtype` must be one of {get_args(DType)}, got {self.dtype!r}.")
        return getattr(torch, self.dtype)


@dataclass
class AGSArguments:
    """Adaptive Guidance Scaling on the command line; [`to_ags`] makes the pipeline's `AdaptiveGuidanceScaling`,
    whose docstring gives the formulas. The defaults are the paper's (a test keeps the two in step)."""

    _argument_group_name = "AGS"

    ags_mode: AGSMode = field(
        default="truncnorm",
        metadata={
            "help": "'truncnorm': the paper's truncated normal, every λ inside its range (the default). 'reference': "
            "the authors' released code: a normal draw clamped to the range (piling λ's on its ends), the high "
            "range's top raised to high_max + 0.1·√n, so λ's differ from truncnorm's, more so for n > 1. 'random': "
            "λ ~ U[0, 1] (ablation). 'fixed': λ = fixed_scale (ablation). `--mode` is its old name."
        },
    )
    threshold: float = field(default=0.3, metadata={"help": "α: a CLIPScore <= α draws λ from the low-score range."})
    low_min: float = field(default=0.7, metadata={"help": "Lower end of λ for low CLIPScores (stay near the image)."})
    low_max: float = field(default=0.9, metadata={"help": "Upper end of λ for low CLIPScores."})
    high_min: float = field(default=0.1, metadata={"help": "Lower end of λ for high CLIPScores (let the text vary)."})
    high_max: float = field(default=0.4, metadata={"help": "Upper end of λ for high CLIPScores."})
    sigma_per_shot: float = field(default=0.05, metadata={"help": "σ = sigma_per_shot · n (n real images a class)."})
    sigma: float | None = field(default=None, metadata={"help": "A fixed σ, instead of sigma_per_shot·n."})
    fixed_scale: float | None = field(default=None, metadata={"help": "λ of every image in the 'fixed' mode."})

    def to_ags(self) -> "AdaptiveGuidanceScaling":
        """The pipeline's AGS settings (which check them)."""
        from .dalda_scoring import AdaptiveGuidanceScaling

        settings = {option.name: getattr(self, option.name) for option in fields(self)}
        return AdaptiveGuidanceScaling(mode=settings.pop("ags_mode"), **settings)


DEPRECATED_OPTIONS = {"mode": "ags_mode"}
"""Old option names the command line still reads, with a warning: old name → new name."""


@dataclass
class GenerateArguments:
    """What `dalda generate` makes: one image per (real image, prompt) pair."""

    images: list[str] = field(metadata={"help": "The real images, the IP-Adapter image prompts (any size or mode)."})
    prompts: list[str] = field(metadata={"help": "One text prompt per image, or one for all."})
    output_dir: str = field(metadata={"help": "Where the images and metadata.jsonl are written."})
    class_names: list[str] = field(default_factory=list, metadata={"help": "Every class of the dataset (for AGS)."})
    labels: list[str] = field(default_factory=list, metadata={"help": "Each image's class name (for AGS)."})
    num_shots: int = field(default=1, metadata={"help": "Real images per class, n (AGS's σ = 0.05·n)."})
    ip_adapter_scale: float | None = field(default=None, metadata={"help": "One λ for all; unset: AGS draws each."})
    seed: int = field(default=0, metadata={"help": "Seeds every image's noise and λ, each from (seed, its position)."})
    num_inference_steps: int = field(default=30, metadata={"help": "DDIM denoising steps (the paper: 30)."})
    guidance_scale: float = field(default=7.5, metadata={"help": "Classifier-free guidance scale (the paper: 7.5)."})
    prompt_prefix: str | None = field(
        default=None, metadata={"help": "Put before every prompt; unset: DALDA's (`DEFAULT_PROMPT_PREFIX`)."}
    )
    negative_prompt: str | None = field(
        default=None, metadata={"help": "Unset: DALDA's (`DEFAULT_NEGATIVE_PROMPT`); '' for none."}
    )
    batch_size: int = field(default=8, metadata={"help": "Items denoised together in one pass."})

    def __post_init__(self):
        # Imported here: the pipeline module loads torch and diffusers, which `--help` must not wait for.
        from .dalda_per_item import DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT_PREFIX

        if self.prompt_prefix is None:
            self.prompt_prefix = DEFAULT_PROMPT_PREFIX
        if self.negative_prompt is None:
            self.negative_prompt = DEFAULT_NEGATIVE_PROMPT


@dataclass
class PromptArguments:
    """What `dalda prompts` makes: M scene sentences per class, as a prompt bank JSON file."""

    _argument_group_name = "prompts"

    output: str = field(metadata={"help": "The prompt bank JSON file to write."})
    backend: Backend = field(
        default="template",
        metadata={
            "help": "'template': offline sentences from templates. 'openai': any OpenAI-compatible chat server "
            "(see the LLM options). 'file': import an existing bank (`input_bank`), checked and completed."
        },
    )
    dataset_description: str = field(
        default="", metadata={"help": "A short description of the dataset, for the LLM (e.g. 'photos of pets')."}
    )
    dataset_description_file: str | None = field(default=None, metadata={"help": "...or a file holding it."})
    num_prompts: int = field(default=10, metadata={"help": "Sentences per class (M)."})
    seed: int = field(default=0, metadata={"help": "Seed of the template sentences."})
    chunk_size: int = field(default=10, metadata={"help": "Classes per LLM request."})
    max_concurrency: int = field(default=4, metadata={"help": "LLM requests in flight at once."})
    input_bank: str | None = field(default=None, metadata={"help": "The bank the 'file' backend imports."})

    def __post_init__(self):
        if self.backend not in get_args(Backend):
            raise ValueError(f"`backend` must be one of {get_args(Backend)}, got {self.backend!r}.")
        for name in ("num_prompts", "chunk_size", "max_concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        if self.backend == "file" and not self.input_bank:
            raise ValueError("The 'file' backend needs `input_bank`, the prompt bank to import.")

    def description(self) -> str:
        if self.dataset_description_file:
            return Path(self.dataset_description_file).read_text(encoding="utf-8").strip()
        return self.dataset_description.strip()


@dataclass
class LLMSettings:
    """How to reach the LLM and sample from it (DALDA's defaults: temperature 1.0, top_p 1.0, no penalties)."""

    _argument_group_name = "LLM"

    model: str | None = field(default=None, metadata={"help": "The chat model (the paper used gpt-4-0613)."})
    base_url: str | None = field(
        default=None, metadata={"help": "An OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 for vLLM."}
    )
    api_key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "The environment variable holding the API key (never an option)."}
    )
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (DALDA: 1.0)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (DALDA: 1.0)."})
    frequency_penalty: float = field(default=0.0, metadata={"help": "OpenAI frequency penalty (DALDA: 0)."})
    presence_penalty: float = field(default=0.0, metadata={"help": "OpenAI presence penalty (DALDA: 0)."})
    json_mode: bool = field(default=True, metadata={"help": "Ask for the server's JSON mode (dropped if refused)."})
    request_timeout: float = field(default=120.0, metadata={"help": "Seconds before a request counts as failed."})
    max_retries: int = field(default=6, metadata={"help": "Retries of a request on 429, 5xx, time-outs, resets."})
    retry_base_delay: float = field(default=1.0, metadata={"help": "First back-off delay in seconds (doubles)."})
    retry_max_delay: float = field(default=60.0, metadata={"help": "Longest back-off delay in seconds."})
    max_reasks: int = field(default=3, metadata={"help": "Re-asks for bad answers before template sentences fill in."})

    def base_url_host(self) -> str:
        """The server's host, the only part of the endpoint worth recording (never credentials or paths)."""
        return urlsplit(self.base_url).hostname or "" if self.base_url else "api.openai.com"

    def sampling(self) -> dict[str, float]:
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
        }


@dataclass
class TinyModelsArguments:
    """Where `dalda tiny-models` writes the offline model kit."""

    output_dir: str = field(metadata={"help": "The kit's folder."})
    seed: int = field(default=0, metadata={"help": "Seed of the random weights."})


@dataclass
class PipelineRepoArguments:
    """Where `dalda pipeline-repo` writes the pipeline repository, and where it pushes it."""

    output_dir: str = field(
        metadata={"help": "The folder to write `pipeline.py` and `README.md` into (new, or holding only those two)."}
    )
    push_to_hub: str | None = field(
        default=None,
        metadata={"help": "ORG/NAME of a Hub model repo to upload to (token: HF_TOKEN or `hf auth login`)."},
    )
    private: bool = field(default=False, metadata={"help": "Create the Hub repo private (if it does not exist)."})


@dataclass
class MetricsRepoArguments:
    """Which `evaluate` module `dalda metrics-repo` writes as a Space, where, and where it pushes it."""

    metric: str = field(
        metadata={"help": "The module (a folder of scripts/metrics: clip_i or lpips_diversity); also the first value."}
    )
    output_dir: str = field(
        metadata={"help": "The folder to write the Space into (new, or holding only that module's Space files)."}
    )
    push_to_hub: str | None = field(
        default=None,
        metadata={
            "help": "ORG/NAME of a Hub Space to upload to, NAME a Python module name: evaluate.load('ORG/NAME') loads "
            "it (token: HF_TOKEN or `hf auth login`)."
        },
    )
    private: bool = field(default=False, metadata={"help": "Create the Hub Space private (if it does not exist)."})
