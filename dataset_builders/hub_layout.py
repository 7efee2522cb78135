"""The augmented dataset on disk, in the Hugging Face Hub's layout: parquet shards under `data/` and a `README.md`
dataset card whose YAML header declares the features and splits, so `datasets.load_dataset(<folder>)` loads it as it
would from the Hub."""

import os
from pathlib import Path
from typing import Any

import datasets
import yaml
from huggingface_hub import HfApi

from pipeline_dalda.atomic import atomic_output


WORK_DIR = ".dalda"
"""The run's own bookkeeping inside the output folder (settings, per-shard reports, temporary files); never pushed."""


def output_features(class_names: list[str]) -> datasets.Features:
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
        }
    )


def shard_path(output_dir: str | os.PathLike, index: int, count: int) -> Path:
    return Path(output_dir, "data", f"train-{index:05d}-of-{count:05d}.parquet")


def write_shard(shard: datasets.Dataset, path: Path, output_dir: str | os.PathLike) -> None:
    """Writes a parquet shard atomically: it appears under `data/` only once complete."""
    with atomic_output(path, temp_dir=Path(output_dir, WORK_DIR, "tmp")) as temporary:
        shard.to_parquet(str(temporary))


def write_card(
    output_dir: str | os.PathLike, features: datasets.Features, num_rows: int, header: dict[str, Any], body: str
) -> None:
    """Writes `README.md`: `header` plus the features, the train split and its data files, then `body`."""
    info = datasets.DatasetInfo(
        features=features, splits=datasets.SplitDict.from_split_dict([{"name": "train", "num_examples": num_rows}])
    )
    metadata = {
        **header,
        "dataset_info": info._to_yaml_dict(),
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
    }
    card = "---\n" + yaml.safe_dump(metadata, allow_unicode=True, sort_keys=False) + "---\n\n" + body
    with atomic_output(Path(output_dir, "README.md")) as temporary:
        temporary.write_text(card, encoding="utf-8")


def push_to_hub(output_dir: str | os.PathLike, repo_id: str, private: bool = False) -> str:
    """Uploads the dataset folder (not its `.dalda` bookkeeping) to a Hub dataset repo; the token comes from the
    environment (`HF_TOKEN`) or the local login, never from an argument that could be logged."""
    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id, repo_type="dataset", folder_path=str(output_dir), ignore_patterns=[f"{WORK_DIR}/**"]
    )
    return commit.commit_url
