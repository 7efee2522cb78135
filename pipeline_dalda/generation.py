"""`dalda generate`: images from real images and prompts, with a metadata file saying how each was made."""

import json
import logging
from dataclasses import asdict

import PIL.Image

from .arguments import GenerateArguments, ModelArguments
from .atomic import create_output_dir
from .images import BadImage, load_image
from .loading import load_dalda_pipeline
from .dalda_per_item import class_indices
from .dalda_scoring import AdaptiveGuidanceScaling
from .seeding import item_seed, noise_generator, scale_generator


logger = logging.getLogger(__name__)


def _read_image(path: str) -> PIL.Image.Image:
    try:
        return load_image(path)
    except BadImage as error:
        raise ValueError(f"cannot read image {path!r}: {error}") from error


def generate(model_args: ModelArguments, args: GenerateArguments, ags: AdaptiveGuidanceScaling) -> None:
    """Generates one image per real image into `output_dir`, with a `metadata.jsonl` saying how each was made.

    The output folder loads as an `imagefolder` dataset. Image `i` draws its noise and λ from (seed, i) only, and the
    CLIPScores are computed for all images at once, so nothing depends on `batch_size`. The pipeline scores each
    real image as given and encodes it at the generation size; each output is resized back to its real image's size,
    as in DALDA's released code.
    """
    prompts = args.prompts * len(args.images) if len(args.prompts) == 1 else args.prompts
    if len(prompts) != len(args.images):
        raise ValueError(f"{len(args.prompts)} prompts for {len(args.images)} images.")
    if args.labels and len(args.labels) != len(args.images):
        raise ValueError(f"{len(args.labels)} labels for {len(args.images)} images.")
    labels = class_indices(args.labels, args.class_names) if args.labels else None
    images = [_read_image(path) for path in args.images]
    output_dir = create_output_dir(args.output_dir)

    pipe = load_dalda_pipeline(model_args)
    scores = None
    if labels is not None and pipe.clip_model is not None:
        scores = pipe.clip_scorer()(images, labels, args.class_names).tolist()
    seeds = [item_seed(args.seed, i, 0) for i in range(len(images))]

    rows = []
    for start in range(0, len(images), args.batch_size):
        batch = range(start, min(start + args.batch_size, len(images)))
        output = pipe(
            [prompts[i] for i in batch],
            ip_adapter_image=[images[i] for i in batch],
            ip_adapter_scale=args.ip_adapter_scale,
            clip_scores=[scores[i] for i in batch] if scores is not None else None,
            ags=ags,
            num_shots=args.num_shots,
            ags_generator=[scale_generator(args.seed, i, 0) for i in batch],
            prompt_prefix=args.prompt_prefix,
            negative_prompt=args.negative_prompt,
            num_inference_steps=args.num_inference_steps,
            guidance_scale=args.guidance_scale,
            generator=[noise_generator(seeds[i]) for i in batch],
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
                    "ip_adapter_scale": output.ip_adapter_scales[offset],
                    "clip_score": output.clip_scores[offset] if output.clip_scores is not None else None,
                    "seed": seeds[i],
                }
            )
    with open(output_dir / "metadata.jsonl", "w") as metadata:
        metadata.writelines(json.dumps(row) + "\n" for row in rows)
    run = {"models": asdict(model_args), "generation": asdict(args), "ags": asdict(ags)}
    (output_dir / "generation_config.json").write_text(json.dumps(run, indent=2) + "\n")
    logger.info("Wrote %d images to %s", len(rows), output_dir)
