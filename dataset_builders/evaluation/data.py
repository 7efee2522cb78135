"""What `dalda evaluate` trains and tests on.

Training: the augmented dataset's real rows and, for each, its own synthetic rows (linked by `source_index`).
Test: rows of the source dataset, chosen by one of three protocols:

- `paper`: the paper's split protocol ([`paper_split_halves`]): the whole second half of every class's permutation,
  with the seed the few-shot images were selected with (on `test_split` when given: Pets' `test`);
- `unselected`: the source split's rows that were not selected as few-shot images;
- `split`: every row of an explicit split of the source dataset (`test_split`).

A dataset written by `dalda augment --seeds` holds one trial per seed ([`find_trials`]): each is evaluated on its own
shots, synthetic images and test set.

`auto` takes `paper` when `dalda augment` selected its shots by the paper's protocol, `split` when a `test_split`
other than the source split is given, else `unselected`. No real training image may be in the test set: by source
row when both come from the same split, and by decoded-pixel hash always. Bad rows are skipped and counted.
"""

import hashlib
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

import datasets
import numpy as np
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError

from pipeline_dalda.images import BadImage, load_image
from pipeline_dalda.seeding import stream

from ..arguments import SourceArguments
from ..hub_layout import RUN_RECORD, TRIAL_PREFIX, read_run_record, shard_problem
from ..source import check_dataset_exists, load_real_images, paper_split_halves
from .arguments import TestSetKind
from .features import PreparedImage
from .views import squash


logger = logging.getLogger(__name__)


SYNTHETIC_SCORE = "synthetic_clip_score"
"""The column of a synthetic row's own CLIPScore (scored as its real image's `clip_score` is), which
`min_synthetic_score` filters on."""


@dataclass(frozen=True)
class ImageRef:
    """One image to use: its undecoded `datasets` value, its class, and where it comes from (for messages)."""

    value: dict
    label: int
    origin: str
    synthetic_clip_score: float | None = None
    """A synthetic image's own CLIPScore, where the dataset records one (None for real and test images)."""


@dataclass
class EvaluationSplits:
    """The training images (each real one with its own synthetic ones), the test and validation images."""

    class_names: list[str]
    reals: list[ImageRef]
    synthetic: list[list[ImageRef]]
    test: list[ImageRef]
    validation: list[ImageRef]
    description: dict
    """How the test set was made: protocol, source dataset and split, seed, sizes."""
    draw: dict
    """What the trial drew, for `dalda compare` to check that two methods drew alike: the source, the selection
    protocol and seed, and digests of the shots' and the test images' source rows (those left once the validation
    images are carved out)."""
    augmented: datasets.Dataset
    """The augmented dataset itself (images undecoded)."""
    recorded: dict
    """How `dalda augment` made it (its run record)."""
    skipped: Counter = field(default_factory=Counter)
    """Rows left out, by reason."""


class LeakError(ValueError):
    """A real training image is also in the test set."""


def content_hash(image) -> str:
    """A digest of an image's decoded pixels: equal for the same picture whatever its file format."""
    digest = hashlib.sha256(f"{image.mode}{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def prepare_images(
    refs: Sequence[ImageRef], image_size: int, skipped: Counter, num_workers: int = 4, chunk_size: int = 256
) -> Iterator[tuple[int, PreparedImage]]:
    """Decodes (EXIF-aware, any mode), hashes and squashes images in worker threads, yielding `(position in refs,
    prepared image)` in order; a bad image is logged, counted in `skipped` under `"undecodable image"` and left
    out."""

    def prepare(ref: ImageRef) -> PreparedImage | BadImage:
        try:
            image = load_image(ref.value)
        except BadImage as error:
            return error
        return PreparedImage(content_hash(image), squash(image, image_size))

    with ThreadPoolExecutor(max(1, num_workers)) as pool:
        for start in range(0, len(refs), chunk_size):
            chunk = refs[start : start + chunk_size]
            for position, prepared in enumerate(pool.map(prepare, chunk), start):
                if isinstance(prepared, BadImage):
                    logger.warning("Skipping %s: %s", refs[position].origin, prepared)
                    skipped["undecodable image"] += 1
                    continue
                yield position, prepared


@dataclass(frozen=True)
class TrialLocation:
    """Where one trial's augmented dataset is: a local folder, or a Hub repository (and its trial configuration)."""

    path: str
    config: str | None = None

    @property
    def name(self) -> str:
        return self.config or Path(self.path).name


def _seed_of(name: str) -> int:
    suffix = name.removeprefix(TRIAL_PREFIX)
    return int(suffix) if suffix.lstrip("-").isdigit() else 0


def check_shards(folder: str | os.PathLike) -> None:
    """Fails, naming the folder or the file and what to do, when a local dataset folder is unfinished (its run record
    is written last) or one of its shards is damaged."""
    if not Path(folder, RUN_RECORD).is_file():
        raise ValueError(
            f"{str(folder)!r} is not finished (it has no {RUN_RECORD}, which `dalda augment` writes when it is done); "
            "run the `dalda augment` command that wrote it again to finish it."
        )
    for shard in sorted(Path(folder, "data").glob("train-*.parquet")):
        problem = shard_problem(shard)
        if problem:
            raise ValueError(
                f"The shard {str(shard)!r} is damaged ({problem}). Run the `dalda augment` command that wrote "
                f"{str(folder)!r} again: it checks every shard and makes a damaged one again, with the same rows."
            )


def find_trials(path: str, revision: str | None = None) -> list[TrialLocation]:
    """The trials of an augmented dataset: its `seed_<s>` folders (Hub configurations) when `dalda augment --seeds`
    wrote it, in seed order, else the dataset itself as one trial. Fails, naming `path`, when it holds neither, and
    naming the file when a local shard is damaged."""
    if os.path.isdir(path):
        if Path(path, "data").is_dir():
            check_shards(path)
            return [TrialLocation(path)]
        folders = sorted(
            (folder for folder in Path(path).glob(f"{TRIAL_PREFIX}*") if Path(folder, "data").is_dir()),
            key=lambda folder: _seed_of(folder.name),
        )
        if not folders:
            raise ValueError(
                f"{path!r} holds no data/ shards and no trial folders ({TRIAL_PREFIX}<seed>/); is it a folder written "
                "by `dalda augment`?"
            )
        for folder in folders:
            check_shards(folder)
        return [TrialLocation(str(folder)) for folder in folders]
    check_dataset_exists(path)
    try:
        configs = datasets.get_dataset_config_names(path, revision=revision)
    except (FileNotFoundError, ConnectionError, ValueError) as error:
        raise ValueError(f"The augmented dataset {path!r} cannot be read: {error}") from error
    trials = sorted((name for name in configs if name.startswith(TRIAL_PREFIX)), key=_seed_of)
    return [TrialLocation(path, name) for name in trials] or [TrialLocation(path)]


def load_augmented_dataset(path: str, revision: str | None = None, config: str | None = None) -> datasets.Dataset:
    """The `train` split of an augmented dataset (a local folder, or a Hub id and trial configuration), images left
    undecoded.

    A local folder is read through its parquet shards: `datasets` caches a folder with a dataset card by the
    folder's name and card, so two outputs both called `augmented` would otherwise share one stale cache."""
    if os.path.isdir(path):
        shards = sorted(str(shard) for shard in Path(path, "data").glob("train-*.parquet"))
        if not shards:
            raise ValueError(
                f"{path!r} holds no data/train-*.parquet shards; is it a folder written by `dalda augment`?"
            )

        dataset = datasets.load_dataset("parquet", data_files={"train": shards}, split="train")
    else:
        try:
            dataset = datasets.load_dataset(path, config, split="train", revision=revision)
        except (FileNotFoundError, ConnectionError) as error:
            raise ValueError(f"The augmented dataset {path!r} cannot be read: {error}") from error
    missing = {"image", "label", "is_synthetic", "source_index", "clip_score", "ip_adapter_scale"} - set(
        dataset.column_names
    )
    if missing:
        raise ValueError(
            f"{path!r} is not a dataset made by `dalda augment`: it has no column {sorted(missing)}; "
            f"its columns are {dataset.column_names}."
        )
    if not isinstance(dataset.features["label"], datasets.ClassLabel):
        raise ValueError(f"The column 'label' of {path!r} is {dataset.features['label']}, not a ClassLabel.")
    return dataset.cast_column("image", datasets.Image(decode=False))


def check_synthetic_scores(location: TrialLocation, revision: str | None = None) -> None:
    """Fails, naming the dataset, when its synthetic images cannot be filtered by their own CLIPScore: it was made
    before `dalda augment` recorded that score (no `synthetic_clip_score` column), or a synthetic row has none (made
    without a CLIP scoring model)."""
    dataset = load_augmented_dataset(location.path, revision, location.config)
    where = location.path + (f" (configuration {location.config})" if location.config else "")
    if SYNTHETIC_SCORE not in dataset.column_names:
        raise ValueError(
            f"{where!r} has no column {SYNTHETIC_SCORE!r}: it was made before `dalda augment` recorded each synthetic "
            "image's own CLIPScore, so `min_synthetic_score` has nothing to filter on. Make it again with the current "
            "`dalda augment`."
        )
    columns = dataset.select_columns(["is_synthetic", SYNTHETIC_SCORE]).to_dict()
    unscored = [
        row
        for row, (synthetic, score) in enumerate(zip(columns["is_synthetic"], columns[SYNTHETIC_SCORE]))
        if synthetic and (score is None or math.isnan(score))
    ]
    if unscored:
        raise ValueError(
            f"{len(unscored)} synthetic rows of {where!r} have no {SYNTHETIC_SCORE!r} (rows {unscored[:10]}): it was "
            "made without a CLIP scoring model (`clip_score_model`). Make it again with one, or evaluate it without "
            "`min_synthetic_score` and `min_synthetic_score_sweep`."
        )


def recorded_settings(path: str, revision: str | None = None, config: str | None = None) -> dict | None:
    """How `dalda augment` made the dataset: its source, few-shot selection and seed (see `RUN_RECORD`)."""
    if os.path.isdir(path):
        return read_run_record(path)
    try:
        filename = f"{config}/{RUN_RECORD}" if config else RUN_RECORD
        record = hf_hub_download(path, filename, repo_type="dataset", revision=revision)
        return json.loads(Path(record).read_text(encoding="utf-8"))
    except EntryNotFoundError:
        return None


def training_images(
    dataset: datasets.Dataset, skipped: Counter
) -> tuple[list[ImageRef], list[list[ImageRef]], list[int]]:
    """The real rows, each real row's synthetic rows (with their own CLIPScores, where recorded), and each real row's
    source row."""
    num_classes = dataset.features["label"].num_classes
    names = ["label", "is_synthetic", "source_index", SYNTHETIC_SCORE]
    columns = dataset.select_columns([name for name in names if name in dataset.column_names]).to_dict()
    scores = columns.get(SYNTHETIC_SCORE, [None] * len(dataset))  # none in a dataset made before they were recorded
    images = dataset["image"]
    real_of_source: dict[int, int] = {}
    reals, source_rows = [], []
    for row, (label, synthetic, source) in enumerate(
        zip(columns["label"], columns["is_synthetic"], columns["source_index"])
    ):
        if synthetic:
            continue
        if label is None or not 0 <= label < num_classes:
            skipped["unknown label"] += 1
            continue
        if source in real_of_source:
            raise ValueError(f"Two real rows of the augmented dataset have source_index {source} (row {row}).")
        real_of_source[source] = len(reals)
        reals.append(ImageRef(images[row], label, f"augmented row {row}"))
        source_rows.append(source)
    synthetic: list[list[ImageRef]] = [[] for _ in reals]
    for row, (label, is_synthetic, source) in enumerate(
        zip(columns["label"], columns["is_synthetic"], columns["source_index"])
    ):
        if not is_synthetic:
            continue
        if label is None or not 0 <= label < num_classes:
            skipped["unknown label"] += 1
        elif source not in real_of_source:
            skipped["synthetic image without its real image"] += 1
        elif label != reals[real_of_source[source]].label:
            skipped["synthetic image labelled unlike its real image"] += 1
        else:
            ref = ImageRef(images[row], label, f"augmented row {row}", scores[row])
            synthetic[real_of_source[source]].append(ref)
    return reals, synthetic, source_rows


def choose_test_rows(
    kind: str, labels: list[int | None], num_classes: int, seed: int, training_rows: set[int] | None
) -> list[int]:
    """The source rows of the test set by `kind` (module docstring); `training_rows` is None when the training
    images come from another split."""
    if kind == "paper":
        return sorted(row for half in paper_split_halves(labels, num_classes, seed)[1] for row in half)
    if kind == "unselected":
        if training_rows is None:
            raise ValueError("`test_set unselected` needs the test split to be the split the shots came from.")
        return [row for row, label in enumerate(labels) if label is not None and row not in training_rows]
    return [row for row, label in enumerate(labels) if label is not None]


def carve_validation(labels: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Moves `fraction` of each class's test images (at least one where a class has two or more) to a validation
    set, drawn from its own stream, so that early stopping never looks at the test images; returns the positions
    (in `labels`, the test images' classes) of the test images left and of the validation images, in order."""
    if fraction <= 0:
        return list(range(len(labels))), []
    rng = stream("validation", seed)
    validation: set[int] = set()
    by_class: dict[int, list[int]] = {}
    for position, label in enumerate(labels):
        by_class.setdefault(label, []).append(position)
    for label in sorted(by_class):
        positions = by_class[label]
        size = min(len(positions) - 1, max(1, round(fraction * len(positions)))) if len(positions) > 1 else 0
        validation.update(rng.permutation(positions)[:size].tolist())
    return (
        [position for position in range(len(labels)) if position not in validation],
        sorted(validation),
    )


def classes_without_test_images(class_names: list[str], labels: dict[str, np.ndarray]) -> dict[str, list[str]]:
    """The classes that no test image of a trial belongs to, each with the trials (by name) that lack it, logged as
    one warning: balanced accuracy is the mean over the classes a test set has, so such a class does not count."""
    missing: dict[str, list[str]] = {}
    for trial, trial_labels in labels.items():
        for label in sorted(set(range(len(class_names))) - set(np.asarray(trial_labels).tolist())):
            missing.setdefault(class_names[label], []).append(trial)
    if missing:
        logger.warning(
            "No test image of the class(es) %s: balanced accuracy is the mean over the other classes there.",
            "; ".join(f"{name!r} (trial {', '.join(trials)})" for name, trials in missing.items()),
        )
    return missing


def load_evaluation_splits(
    dataset_path: str,
    revision: str | None = None,
    test_set: TestSetKind = "auto",
    test_split: str | None = None,
    source_dataset: str | None = None,
    validation_fraction: float = 0.0,
    config: str | None = None,
) -> EvaluationSplits:
    """Reads the augmented dataset (one trial: a folder, or a Hub id and its trial `config`) and its source, and
    builds the training, test and validation images (module docstring), with a clear error for a dataset that cannot
    be evaluated and a leak by source row."""
    if test_set not in get_args(TestSetKind):
        raise ValueError(f"`test_set` must be one of {get_args(TestSetKind)}, got {test_set!r}.")
    augmented = load_augmented_dataset(dataset_path, revision, config)
    class_names = list(augmented.features["label"].names)
    skipped: Counter = Counter()
    reals, synthetic, training_rows = training_images(augmented, skipped)
    if not reals:
        raise ValueError(f"{dataset_path!r} has no real image with a known label to train on.")

    settings = recorded_settings(dataset_path, revision, config)
    if settings is None:
        raise ValueError(
            f"{dataset_path!r} has no record of how it was made ({RUN_RECORD}); evaluate a dataset written by "
            "`dalda augment`."
        )
    source, seed = settings["source"], settings["generation"]["seed"]
    split = test_split or source["split"]
    same_split = split == source["split"]
    if test_set == "auto":
        test_set = "paper" if source.get("shot_selection") == "paper" else "unselected" if same_split else "split"
    source_args = SourceArguments(
        dataset=source_dataset or source["dataset"],
        dataset_config=source["dataset_config"],
        dataset_revision=source["dataset_revision"],
        split=split,
        label_column=source["label_column"],
        image_column=source["image_column"],
        class_names_file=source["class_names_file"],
    )
    where = f"The source dataset {source_args.dataset!r} of {dataset_path!r}"
    if source_args.dataset.startswith("./") and not os.path.isdir(source_args.dataset):
        raise ValueError(f"{where} was a local folder that is not here; give its location with `source_dataset`.")
    try:
        real = load_real_images(source_args)
    except (FileNotFoundError, ConnectionError) as error:
        raise ValueError(f"{where} cannot be read ({error}); give its location with `source_dataset`.") from error
    if real.class_names != class_names:
        raise ValueError(
            f"The classes of the source dataset {source_args.dataset!r} ({len(real.class_names)}) are not those of "
            f"{dataset_path!r} ({len(class_names)}); is `source_dataset` the dataset it was made from?"
        )
    rows = choose_test_rows(test_set, real.labels, len(class_names), seed, set(training_rows) if same_split else None)
    if same_split:
        leaked = sorted(set(rows) & set(training_rows))
        if leaked:
            raise LeakError(
                f"{len(leaked)} real training images are in the test set (source rows {leaked[:20]} of split "
                f"{split!r}); choose another `test_set` or `test_split`."
            )
    skipped["source row without a known label"] += sum(label is None for label in real.labels)
    images = real.dataset.select(rows)[source_args.image_column]
    test = [
        ImageRef(image, real.labels[row], f"source row {row} of split {split!r}") for row, image in zip(rows, images)
    ]
    kept, carved = carve_validation([ref.label for ref in test], validation_fraction, seed)
    test, validation, rows = [test[i] for i in kept], [test[i] for i in carved], [rows[i] for i in kept]
    description = {
        "protocol": test_set,
        "source_dataset": source_args.dataset,
        "source_config": source_args.dataset_config,
        "source_revision": source_args.dataset_revision,
        "split": split,
        "selection_seed": seed,
        "test_images": len(test),
        "validation_images": len(validation),
    }
    draw = {
        "source_dataset": source_args.dataset,
        "source_config": source_args.dataset_config,
        "source_revision": source_args.dataset_revision,
        "shots_split": source["split"],
        "num_shots": source["num_shots"],
        "shot_selection": source.get("shot_selection", "random"),
        "selection_seed": seed,
        "shots_sha256": _digest(sorted(training_rows)),
        "test_protocol": test_set,
        "test_split": split,
        "test_rows_sha256": _digest(rows),  # the rows tested on, the validation images carved out
    }
    return EvaluationSplits(
        class_names, reals, synthetic, test, validation, description, draw, augmented, settings, skipped
    )


def _digest(rows: list[int]) -> str:
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]
