"""`dalda demo`: the whole job on a fresh machine with no network — a small drawn dataset, the offline model kit,
template prompts — ending in a Hub-layout dataset, a contact sheet and the evaluation report."""

import logging
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw

from pipeline_dalda import AdaptiveGuidanceScaling
from pipeline_dalda.arguments import ModelArguments
from pipeline_dalda.prompts import PromptArguments, generate_prompt_bank
from pipeline_dalda.testing import IP_ADAPTER_WEIGHT_NAME, save_tiny_models

from .arguments import AugmentArguments, DemoArguments, SourceArguments
from .augment import augment_dataset
from .evaluation.arguments import EvaluateArguments
from .evaluation.report import report_summary
from .evaluation.run import evaluate_augmented_dataset


logger = logging.getLogger(__name__)

DEMO_CLASSES = ("circle", "square", "triangle")


def draw_demo_dataset(folder: Path, images_per_class: int, seed: int = 0) -> Path:
    """An imagefolder dataset of coloured shapes on plain backgrounds, one subfolder per class."""
    rng = np.random.default_rng(seed)
    for name in DEMO_CLASSES:
        (folder / "train" / name).mkdir(parents=True, exist_ok=True)
        for index in range(images_per_class):
            background, colour = (tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(2))
            image = PIL.Image.new("RGB", (96, 80), background)
            draw = PIL.ImageDraw.Draw(image)
            x, y, r = int(rng.integers(30, 66)), int(rng.integers(28, 52)), int(rng.integers(14, 26))
            if name == "circle":
                draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
            elif name == "square":
                draw.rectangle((x - r, y - r, x + r, y + r), fill=colour)
            else:
                draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=colour)
            image.save(folder / "train" / name / f"{index}.png")
    return folder


def run_demo(args: DemoArguments) -> None:
    output = Path(args.output_dir)
    models = output / "models"
    if not (models / "clip-scorer" / "config.json").exists():
        save_tiny_models(models)
    source = draw_demo_dataset(output / "source", args.images_per_class + args.test_images_per_class)
    bank = output / "prompts.json"
    generate_prompt_bank(PromptArguments(output=str(bank), num_prompts=args.num_prompts), list(DEMO_CLASSES))
    model_args = ModelArguments(
        pretrained_model_name_or_path=str(models / "stable-diffusion"),
        vae="",
        ip_adapter=str(models / "ip-adapter"),
        ip_adapter_weight_name=IP_ADAPTER_WEIGHT_NAME,
        clip_score_model=str(models / "clip-scorer"),
    )
    augment_dataset(
        SourceArguments(dataset=str(source), num_shots=args.images_per_class),
        AugmentArguments(
            output_dir=str(output / "dataset"),
            prompt_bank=str(bank),
            num_prompts=args.num_prompts,
            num_inference_steps=10,
            batch_size=args.num_prompts * 2,
        ),
        model_args,
        AdaptiveGuidanceScaling(),
    )
    evaluate_augmented_dataset(
        EvaluateArguments(
            dataset=str(output / "dataset"),
            output_dir=str(output / "evaluation"),
            backbone=str(models / "clip-scorer"),
            image_size=32,  # the tiny CLIP's input size
            epochs=5,
            iterations_per_epoch=20,
            cache_dir=str(output / "feature-cache"),
        )
    )
    print(report_summary(output / "evaluation"))
    print(
        f"\nThe demo dataset is in {output / 'dataset'} (load it with datasets.load_dataset({str(output / 'dataset')!r}))"
        f"\nand its contact sheet in {output / 'dataset' / 'contact_sheet.png'}; the evaluation report is in "
        f"{output / 'evaluation'}."
        "\nThe demo's models are tiny and untrained: its synthetic images are noise and its accuracies mean nothing."
        " With the real models:"
        "\n  dalda prompts --backend openai --model gpt-4-0613 --dataset_description '...' --dataset <dataset> "
        "--output prompts.json"
        "\n  dalda augment --dataset <dataset> --num_shots 1 --shot_selection paper --prompt_bank prompts.json "
        "--output_dir augmented"
        "\n  dalda evaluate --dataset augmented --output_dir evaluation"
    )
