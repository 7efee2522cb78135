"""Loads a ready-to-call [`DALDAPipeline`] from model ids, with DALDA's defaults (DESIGN §2)."""

import logging
from dataclasses import dataclass, field

import torch
from diffusers import AutoencoderKL, DDIMScheduler
from transformers import CLIPModel, CLIPProcessor

from .pipeline import DALDA_SCHEDULER_CONFIG, DEFAULT_CLIP_SCORE_MODEL, DALDAPipeline


logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    """Which models DALDA generates with. Hub ids or local folders; an empty string leaves a part out."""

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
    ip_adapter_subfolder: str = field(default="models", metadata={"help": "Its folder holding the weights."})
    ip_adapter_weight_name: str = field(default="ip-adapter_sd15.bin", metadata={"help": "The weight file."})
    clip_score_model: str = field(
        default=DEFAULT_CLIP_SCORE_MODEL, metadata={"help": "The CLIP model for CLIPScore; '' loads none."}
    )
    safety_checker: bool = field(
        default=False,
        metadata={"help": "Keep the pipeline's safety checker (DALDA's released code runs without it)."},
    )
    device: str = field(default="auto", metadata={"help": "'auto' (CUDA when available), 'cuda', 'cpu', ..."})
    dtype: str = field(default="auto", metadata={"help": "'auto' (float16 on CUDA, else float32), 'float32', ..."})

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolved_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.float16 if self.resolved_device().type == "cuda" else torch.float32
        dtype = getattr(torch, self.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"`dtype` {self.dtype!r} is not a torch dtype (e.g. 'float16', 'float32').")
        return dtype


def load_dalda_pipeline(args: ModelArguments) -> DALDAPipeline:
    """Loads Stable Diffusion with DALDA's DDIM scheduler, the VAE, the CLIP scoring model and the IP-Adapter.

    With `args.ip_adapter == ""` the UNet keeps its plain attention processors: IP-Adapter processors called without
    image embeddings would read the last text tokens as image tokens, so pipelines that give no image prompt (such as
    img2img built from these components) need the pipeline loaded this way.
    """
    dtype = args.resolved_dtype()
    components = {}
    if args.vae:
        components["vae"] = AutoencoderKL.from_pretrained(args.vae, torch_dtype=dtype)
    if args.clip_score_model:
        components["clip_model"] = CLIPModel.from_pretrained(args.clip_score_model, dtype=dtype)
        components["clip_processor"] = CLIPProcessor.from_pretrained(args.clip_score_model)
    if not args.safety_checker:
        components.update(safety_checker=None, requires_safety_checker=False)
    logger.info("Loading %s", args.pretrained_model_name_or_path)
    pipe = DALDAPipeline.from_pretrained(args.pretrained_model_name_or_path, torch_dtype=dtype, **components)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, **DALDA_SCHEDULER_CONFIG)
    if args.ip_adapter:
        pipe.load_ip_adapter(
            args.ip_adapter, subfolder=args.ip_adapter_subfolder, weight_name=args.ip_adapter_weight_name
        )
    return pipe.to(args.resolved_device())
