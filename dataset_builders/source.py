"""The source dataset: any image-classification split `datasets` can read, its class names, and the few-shot
selection of real images."""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from .arguments import ClassListArguments, SourceArguments


def looks_local(path: str) -> bool:
    """Whether `path` names a local file or folder rather than a Hub id (which is `name` or `org/name`)."""
    return os.path.exists(path) or path.startswith(("/", "./", "../", "~")) or path.count("/") > 1 or "\\" in path


def check_dataset_exists(path: str) -> None:
    """Fails at once, naming `path`, when it is meant as a local dataset folder and is not one."""
    if looks_local(path) and not os.path.isdir(os.path.expanduser(path)):
        what = "a file, not a dataset folder" if os.path.exists(path) else "not there"
        raise ValueError(f"The dataset {path!r} is {what}; give a local dataset folder or a Hub dataset id.")


def load_split(path: str, config: str | None, revision: str | None, split: str) -> datasets.Dataset:
    """One split of a Hub dataset or of a local folder (imagefolder, parquet, or a `save_to_disk` folder)."""
    check_dataset_exists(path)
    path = os.path.expanduser(path)
    if os.path.isdir(path) and (Path(path, "dataset_info.json").exists() or Path(path, "dataset_dict.json").exists()):
        loaded = datasets.load_from_disk(path)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"The dataset {path!r} has no split {split!r}; it has {list(loaded)}.")
            loaded = loaded[split]
        return loaded
    return datasets.load_dataset(path, config, split=split, revision=revision)


def _names_from_file(path: str) -> list[str]:
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith(".json"):
        payload = json.loads(text)
        names = payload.get("names") if isinstance(payload, dict) else payload
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise ValueError(f"{path!r} must hold a JSON list of class names (or {{\"names\": [...]}}).")
        return names
    return [line.strip() for line in text.splitlines() if line.strip()]


def _load_features(args: ClassListArguments) -> datasets.Features:
    check_dataset_exists(args.dataset)
    if not os.path.isdir(args.dataset):
        builder = datasets.load_dataset_builder(args.dataset, args.dataset_config, revision=args.dataset_revision)
        if builder.info.features is not None and args.label_column in builder.info.features:
            return builder.info.features
    # Local folders and datasets whose labels come from their files: read the split.
    return load_split(args.dataset, args.dataset_config, args.dataset_revision, args.split).features


def load_class_names(args: ClassListArguments) -> list[str]:
    """The class names, in label order, with a clear error when they cannot be read."""
    if args.class_names_file is not None:
        return _names_from_file(args.class_names_file)
    features = _load_features(args)
    feature = features.get(args.label_column)
    if feature is None:
        raise ValueError(
            f"The dataset {args.dataset!r} has no column {args.label_column!r}; its columns are {list(features)}. "
            "Name the label column with `label_column`."
        )
    if not isinstance(feature, datasets.ClassLabel):
        raise ValueError(
            f"The column {args.label_column!r} of {args.dataset!r} is {feature}, not a ClassLabel; name the label "
            "column with `label_column` or give `class_names_file`."
        )
    return list(feature.names)


@dataclass
class RealImages:
    """The source split (images left undecoded, so one bad file cannot break loading) and its class names."""

    dataset: datasets.Dataset
    class_names: list[str]
    labels: list[int | None]
    """Each row's class index, or None where the label is missing or names no class."""


def load_real_images(args: SourceArguments) -> RealImages:
    dataset = load_split(args.dataset, args.dataset_config, args.dataset_revision, args.split)
    for column in (args.image_column, args.label_column):
        if column not in dataset.column_names:
            raise ValueError(
                f"The dataset {args.dataset!r} has no column {column!r}; its columns are {dataset.column_names}."
            )
    if not isinstance(dataset.features[args.image_column], datasets.Image):
        raise ValueError(f"The column {args.image_column!r} of {args.dataset!r} is not an Image column.")
    dataset = dataset.cast_column(args.image_column, datasets.Image(decode=False))
    label_feature = dataset.features[args.label_column]
    if args.class_names_file is None and not isinstance(label_feature, datasets.ClassLabel):
        raise ValueError(
            f"The column {args.label_column!r} of {args.dataset!r} is {label_feature}, not a ClassLabel; "
            "give the class names with `class_names_file`."
        )
    class_names = load_class_names(args) if args.class_names_file else list(label_feature.names)
    if not class_names:
        raise ValueError("The class list is empty.")
    index_of = {name: index for index, name in enumerate(class_names)}
    labels = []
    for value in dataset[args.label_column]:
        if isinstance(value, str):
            labels.append(index_of.get(value))
        elif isinstance(value, (int, np.integer)) and 0 <= value < len(class_names):
            labels.append(int(value))
        else:
            labels.append(None)
    return RealImages(dataset, class_names, labels)


def rows_by_class(labels: list[int | None], num_classes: int) -> list[list[int]]:
    """The source rows of each class, in source order; rows without a known label belong to none."""
    by_class: list[list[int]] = [[] for _ in range(num_classes)]
    for index, label in enumerate(labels):
        if label is not None:
            by_class[label].append(index)
    return by_class


def paper_split_halves(
    labels: list[int | None], num_classes: int, seed: int
) -> tuple[list[list[int]], list[list[int]]]:
    """The paper's split protocol (inherited from DA-Fusion's released code): the two halves of every class.

    One stream `numpy.random.default_rng(seed)` permutes each class's rows in turn, in class order, and
    `np.array_split(permutation, 2)` cuts each permutation in two. Few-shot training images are the first n rows of
    the first half; the test set is the whole second half. A class's rows are taken in source order, so a dataset
    read from files must list them in a fixed (sorted) order for the split to be reproducible; and since the stream
    runs through the classes in turn, the released code's own halves come out only with its class order.

    Returns:
        `(first_halves, second_halves)`, each a list over classes of source rows in permutation order.
    """
    rng = np.random.default_rng(seed)
    first_halves, second_halves = [], []
    for rows in rows_by_class(labels, num_classes):
        first, second = np.array_split(rng.permutation(len(rows)), 2)
        first_halves.append([rows[i] for i in first])
        second_halves.append([rows[i] for i in second])
    return first_halves, second_halves


def run_shots(real: RealImages, args: SourceArguments, seed: int) -> list[int]:
    """The source rows a run with these source options and `seed` takes: [`select_few_shot`] on `real`'s labels. The
    one selection of `dalda augment` and of `dalda textual-inversion`, so both take the same shots."""
    return select_few_shot(
        real.labels, real.class_names, args.num_shots, seed, args.allow_fewer_shots, protocol=args.shot_selection
    )


def select_few_shot(
    labels: list[int | None],
    class_names: list[str],
    num_shots: int,
    seed: int,
    allow_fewer: bool = False,
    protocol: str = "random",
) -> list[int]:
    """`num_shots` source indices per class, drawn reproducibly from `seed`, in class order.

    `protocol="random"`: each class draws from its own random stream, so a class's selection does not depend on the
    other classes. `protocol="paper"`: the first `num_shots` rows of each class's first half in
    [`paper_split_halves`].
    """
    if protocol == "paper":
        candidates_by_class = paper_split_halves(labels, len(class_names), seed)[0]
    else:
        candidates_by_class = rows_by_class(labels, len(class_names))
    selected = []
    for label, candidates in enumerate(candidates_by_class):
        if len(candidates) < num_shots and not allow_fewer:
            where = " in the first half of the paper's split" if protocol == "paper" else ""
            raise ValueError(
                f"Class {class_names[label]!r} (label {label}) has {len(candidates)} images{where}, fewer than the "
                f"{num_shots} shots asked; pass `allow_fewer_shots` to take what there is."
            )
        if protocol == "paper":
            selected += sorted(candidates[:num_shots])
        else:
            rng = np.random.default_rng([seed, label])
            selected += sorted(rng.permutation(candidates)[:num_shots].tolist())
    return selected
