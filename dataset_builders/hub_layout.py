"""The augmented dataset on disk, in the Hugging Face Hub's layout: parquet shards under `data/` and a `README.md`
dataset card whose YAML header declares the features and splits, so `datasets.load_dataset(<folder>)` loads it as it
would from the Hub."""

import json
import os
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_dalda.arguments import ModelArguments
from pipeline_dalda.atomic import atomic_output, write_json_atomically
from pipeline_dalda.publish import push_folder


WORK_DIR = ".dalda"
"""The run's own bookkeeping inside the output folder (settings, per-shard reports, temporary files); never pushed."""


RUN_RECORD = "dalda.json"
"""How the dataset was made, published with it (source, few-shot selection, generation settings), so that
`dalda evaluate` can rebuild the test set from a Hub copy. A local path is reduced to `./<its name>`: no path of the
machine that made it is published, and a reader who has that folder beside them can still point at it."""


TOKENS_DIR = "textual_inversion"
"""Where a DA-Fusion run keeps its classes' learned tokens, published with its dataset so that its images can be made
again ([`dataset_builders.textual_inversion`] has the folder's layout)."""
ALL_TOKENS_FILE = "class_tokens.safetensors"
"""Every class's token in one file, `{token: embedding}` (DA-Fusion's `aggregate_embeddings.py` format, as
safetensors)."""

TRIAL_PREFIX = "seed_"
"""`dalda augment --seeds` writes trial s, a complete dataset of its own, to the folder (and Hub configuration)
`seed_<s>` of its output."""


def trial_name(seed: int) -> str:
    """The folder and Hub configuration of trial `seed`."""
    return f"{TRIAL_PREFIX}{seed}"


_PATH_SETTINGS = {
    "source": ("dataset", "class_names_file"),
    "generation": ("prompt_bank",),
    "models": ("pretrained_model_name_or_path", "vae", "ip_adapter", "clip_score_model"),
}
"""The settings that name a file, a folder or a Hub id."""


def image_settings(model_args: ModelArguments) -> dict[str, str]:
    """The device options that change what a run makes, as a run's settings record them (a rerun must match them):

    - `dtype`, resolved ('auto' is float16 on CUDA, float32 elsewhere): float16 and float32 make other images, so one
      dataset must not mix them.
    - `device`, by its type only (`cuda`, `cpu`, `mps`): CPU and CUDA kernels make other images, while `cuda:0` and
      `cuda:1` make the same, so a run may move between GPUs (and share them out under `accelerate launch`).

    `compile` is left out: the compiled UNet's images match eager's within float rounding (about 3e-6 on the model
    kit, `tests/test_compile_and_precision.py`), as other batch sizes do; each shard's report records it instead,
    with the device and dtype that made the shard.
    """
    dtype = str(model_args.resolved_dtype()).removeprefix("torch.")
    return {"dtype": dtype, "device": model_args.resolved_device().type}


LOCAL_PREFIX = "./"
"""What a published setting starts with when it was a local path; a Hub id never does."""


def resolved_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The run's settings with each local path among them made absolute, so that a rerun from another folder, or
    with the same folder spelled another way, is the same run; Hub ids and everything else as they are."""
    resolved = {section: dict(values) for section, values in settings.items()}
    for section, names in _PATH_SETTINGS.items():
        for name in names:
            value = resolved.get(section, {}).get(name)
            if isinstance(value, str) and value and os.path.exists(value):
                resolved[section][name] = os.path.abspath(value)
    return resolved


def public_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The run's settings as they may be published (in [`RUN_RECORD`] and the dataset card): each local path among
    them replaced by `./<its name>`, Hub ids and everything else as they are."""
    public = {section: dict(values) for section, values in settings.items()}
    for section, names in _PATH_SETTINGS.items():
        for name in names:
            value = public.get(section, {}).get(name)
            if isinstance(value, str) and value and os.path.exists(value):
                public[section][name] = f"{LOCAL_PREFIX}{Path(value).resolve().name}"
    return public


def write_run_record(output_dir: str | os.PathLike, settings: dict[str, Any]) -> None:
    """Writes [`RUN_RECORD`]: the run's [`public_settings`]."""
    write_json_atomically(Path(output_dir, RUN_RECORD), public_settings(settings))


def read_run_record(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The settings of a local output folder: the full ones from its bookkeeping when it is the folder that made
    them, else its published [`RUN_RECORD`]; None when it has neither."""
    for path in (Path(output_dir, WORK_DIR, "run.json"), Path(output_dir, RUN_RECORD)):
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    return None


def output_features(class_names: list[str]) -> datasets.Features:
    """The augmented dataset's columns (the card says what each holds)."""
    return datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=class_names),
            "is_synthetic": datasets.Value("bool"),
            "source_index": datasets.Value("int64"),
            "prompt": datasets.Value("string"),
            "ip_adapter_scale": datasets.Value("float32"),
            "clip_score": datasets.Value("float32"),
            "seed": datasets.Value("int64"),
            "strength": datasets.Value("float32"),
            "synthetic_clip_score": datasets.Value("float32"),
            "attempts": datasets.Value("int32"),
            "attempt_ip_adapter_scales": datasets.List(datasets.Value("float32")),
            "attempt_synthetic_clip_scores": datasets.List(datasets.Value("float32")),
        }
    )


def shard_path(output_dir: str | os.PathLike, index: int, count: int) -> Path:
    return Path(output_dir, "data", f"train-{index:05d}-of-{count:05d}.parquet")


def shard_problem(path: Path, expected_rows: int | None = None) -> str | None:
    """Why a written shard cannot be trusted — its parquet footer does not read (a truncated or partial copy), or it
    holds another number of rows than its real images make — or None when it can."""
    try:
        rows = pq.ParquetFile(path).metadata.num_rows
    except (OSError, pa.ArrowException) as error:
        return f"unreadable: {error}"
    if expected_rows is not None and rows != expected_rows:
        return f"{rows} rows where its real images make {expected_rows}"
    return None


def write_shard(shard: datasets.Dataset, path: Path, output_dir: str | os.PathLike) -> None:
    """Writes a parquet shard atomically: it appears under `data/` only once complete."""
    with atomic_output(path, temp_dir=Path(output_dir, WORK_DIR, "tmp")) as temporary:
        shard.to_parquet(str(temporary))


def push_to_hub(output_dir: str | os.PathLike, repo_id: str, private: bool = False) -> str:
    """Uploads the dataset folder (not its `.dalda` bookkeeping, nor its trials') to a Hub dataset repo; returns the
    commit's URL."""
    ignored = [f"{WORK_DIR}/**", f"*/{WORK_DIR}/**"]  # a folder of trials has the bookkeeping of each trial too
    return push_folder(output_dir, repo_id, repo_type="dataset", private=private, ignore_patterns=ignored)
