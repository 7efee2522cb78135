"""`dalda evaluate`: does the augmentation help a few-shot classifier, by how much, with what confidence?

Trains the paper's few-shot classifiers — a linear head on a frozen backbone — on the augmented dataset, with the
real-only baseline side by side, and writes the report.

A **trial**, as in the paper, is one seed's draw of everything: the shots, the synthetic images made from them (one
trial of a dataset written by `dalda augment --seeds`) and the classifier (seeded by the trial's seed). Within a
trial, the augmented and real-only classifiers share the shots, the test set, the seed and every real draw and view,
so each trial gives one paired difference, and the spread and the interval are over trials. On a dataset of one
trial, `classifier_seeds` repeats only the classifier: the report calls those classifier repeats.
`min_synthetic_score` restricts the synthetic images the augmented classifier may draw to those whose own CLIPScore
reaches it, and `min_synthetic_score_sweep` adds one augmented classifier per threshold, on the same draws.

The backbone runs once per image and view (features cached on disk), and the heads of every trial and arm train
together as one batched computation. The paper's ResNet-50 mode (`batch_norm="paper"`) runs the backbone at every
step, in training mode, one classifier at a time.
"""

import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np
import PIL.Image
import torch
from huggingface_hub.constants import HF_HOME
from tqdm.auto import tqdm

from pipeline_dalda.atomic import check_output_dir, create_output_dir

from ..card import method_label
from .arguments import DiversityArguments, EvaluateArguments
from .backbones import PAPER_MEAN, PAPER_STD, FrozenBackbone, HeadRecipe, load_backbone
from .data import (
    EvaluationSplits,
    ImageRef,
    LeakError,
    TrialLocation,
    check_synthetic_scores,
    classes_without_test_images,
    find_trials,
    load_evaluation_splits,
    prepare_images,
)
from .diversity import check_diversity_requirements, compute_diversity, diversity_table
from .features import FeatureCache, FeatureExtractor, PreparedImage, RenderedFeatures, TrainModeBatchNormFeatures
from .metrics import select_epochs
from .publish import check_evaluation_repo, push_report
from .report import write_report
from .summary import SWEEP_ARM, arm_in_words
from .training import (
    CachedFeatures,
    Draws,
    EpochScorer,
    LabelledFeatures,
    StackedLinearHeads,
    TrainingPool,
    draw_training_batches,
    held_out_scorer,
    train_linear_heads,
)
from .views import IDENTITY, view_grid


logger = logging.getLogger(__name__)



@dataclass
class PreparedTraining:
    """The training images that decoded, as a [`TrainingPool`], with their prepared pixels in pool order."""

    pool: TrainingPool
    images: list[PreparedImage]
    real_hashes: dict[str, str]
    """Content hash → origin of every real training image, for the leak check."""
    synthetic_scores: np.ndarray
    """Each synthetic item's own CLIPScore (`synthetic_clip_score`, float32), in pool order; NaN where none is
    recorded."""

    def keeps(self, threshold: float) -> np.ndarray:
        """Which synthetic items score at or above `threshold`, compared in the column's float32."""
        return self.synthetic_scores >= np.float32(threshold)

    def pool_at_or_above(self, threshold: float | None) -> TrainingPool:
        """The pool whose draws may pick only the synthetic images at or above `threshold` (all of them for None)."""
        return self.pool if threshold is None else self.pool.restricted(self.keeps(threshold))


@dataclass
class HeldOut:
    """Test or validation images: their identity-view features and classes, and (for the paper's batch-norm mode,
    whose test features change as the classifier trains) their prepared pixels."""

    features: LabelledFeatures
    images: list[PIL.Image.Image] | None = None


@dataclass
class Trial:
    """One trial's data, ready to train on: its splits, training pool and held-out images."""

    location: TrialLocation
    splits: EvaluationSplits
    training: PreparedTraining
    test: HeldOut
    validation: HeldOut | None

    @property
    def seed(self) -> int:
        return int(self.splits.recorded["generation"]["seed"])


@dataclass
class Classifier:
    """One head to train: its trial, its arm, the seed of its initialisation and sampling, and its draws."""

    trial: int
    arm: str
    seed: int
    synthetic_probability: float
    min_synthetic_score: float | None
    """The synthetic-score threshold of the synthetic images it may draw (None: all of them)."""
    draws: Draws


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
    scores = [synthetic_refs[position].synthetic_clip_score for position, _ in synthetic]  # those that decoded
    scores = np.array([np.nan if score is None else score for score in scores], dtype=np.float32)
    return PreparedTraining(pool, [p for _, p in reals] + [p for _, p in synthetic], real_hashes, scores)


def extract_evaluation_features(
    refs: list[ImageRef],
    extractor: FeatureExtractor,
    training: PreparedTraining,
    args: EvaluateArguments,
    skipped: Counter,
    description: str,
) -> HeldOut:
    """Identity-view features of test or validation images (and, in the paper's batch-norm mode, their pixels);
    raises [`LeakError`] naming every real training image found among them by content."""
    kept: list[int] = []
    leaks: list[str] = []
    images: list[PIL.Image.Image] = []
    keep_images = args.batch_norm == "paper"

    def checked():
        for position, prepared in prepare_images(refs, args.image_size, skipped, args.num_workers):
            if prepared.content_hash in training.real_hashes:
                leaks.append(f"{refs[position].origin} = {training.real_hashes[prepared.content_hash]}")
            kept.append(position)
            if keep_images:
                images.append(prepared.image)
            yield prepared

    features = extractor.extract(checked(), [IDENTITY], total=len(refs), description=description)[:, 0]
    if leaks:
        raise LeakError(
            f"{len(leaks)} {description} images are real training images (same pixels): {'; '.join(leaks[:10])}."
        )
    labels = np.array([refs[position].label for position in kept], dtype=np.int64)
    return HeldOut(LabelledFeatures(features, labels), images if keep_images else None)


def prepare_trial(location: TrialLocation, extractor: FeatureExtractor, args: EvaluateArguments) -> Trial:
    """Reads one trial's augmented dataset and source, decodes its training images and extracts its test (and
    validation) features."""
    splits = load_evaluation_splits(
        location.path,
        args.dataset_revision,
        args.test_set,
        args.test_split,
        args.source_dataset,
        args.validation_fraction,
        config=location.config,
    )
    training = prepare_training(splits, args.image_size, args.num_workers)
    test = extract_evaluation_features(splits.test, extractor, training, args, splits.skipped, "test")
    if len(test.features.labels) == 0:
        raise ValueError(
            f"The test set of {location.name!r} is empty ({splits.description}); choose another `test_set`."
        )
    validation = None
    if splits.validation:
        validation = extract_evaluation_features(
            splits.validation, extractor, training, args, splits.skipped, "validation"
        )
    if args.select == "best_validation_epoch" and (validation is None or len(validation.features.labels) == 0):
        raise ValueError(
            f"`validation_fraction` {args.validation_fraction} leaves no validation image (a class needs at least "
            "two test images to give one); raise it, or choose another `select`."
        )
    splits.description.update(
        test_images=len(test.features.labels),
        validation_images=len(validation.features.labels) if validation else 0,
    )
    return Trial(location, splits, training, test, validation)


def plan_classifiers(trials: list[Trial], args: EvaluateArguments, view_sampling: str) -> list[Classifier]:
    """Every head to train: per trial, per classifier seed (the trial's own unless `classifier_seeds`), the
    augmented arm (on the synthetic images at or above `min_synthetic_score`, where set), beside it the real-only arm,
    and one augmented arm per threshold of `min_synthetic_score_sweep`, all on the same real draws."""
    arms = [("augmented", args.synthetic_probability, args.min_synthetic_score)]
    if args.real_only_baseline and args.synthetic_probability > 0:
        arms.append(("real_only", 0.0, None))
    arms += [(SWEEP_ARM, args.synthetic_probability, threshold) for threshold in args.min_synthetic_score_sweep or []]
    classifiers, schedule = [], args.schedule()
    for index, trial in enumerate(trials):
        for seed in args.classifier_seeds or [trial.seed]:
            for arm, probability, threshold in arms:
                pool = trial.training.pool_at_or_above(threshold)
                draws = draw_training_batches(pool, schedule, seed, probability, view_sampling, args.rotation_step)
                classifiers.append(Classifier(index, arm, seed, probability, threshold, draws))
    return classifiers


def train_classifiers(
    classifiers: list[Classifier],
    trials: list[Trial],
    backbone: FrozenBackbone,
    extractor: FeatureExtractor,
    recipe: HeadRecipe,
    args: EvaluateArguments,
    device: torch.device,
) -> list[list[dict]]:
    """Trains every classifier; returns each one's per-epoch history.

    With a frozen backbone, every head trains in one batched computation over the trials' training images laid end
    to end (cached features, or features rendered at every step). In the paper's batch-norm mode, each classifier
    trains alone, with a backbone copy whose running statistics are its own.
    """
    class_names = trials[0].splits.class_names
    heads = [backbone.initial_head(class_names, classifier.seed).to(device) for classifier in classifiers]
    labels = [trials[classifier.trial].training.pool.labels for classifier in classifiers]
    if args.batch_norm == "paper":
        histories = []
        for classifier, head, pool_labels in zip(classifiers, heads, labels):
            trial = trials[classifier.trial]
            features_of = TrainModeBatchNormFeatures(extractor, [image.image for image in trial.training.images])
            histories += train_linear_heads(
                StackedLinearHeads([head]),
                recipe,
                features_of,
                [classifier.draws],
                [pool_labels],
                paper_mode_scorer(features_of, trial, device),
                description=f"{arm_in_words(classifier.arm, classifier.min_synthetic_score)}, trial {trial.seed}, "
                f"seed {classifier.seed}",
            )
        return histories

    sizes = [len(trial.training.images) for trial in trials]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist()
    images = [image for trial in trials for image in trial.training.images]
    if args.feature_cache:
        table = extractor.extract(images, view_grid(args.rotation_step), len(images), "training features")
        features_of = CachedFeatures(table, device)
    else:
        features_of = RenderedFeatures(extractor, [image.image for image in images])
    tests = [trial.test.features.to(device) for trial in trials]  # once per trial, shared by its classifiers
    validations = [trial.validation.features.to(device) if trial.validation else None for trial in trials]
    score = held_out_scorer([tests[c.trial] for c in classifiers], [validations[c.trial] for c in classifiers])
    return train_linear_heads(
        StackedLinearHeads(heads),
        recipe,
        features_of,
        [classifier.draws for classifier in classifiers],
        labels,
        score,
        offsets=[starts[classifier.trial] for classifier in classifiers],
        description=f"{len(classifiers)} classifiers",
    )


def classifier_records(
    classifiers: list[Classifier], histories: list[list[dict]], trials: list[Trial], rule: str
) -> list[dict]:
    """Each classifier's report record: what it trained on and its reported epoch, chosen by `rule` among the
    classifiers of its arm and threshold (the released code's rule shares one epoch among them)."""
    records = []
    for arm, threshold in dict.fromkeys((c.arm, c.min_synthetic_score) for c in classifiers):
        members = [i for i, c in enumerate(classifiers) if (c.arm, c.min_synthetic_score) == (arm, threshold)]
        for index, chosen in zip(members, select_epochs([histories[index] for index in members], rule)):
            classifier = classifiers[index]
            records.append(
                {
                    "arm": arm,
                    "trial": trials[classifier.trial].seed,
                    "classifier_seed": classifier.seed,
                    "synthetic_probability": classifier.synthetic_probability,
                    "min_synthetic_score": threshold,
                    "synthetic_fraction_drawn": float(classifier.draws.is_synthetic.mean()),
                    "selected": chosen,
                    "history": histories[index],
                }
            )
    return records


def paper_mode_scorer(features_of: TrainModeBatchNormFeatures, trial: Trial, device: torch.device) -> EpochScorer:
    """Scores a paper-mode classifier on its test (and validation) images with the running statistics it has now,
    as the released code's `model.eval()` at every epoch."""

    def current(held_out: HeldOut | None) -> LabelledFeatures | None:
        if held_out is None:
            return None
        return LabelledFeatures(features_of.identity_features(held_out.images), held_out.features.labels).to(device)

    def score(heads: StackedLinearHeads) -> list[dict[str, float]]:
        return held_out_scorer([current(trial.test)], [current(trial.validation)])(heads)

    return score


def trial_diversity(trials: list[Trial], args: DiversityArguments, device: torch.device) -> dict:
    """The diversity metrics of each trial's synthetic images, and their mean over trials."""
    per_trial = [compute_diversity(trial.splits.augmented, args, device) for trial in trials]
    if len(per_trial) == 1:
        return per_trial[0]
    figures = ("clip_i_to_source", "clip_i_within_class", "lpips_within_source", "lpips_to_source")
    counts = ("num_synthetic", "num_sources", "num_skipped_synthetic", "num_lpips_pairs")
    combined = {name: float(np.mean([result[name] for result in per_trial])) for name in figures}
    combined.update({name: int(sum(result[name] for result in per_trial)) for name in counts})
    combined.update(settings=per_trial[0]["settings"], per_trial=[{n: r[n] for n in figures} for r in per_trial])
    return combined


def evaluate_augmented_dataset(args: EvaluateArguments, diversity_args: DiversityArguments | None = None) -> dict:
    """Runs every trial (and, with `args.diversity`, the diversity metrics) and writes the report to
    `args.output_dir`; returns the results (as in results.json)."""
    locations = find_trials(args.dataset, args.dataset_revision)  # before anything is created
    diversity_args = diversity_args or DiversityArguments()
    if args.diversity:
        check_diversity_requirements(diversity_args)  # before the training, not after it
    if len(locations) > 1 and args.classifier_seeds is not None:
        raise ValueError(
            f"{args.dataset!r} holds {len(locations)} trials, each of which seeds its classifier with its own seed; "
            "`classifier_seeds` repeats the classifier on a dataset of one trial only."
        )
    if args.filters_synthetic_images:
        for location in locations:
            check_synthetic_scores(location, args.dataset_revision)
    if args.push_to_hub:
        check_evaluation_repo(args, locations)  # the repository must hold the dataset evaluated
    check_output_dir(args.output_dir)  # before the backbone loads; the folder is made once the backbone suits
    device = args.resolved_device()
    backbone = load_backbone(args.backbone, device, getattr(torch, args.dtype))
    if args.batch_norm == "paper" and not backbone.has_batch_norm:
        raise ValueError(
            f"The backbone {args.backbone!r} has no batch-norm layer, so `batch_norm paper` would change nothing; "
            "use `batch_norm frozen` (its features are cached)."
        )
    create_output_dir(args.output_dir)  # once the backbone is known to suit the options: a refusal leaves nothing
    mean, std = (
        (PAPER_MEAN, PAPER_STD) if args.normalization == "paper" else (backbone.processor_mean, backbone.processor_std)
    )
    cache = None
    if args.feature_cache:
        cache_dir = args.cache_dir or os.path.join(HF_HOME, "dalda", "features")
        cache = FeatureCache(cache_dir, FeatureExtractor.cache_key(backbone, args.image_size, mean, std))
    extractor = FeatureExtractor(backbone, mean, std, cache, args.feature_batch_size)

    trials = [prepare_trial(location, extractor, args) for location in locations]
    names = {tuple(trial.splits.class_names) for trial in trials}
    if len(names) > 1:
        raise ValueError(f"The trials of {args.dataset!r} do not share one class list; evaluate them apart.")
    untested = classes_without_test_images(
        trials[0].splits.class_names, {trial.location.name: trial.test.features.labels for trial in trials}
    )
    cached = args.feature_cache and args.batch_norm == "frozen"
    classifiers = plan_classifiers(trials, args, "grid" if cached else "continuous")
    recipe = HeadRecipe(
        backbone.recipe.optimizer,
        args.learning_rate if args.learning_rate is not None else backbone.recipe.learning_rate,
        args.weight_decay if args.weight_decay is not None else backbone.recipe.weight_decay,
    )
    histories = train_classifiers(classifiers, trials, backbone, extractor, recipe, args, device)
    records = classifier_records(classifiers, histories, trials, args.select)
    context = {
        "trials": trials,
        "backbone": {
            "id": args.backbone,
            "revision": backbone.revision,
            "fingerprint": backbone.fingerprint,
            "feature_dim": backbone.feature_dim,
            "batch_norm": args.batch_norm if backbone.has_batch_norm else None,
        },
        "recipe": asdict(recipe),
        "image_size": args.image_size,
        "pixels": {"mean": list(mean), "std": list(std)},
        "feature_cache": cached,
        "classes_without_test_images": untested,
    }
    results = write_report(args, records, context)  # the classifiers' report is kept whatever comes next
    if not args.diversity:
        return published(args, results)
    try:
        diversity = trial_diversity(trials, diversity_args, device)
    except Exception as error:
        raise ValueError(
            f"The diversity metrics failed ({type(error).__name__}: {error}); the classifiers' report is written in "
            f"{args.output_dir!r}."
        ) from error
    label = args.method_label or method_label(trials[0].splits.recorded)
    context["diversity"] = {**diversity, "table": diversity_table([(label, diversity)])}
    return published(args, write_report(args, records, context))


def published(args: EvaluateArguments, results: dict) -> dict:
    """`results`, pushed with the data first where `push_to_hub` asks for it."""
    if args.push_to_hub:
        push_report(args, results)
    return results
