"""Offline data kit: a small image-classification dataset with learnable classes, and augmented datasets laid out
exactly as `dalda augment` writes them, for tests, benchmarks and users' own CI (with the model kit,
`pipeline_dalda.testing`).

The classes are colours under heavy per-image noise: a random backbone's features still separate them a little, so
a classifier trained on a few shots is mediocre and more images of the right class measurably help."""

import os
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import PIL.Image

from pipeline_dalda.atomic import write_json_atomically

from .hub_layout import WORK_DIR, output_features, trial_name, write_run_record


COLOURS = ["red", "green", "blue", "yellow"]
_MEAN_COLOURS = np.array([[200, 60, 60], [60, 200, 60], [60, 60, 200], [200, 200, 60]])


def colour_images(rng: np.random.Generator, label: int, count: int, size: int = 40) -> list[PIL.Image.Image]:
    """`count` images of class `label`: its colour, shifted per image, under pixel noise and a random brightness."""
    images = []
    for _ in range(count):
        colour = _MEAN_COLOURS[label] + rng.normal(0, 60, 3)
        pixels = (rng.normal(0, 70, (size, size, 3)) + colour) * rng.uniform(0.6, 1.2)
        images.append(PIL.Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))
    return images


def save_colour_dataset(folder: str | os.PathLike, images_per_class: int, seed: int = 0, size: int = 40):
    """Saves a `save_to_disk` dataset of the colour classes, rows in class-cycling order; returns (labels, images)."""
    rng = np.random.default_rng(seed)
    labels = [index % len(COLOURS) for index in range(len(COLOURS) * images_per_class)]
    images = [colour_images(rng, label, 1, size)[0] for label in labels]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=COLOURS)})
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).save_to_disk(str(folder))
    return labels, images


def augment_run_settings(
    source: str | os.PathLike, num_shots: int, shot_selection: str = "random", seed: int = 0, split: str = "train"
) -> dict[str, Any]:
    """The run record `dalda augment` keeps for a base-prompt run on `source` with the default models and AGS."""
    from pipeline_dalda import AdaptiveGuidanceScaling
    from pipeline_dalda.arguments import ModelArguments

    from .arguments import AugmentArguments, SourceArguments
    from .augment import run_settings

    source_args = SourceArguments(dataset=str(source), split=split, num_shots=num_shots, shot_selection=shot_selection)
    args = AugmentArguments(output_dir=".", base_prompt=True, seed=seed)
    return run_settings(source_args, args, ModelArguments(), AdaptiveGuidanceScaling())


def write_augmented_dataset(
    folder: str | os.PathLike,
    reals: list[tuple[int, Any, int]],
    synthetic: dict[int, list[tuple[Any, int]]],
    settings: dict[str, Any],
    class_names: list[str] = COLOURS,
) -> Path:
    """
    Writes an augmented dataset as `dalda augment` lays it out: one parquet shard under `data/`, the run's
    bookkeeping and its published run record.

    Args:
        reals: `(source index, image, label)` of each real row.
        synthetic: per source index, the `(image, label)` of its synthetic rows.
        settings: the run record (see [`augment_run_settings`]).
    """
    columns: dict[str, list] = {name: [] for name in output_features(class_names)}

    def add(**row):
        for name in columns:
            columns[name].append(row.get(name))

    for source_index, image, label in reals:
        add(image=image, label=label, is_synthetic=False, source_index=source_index, clip_score=0.6)
        for number, (synthetic_image, synthetic_label) in enumerate(synthetic.get(source_index, [])):
            add(
                image=synthetic_image,
                label=synthetic_label,
                is_synthetic=True,
                source_index=source_index,
                prompt="a synthetic image",
                ip_adapter_scale=0.5,
                clip_score=0.6,
                seed=number,
            )
    dataset = datasets.Dataset.from_dict(columns, features=output_features(class_names))
    dataset.to_parquet(str(Path(folder, "data", "train-00000-of-00001.parquet")))
    write_json_atomically(Path(folder, WORK_DIR, "run.json"), settings)
    write_run_record(folder, settings)
    return Path(folder)


def write_colour_trials(
    folder: str | os.PathLike,
    source: str | os.PathLike,
    labels: list[int],
    images: list[PIL.Image.Image],
    seeds: list[int],
    num_shots: int = 1,
    synthetic_per_real: int = 12,
    synthetic_class_shift: int = 0,
    shot_selection: str = "random",
) -> Path:
    """
    Writes the paper's trials of the colour dataset as `dalda augment --seeds` lays them out: per seed, its own shots
    (drawn as `dalda augment` draws them) and its own synthetic images, fresh colour images of the class
    `label + synthetic_class_shift` (0: the right class; 1: the next class, labelled as the real image).

    Args:
        source: the colour dataset's folder (from [`save_colour_dataset`]); `labels` and `images` are its rows.
    """
    from .source import select_few_shot

    for seed in seeds:
        shots = select_few_shot(labels, COLOURS, num_shots, seed, protocol=shot_selection)
        rng = np.random.default_rng([100, seed])
        synthetic = {
            row: [
                (image, labels[row])
                for image in colour_images(rng, (labels[row] + synthetic_class_shift) % len(COLOURS), synthetic_per_real)
            ]
            for row in shots
        }
        write_augmented_dataset(
            Path(folder, trial_name(seed)),
            [(row, images[row], labels[row]) for row in shots],
            synthetic,
            augment_run_settings(source, num_shots, shot_selection, seed),
        )
    return Path(folder)
