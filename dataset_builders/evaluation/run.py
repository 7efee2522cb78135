"""`dalda evaluate`: does the augmentation help a few-shot classifier, by how much, with what confidence?

Trains the paper's few-shot classifiers — a linear head on a frozen backbone — on the augmented dataset, with the
real-only baseline side by side (same seeds, same test set, same real draws and views), and writes the report.
The backbone runs once per image and view (features cached on disk); the head then trains in seconds per trial.
"""

import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np
import torch
from huggingface_hub.constants import HF_HOME
from tqdm.auto import tqdm

from pipeline_dalda.atomic import create_output_dir

from ..card import method_label
from .arguments import DiversityArguments, EvaluateArguments
from .backbones import PAPER_MEAN, PAPER_STD, HeadRecipe, load_backbone
from .data import EvaluationSplits, ImageRef, LeakError, load_evaluation_splits, prepare_images
from .diversity import compute_diversity, diversity_table
from .features import FeatureCache, FeatureExtractor, PreparedImage, RenderedFeatures
from .report import write_report
from .training import (
    CachedFeatures,
    LabelledFeatures,
    TrainingPool,
    draw_training_batches,
    train_linear_head,
)
from .views import IDENTITY, view_grid


logger = logging.getLogger(__name__)

ARMS = {"augmented": "augmented", "real_only": "real only"}


@dataclass
class PreparedTraining:
    """The training images that decoded, as a [`TrainingPool`], with their prepared pixels in pool order."""

    pool: TrainingPool
    images: list[PreparedImage]
    real_hashes: dict[str, str]
    """Content hash → origin of every real training image, for the leak check."""


def prepare_training(splits: EvaluationSplits, image_size: int, num_workers: int) -> PreparedTraining:
    """Decodes the training images; a real image that does not decode is dropped with its synthetic images."""
    reals = list(
        tqdm(prepare_images(splits.reals, image_size, splits.skipped, num_workers), "real images", len(splits.reals))
    )
    synthetic_refs: list[ImageRef] = []
    group_of: list[int] = []
    for group, (position, _) in enumerate(reals):
        synthetic_refs += splits.synthetic[position]
        group_of += [group] * len(splits.synthetic[position])
    decoded = {position for position, _ in reals}
    splits.skipped["synthetic image of an undecodable real image"] += sum(
        len(images) for position, images in enumerate(splits.synthetic) if position not in decoded
    )
    synthetic = list(
        tqdm(
            prepare_images(synthetic_refs, image_size, splits.skipped, num_workers),
            "synthetic images",
            len(synthetic_refs),
        )
    )
    counts = np.bincount([group_of[position] for position, _ in synthetic], minlength=len(reals))
    pool = TrainingPool.from_groups([splits.reals[position].label for position, _ in reals], counts.tolist())
    real_hashes = {prepared.content_hash: splits.reals[position].origin for position, prepared in reals}
    return PreparedTraining(pool, [p for _, p in reals] + [p for _, p in synthetic], real_hashes)


def extract_evaluation_features(
    refs: list[ImageRef],
    extractor: FeatureExtractor,
    training: PreparedTraining,
    args: EvaluateArguments,
    skipped: Counter,
    description: str,
) -> LabelledFeatures:
    """Identity-view features of test or validation images; raises [`LeakError`] naming every real training image
    found among them by content."""
    kept: list[int] = []
    leaks: list[str] = []

    def checked():
        for position, prepared in prepare_images(refs, args.image_size, skipped, args.num_workers):
            if prepared.content_hash in training.real_hashes:
                leaks.append(f"{refs[position].origin} = {training.real_hashes[prepared.content_hash]}")
            kept.append(position)
            yield prepared

    features = extractor.extract(checked(), [IDENTITY], total=len(refs), description=description)[:, 0]
    if leaks:
        raise LeakError(
            f"{len(leaks)} {description} images are real training images (same pixels): {'; '.join(leaks[:10])}."
        )
    return LabelledFeatures(features, np.array([refs[position].label for position in kept], dtype=np.int64))


def selected_epoch(history: list[dict], select: str) -> dict:
    """The epoch the trial reports: the last one, or the best by validation or (optimistic) test balanced accuracy."""
    if select == "last_epoch":
        return history[-1]
    key = "validation_balanced_accuracy" if select == "best_validation_epoch" else "test_balanced_accuracy"
    return max(history, key=lambda record: record[key])


def evaluate_augmented_dataset(args: EvaluateArguments, diversity_args: DiversityArguments | None = None) -> dict:
    """Runs every trial (and, with `args.diversity`, the diversity metrics) and writes the report to
    `args.output_dir`; returns the results (as in results.json)."""
    create_output_dir(args.output_dir)
    splits = load_evaluation_splits(
        args.dataset,
        args.dataset_revision,
        args.test_set,
        args.test_split,
        args.source_dataset,
        args.validation_fraction,
    )
    device = args.resolved_device()
    backbone = load_backbone(args.backbone, device, getattr(torch, args.dtype))
    mean, std = (
        (PAPER_MEAN, PAPER_STD) if args.normalization == "paper" else (backbone.processor_mean, backbone.processor_std)
    )
    cache = None
    if args.feature_cache:
        cache_dir = args.cache_dir or os.path.join(HF_HOME, "dalda", "features")
        cache = FeatureCache(cache_dir, FeatureExtractor.cache_key(backbone, args.image_size, mean, std))
    extractor = FeatureExtractor(backbone, mean, std, cache, args.feature_batch_size)

    training = prepare_training(splits, args.image_size, args.num_workers)
    test = extract_evaluation_features(splits.test, extractor, training, args, splits.skipped, "test")
    if len(test.labels) == 0:
        raise ValueError(
            f"The test set of {args.dataset!r} is empty ({splits.description}); choose another `test_set`."
        )
    validation = None
    if splits.validation:
        validation = extract_evaluation_features(
            splits.validation, extractor, training, args, splits.skipped, "validation"
        )
    if args.select == "best_validation_epoch" and (validation is None or len(validation.labels) == 0):
        raise ValueError(
            f"`validation_fraction` {args.validation_fraction} leaves no validation image (a class needs at least "
            "two test images to give one); raise it, or choose another `select`."
        )
    splits.description.update(
        test_images=len(test.labels), validation_images=len(validation.labels) if validation else 0
    )
    if args.feature_cache:
        grid = view_grid(args.rotation_step)
        table = extractor.extract(training.images, grid, len(training.images), "training features")
        features_of, view_sampling = CachedFeatures(table, device), "grid"
    else:
        features_of, view_sampling = RenderedFeatures(extractor, [p.image for p in training.images]), "continuous"

    recipe = HeadRecipe(
        backbone.recipe.optimizer,
        args.learning_rate if args.learning_rate is not None else backbone.recipe.learning_rate,
        args.weight_decay if args.weight_decay is not None else backbone.recipe.weight_decay,
    )
    arms = {"augmented": args.synthetic_probability}
    if args.real_only_baseline and args.synthetic_probability > 0:
        arms["real_only"] = 0.0
    trials = []
    for seed in args.seeds:
        for arm, probability in arms.items():
            draws = draw_training_batches(
                training.pool, args.schedule(), seed, probability, view_sampling, args.rotation_step
            )
            head = backbone.initial_head(splits.class_names, seed).to(device)
            history = train_linear_head(
                head, recipe, features_of, training.pool, draws, test, validation, f"{ARMS[arm]}, seed {seed}"
            )
            trials.append(
                {
                    "arm": arm,
                    "seed": seed,
                    "synthetic_probability": probability,
                    "synthetic_fraction_drawn": float(draws.is_synthetic.mean()),
                    "selected": selected_epoch(history, args.select),
                    "history": history,
                }
            )
    context = {
        "splits": splits,
        "training": training,
        "backbone": {"id": args.backbone, "fingerprint": backbone.fingerprint, "feature_dim": backbone.feature_dim},
        "recipe": asdict(recipe),
        "image_size": args.image_size,
    }
    if args.diversity:
        diversity = compute_diversity(splits.augmented, diversity_args or DiversityArguments(), device)
        label = args.method_label or method_label(splits.recorded)
        context["diversity"] = {**diversity, "table": diversity_table([(label, diversity)])}
    return write_report(args, trials, context)
