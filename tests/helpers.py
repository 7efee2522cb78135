"""Helpers shared by several test modules: the `dalda` command run as users run it, a run killed midway, test images,
the model kit's options, `dalda augment` on the `pets` fixture with the checks its outputs are compared by, and
`dalda evaluate` on the colour trials."""

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from dataset_builders.arguments import AugmentArguments, SourceArguments
from dataset_builders.augment import augment_dataset
from pipeline_dalda import AdaptiveGuidanceScaling
from pipeline_dalda.arguments import ModelArguments
from pipeline_dalda.testing import IP_ADAPTER_SUBFOLDER, IP_ADAPTER_WEIGHT_NAME


def dalda_command() -> list[str]:
    """The installed `dalda` console script beside this Python, else the module it runs."""
    installed = shutil.which("dalda", path=str(Path(sys.executable).parent))
    return [installed] if installed else [sys.executable, "-m", "pipeline_dalda.cli"]


def run_dalda(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    """Runs `dalda <args>` offline in a subprocess and returns what it printed."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([*dalda_command(), *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd)


def model_options(tiny_models) -> dict[str, str]:
    """The model options that point `dalda` at the offline model kit."""
    return {
        "pretrained_model_name_or_path": str(tiny_models.stable_diffusion),
        "vae": "",
        "ip_adapter": str(tiny_models.ip_adapter),
        "ip_adapter_weight_name": IP_ADAPTER_WEIGHT_NAME,
        "clip_score_model": str(tiny_models.clip_scorer),
    }


def run_in_two_processes(command: str, config: Path) -> None:
    """Runs `dalda <command> <config>` under `accelerate launch` with two processes, and fails if it fails.

    `--multi_gpu` is accelerate's multi-process launcher (torchrun); with no GPU the processes run on the CPU.
    """
    launcher = [
        str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([*launcher, "-m", "pipeline_dalda.cli", command, str(config)], env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def kill_midway(command: Sequence[str], ready: Callable[[], bool], env: dict[str, str] | None = None) -> None:
    """Starts `command` and SIGKILLs it as soon as `ready()` holds, as a crash or an out-of-memory kill would.

    Fails if the command ends on its own first (it finished before it could be interrupted).
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    process = subprocess.Popen(list(command), env=env, stderr=subprocess.DEVNULL)
    try:
        while not ready():
            assert process.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


PETS_CLASSES = ["pug", "beagle", "persian cat"]
"""The classes of the `pets` fixture's dataset."""


def random_images(count, seed=0, size=(48, 40)):
    """`count` RGB images of uniform noise, `size` (width, height), seeded."""
    rng = np.random.default_rng(seed)
    return [PIL.Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(count)]


def load_ip_adapter(pipe, tiny_models):
    """Loads the kit's IP-Adapter the way users load `h94/IP-Adapter`."""
    pipe.load_ip_adapter(tiny_models.ip_adapter, subfolder=IP_ADAPTER_SUBFOLDER, weight_name=IP_ADAPTER_WEIGHT_NAME)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate_two_items(pipe):
    """Two items at two λ's, seeded: what two loadings of the same pipeline must generate alike."""
    return pipe(
        ["a dog", "a cat"],
        ip_adapter_image=random_images(2, seed=8),
        ip_adapter_scale=[0.3, 0.7],
        num_inference_steps=3,
        generator=[torch.Generator().manual_seed(seed) for seed in (1, 2)],
        output_type="np",
    ).images


def kit_model_args(tiny_models, **overrides) -> ModelArguments:
    """`ModelArguments` pointing at the offline model kit."""
    return ModelArguments(**model_options(tiny_models), **overrides)


def augment(tiny_models, pets, output_dir, **overrides):
    """`dalda augment` on the `pets` fixture with tiny settings (2 shots, 2 prompts, 2 steps), `overrides` applied."""
    source = SourceArguments(
        dataset=str(pets / "dataset"),
        num_shots=overrides.pop("num_shots", 2),
        shot_selection=overrides.pop("shot_selection", "random"),
    )
    values = {"prompt_bank": str(pets / "bank.json"), "num_prompts": 2, "num_inference_steps": 2, "batch_size": 3}
    args = AugmentArguments(output_dir=str(output_dir), **{**values, **overrides})
    return augment_dataset(source, args, kit_model_args(tiny_models), AdaptiveGuidanceScaling())


REGENERATION_STEPS = 6
"""The denoising steps of the `regenerated` fixture's runs: enough for a run in a subprocess to be caught midway."""


CLIP_SCORE_TOLERANCE = 1e-5
"""How far two CLIPScores of one image from separate calls may differ: CLIP on the CPU can differ in the last bits
between calls (another batch, another process), and float32 scores near 1/3 have ulps of about 3e-8."""


SYNTHETIC_SCORE_TOLERANCE = 1e-4
"""How far two runs' CLIPScores of one synthetic image may differ: its pixels may differ by up to 2 levels between
runs (another batch), which moves its score by up to about 1e-5 on the kit's models."""


def rows_without_images(dataset):
    """Each row's identity (source, kind, prompt, seed, attempts), sorted, and its λ, CLIPScore and own CLIPScore in
    that order (-1 where a row has none)."""
    rows = sorted(
        ((row["source_index"], row["is_synthetic"], row["prompt"] or "", row["seed"] or -1, row["attempts"] or 0),
         (row["ip_adapter_scale"] or -1.0, row["clip_score"], row["synthetic_clip_score"] or -1.0))
        for row in dataset.remove_columns("image")
    )
    return [identity for identity, _ in rows], np.array([values for _, values in rows])


def assert_same_rows(first, second):
    """The same rows; λ and CLIPScore within [`CLIP_SCORE_TOLERANCE`] (a λ moves with its score), the synthetic
    images' own CLIPScores within [`SYNTHETIC_SCORE_TOLERANCE`]."""
    (first_rows, first_values), (second_rows, second_values) = rows_without_images(first), rows_without_images(second)
    assert first_rows == second_rows
    np.testing.assert_allclose(first_values[:, :2], second_values[:, :2], atol=CLIP_SCORE_TOLERANCE, rtol=0)
    np.testing.assert_allclose(first_values[:, 2], second_values[:, 2], atol=SYNTHETIC_SCORE_TOLERANCE, rtol=0)


def images_by_row(dataset):
    return {(row["source_index"], row["seed"]): np.asarray(row["image"], dtype=float) for row in dataset}


def assert_same_dataset(first, second, tolerance=2):
    assert_same_rows(first, second)
    first_images, second_images = images_by_row(first), images_by_row(second)
    for key, image in first_images.items():
        assert image.shape == second_images[key].shape
        assert np.abs(image - second_images[key]).max() <= tolerance, key


def colour_trials(root: Path) -> dict:
    """A source split of 4 colour classes × 25 images and, at 1 shot per class, the paper's three trials (seeds 0, 1,
    2, each its own shots) of two augmented datasets: synthetic rows that are 12 fresh images per real image of the
    right class ("good"), or of the next class but labelled as the real image ("wrong")."""
    from dataset_builders.source import select_few_shot
    from dataset_builders.testing import COLOURS, save_colour_dataset, write_colour_trials

    labels, images = save_colour_dataset(root / "source", images_per_class=25)
    source = root / "source"
    return {
        "root": root,
        "labels": labels,
        "shots": select_few_shot(labels, COLOURS, 1, seed=0),
        "good": write_colour_trials(root / "good", source, labels, images, [0, 1, 2]),
        "wrong": write_colour_trials(root / "wrong", source, labels, images, [0, 1, 2], synthetic_class_shift=1),
    }


def evaluate(dataset, output_dir, backbone, **overrides) -> dict:
    """`dalda evaluate` with a training short enough for a test (10 epochs × 20 steps × 16 images, 32 px, learning
    rate 0.01) and a feature cache beside `output_dir`, `overrides` applied; returns its results."""
    from dataset_builders.evaluation.arguments import EvaluateArguments
    from dataset_builders.evaluation.run import evaluate_augmented_dataset

    values = {
        "epochs": 10,
        "iterations_per_epoch": 20,
        "batch_size": 16,
        "learning_rate": 0.01,
        "image_size": 32,
        "cache_dir": str(Path(output_dir).parent / "feature-cache"),
    }
    args = EvaluateArguments(
        dataset=str(dataset), output_dir=str(output_dir), backbone=str(backbone), **{**values, **overrides}
    )
    return evaluate_augmented_dataset(args)
