"""The class names of a dataset: from a `datasets` dataset's `ClassLabel` column, or from a text or JSON file."""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import datasets


@dataclass
class ClassListArguments:
    """Where the class names come from: a dataset (Hub id or local path) or a file."""

    dataset: str | None = field(
        default=None, metadata={"help": "A Hub dataset id, or a local folder (imagefolder, parquet, save_to_disk)."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    dataset_revision: str | None = field(default=None, metadata={"help": "A branch, tag or commit of a Hub dataset."})
    split: str = field(default="train", metadata={"help": "The split to read the label column from."})
    label_column: str = field(default="label", metadata={"help": "The ClassLabel column."})
    class_names_file: str | None = field(
        default=None, metadata={"help": "Instead of a dataset: one name per line, or a JSON list of names."}
    )

    def __post_init__(self):
        if (self.dataset is None) == (self.class_names_file is None):
            raise ValueError("Give exactly one of `dataset` and `class_names_file`.")


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
    path = args.dataset
    if os.path.isdir(path) and (Path(path, "dataset_info.json").exists() or Path(path, "dataset_dict.json").exists()):
        loaded = datasets.load_from_disk(path)
        if isinstance(loaded, datasets.DatasetDict):
            if args.split not in loaded:
                raise ValueError(f"The dataset {path!r} has no split {args.split!r}; it has {list(loaded)}.")
            loaded = loaded[args.split]
        return loaded.features
    builder = datasets.load_dataset_builder(path, args.dataset_config, revision=args.dataset_revision)
    if builder.info.features is not None and args.label_column in builder.info.features:
        return builder.info.features
    # Folder-based datasets learn their labels from the files: read the split.
    dataset = datasets.load_dataset(path, args.dataset_config, split=args.split, revision=args.dataset_revision)
    return dataset.features


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
