"""`dalda generate`: images from real images and prompts, with a metadata file saying how each was made."""

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import PIL.Image
import torch

from .loading import ModelArguments, load_dalda_pipeline
from .pipeline import (
    DEFAULT_NEGATIVE_PROMPT,
    DEFAULT_PROMPT_PREFIX,
    AdaptiveGuidanceScaling,
    class_indices,
    item_ip_adapter_scales,
    to_rgb,
)


logger = logging.getLogger(__name__)


@dataclass
class GenerateArguments:
    """What `dalda generate` makes: one image per (real image, prompt) pair."""

    images: list[str] = field(metadata={"help": "The real images, the IP-Adapter image prompts."})
    prompts: list[str] = field(metadata={"help": "One text prompt per image, or one for all."})
    output_dir: str = field(metadata={"help": "Where the images and metadata.jsonl are written."})
    class_names: list[str] = field(default_factory=list, metadata={"help": "Every class of the dataset (AGS)."})
    labels: list[str] = field(default_factory=list, metadata={"help": "Each image's class name (AGS)."})
    num_shots: int = field(default=1, metadata={"help": "Real examples per class, n (AGS's σ = 0.05·n)."})
    ip_adapter_scale: float | None = field(default=None, metadata={"help": "One λ for all; unset samples with AGS."})
    seed: int = field(default=0, metadata={"help": "Image i uses seed + i; AGS uses seed."})
    num_inference_steps: int = 30
    guidance_scale: float = 7.5
    prompt_prefix: str = DEFAULT_PROMPT_PREFIX
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    batch_size: int = field(default=8, metadata={"help": "Items denoised together in one pass."})


def _open_image(path: str) -> PIL.Image.Image:
    try:
        with PIL.Image.open(path) as image:
            image.load()
            return image
    except (OSError, SyntaxError) as error:
        raise ValueError(f"cannot read image {path!r}: {error}") from error


def generate(model_args: ModelArguments, args: GenerateArguments, ags: AdaptiveGuidanceScaling) -> None:
    """Generates one image per real image into `output_dir`, with a `metadata.jsonl` saying how each was made.

    The output folder loads as an `imagefolder` dataset. CLIPScores and λ's are drawn for all images at once, so
    they do not depend on `batch_size`. Real images are resized to the generation size (bilinear) and each output
    is resized back to its real image's size, as in DALDA's released code.
    """
    prompts = args.prompts * len(args.images) if len(args.prompts) == 1 else args.prompts
    if len(prompts) != len(args.images):
        raise ValueError(f"{len(args.prompts)} prompts for {len(args.images)} images.")
    if args.labels and len(args.labels) != len(args.images):
        raise ValueError(f"{len(args.labels)} labels for {len(args.images)} images.")
    labels = class_indices(args.labels, args.class_names) if args.labels else None
    images = [to_rgb(_open_image(path)) for path in args.images]

    pipe = load_dalda_pipeline(model_args)
    scores = None
    if labels is not None and pipe.clip_model is not None:
        scores = pipe.clip_scorer()(images, labels, args.class_names).double().numpy()
    scales = item_ip_adapter_scales(len(images), args.ip_adapter_scale, scores, ags, args.num_shots, args.seed)

    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for start in range(0, len(images), args.batch_size):
        batch = range(start, min(start + args.batch_size, len(images)))
        output = pipe(
            [prompts[i] for i in batch],
            ip_adapter_image=[images[i].resize((size, size), PIL.Image.BILINEAR) for i in batch],
            ip_adapter_scale=scales[batch.start : batch.stop],
            prompt_prefix=args.prompt_prefix,
            negative_prompt=args.negative_prompt,
            num_inference_steps=args.num_inference_steps,
            guidance_scale=args.guidance_scale,
            generator=[torch.Generator().manual_seed(args.seed + i) for i in batch],
        )
        for offset, i in enumerate(batch):
            file_name = f"{i:05d}.png"
            output.images[offset].resize(images[i].size, PIL.Image.BILINEAR).save(output_dir / file_name)
            rows.append(
                {
                    "file_name": file_name,
                    "source_image": str(args.images[i]),
                    "prompt": prompts[i],
                    "label": args.labels[i] if args.labels else None,
                    "ip_adapter_scale": float(scales[i]),
                    "clip_score": float(scores[i]) if scores is not None else None,
                    "seed": args.seed + i,
                }
            )
    with open(output_dir / "metadata.jsonl", "w") as metadata:
        metadata.writelines(json.dumps(row) + "\n" for row in rows)
    run = {"models": asdict(model_args), "generation": asdict(args), "ags": asdict(ags)}
    (output_dir / "generation_config.json").write_text(json.dumps(run, indent=2) + "\n")
    logger.info("Wrote %d images to %s", len(rows), output_dir)
