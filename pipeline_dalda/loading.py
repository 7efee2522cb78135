"""Loads a ready-to-call [`DALDAPipeline`] from model ids, with DALDA's defaults (DESIGN §2)."""

import logging

import torch
from diffusers import AutoencoderKL, DDIMScheduler
from transformers import CLIPModel, CLIPProcessor

from .arguments import ModelArguments
from .dalda_per_item import DALDA_SCHEDULER_CONFIG
from .pipeline import DALDAPipeline


logger = logging.getLogger(__name__)


def load_dalda_pipeline(args: ModelArguments) -> DALDAPipeline:
    """Loads Stable Diffusion with DALDA's DDIM scheduler, the VAE, the CLIP scoring model and the IP-Adapter.

    With `args.ip_adapter == ""` the UNet keeps its plain attention processors: IP-Adapter processors called without
    image embeddings would read the last text tokens as image tokens, so pipelines that give no image prompt (such as
    img2img built from these components) need the pipeline loaded this way. With `args.compile` the UNet is
    compiled after the IP-Adapter is loaded, so the compiled graph holds its attention layers.
    """
    dtype = args.resolved_dtype()
    components = {}
    if args.vae:
        components["vae"] = AutoencoderKL.from_pretrained(args.vae, dtype=dtype)
    if args.clip_score_model:
        # Always float32: a score within rounding of AGS's threshold must not change branch with the precision.
        components["clip_model"] = CLIPModel.from_pretrained(args.clip_score_model, dtype=torch.float32)
        components["clip_processor"] = CLIPProcessor.from_pretrained(args.clip_score_model)
    if not args.safety_checker:
        components.update(safety_checker=None, requires_safety_checker=False)
    logger.info("Loading %s", args.pretrained_model_name_or_path)
    pipe = DALDAPipeline.from_pretrained(args.pretrained_model_name_or_path, dtype=dtype, **components)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, **DALDA_SCHEDULER_CONFIG)
    if args.ip_adapter:
        pipe.load_ip_adapter(
            args.ip_adapter, subfolder=args.ip_adapter_subfolder, weight_name=args.ip_adapter_weight_name
        )
    pipe = pipe.to(args.resolved_device())
    if args.compile:
        pipe.unet = torch.compile(pipe.unet)
    return pipe
