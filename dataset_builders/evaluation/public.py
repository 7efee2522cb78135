"""What of an evaluation report may be published with the data: no path of the machine that ran it.

results.json holds the run's options as given (the dataset, the backbone, the source dataset, the output and cache
folders) and what the run resolved from them. Its public copy drops the machine's own settings and names each local
path `./<its name>`, as the augmented dataset's run record does ([`dataset_builders.hub_layout.public_settings`]);
Hub ids stay as they are.
"""

import copy
import os
from pathlib import Path
from typing import Any

from ..hub_layout import LOCAL_PREFIX

MACHINE_SETTINGS = ("output_dir", "cache_dir", "device", "num_workers", "feature_batch_size")
"""Settings of the machine that ran the evaluation: left out of results.md and of the published results.json."""
PATH_KEYS = frozenset({"dataset", "source_dataset", "backbone", "id", "diversity_clip_model"})
"""The results' keys whose value names a file, a folder or a Hub id."""


def public_path(value: str) -> str:
    """`value` as it may be published: a local path (absolute, or one that exists here) as `./<its name>`, a Hub id
    or any other name as it is."""
    if os.path.isabs(value) or os.path.exists(value):
        return f"{LOCAL_PREFIX}{Path(value).resolve().name}"
    return value


def _public(value: Any, key: str | None) -> Any:
    if isinstance(value, dict):
        return {name: _public(item, name) for name, item in value.items()}
    if isinstance(value, list):
        return [_public(item, key) for item in value]
    if isinstance(value, str) and (key in PATH_KEYS or os.path.isabs(value)):
        return public_path(value)
    return value


def public_results(results: dict, dataset_id: str | None = None) -> dict:
    """The results of `dalda evaluate` as they may be published: without [`MACHINE_SETTINGS`], every value under a
    key of [`PATH_KEYS`] that is a local path, and every absolute path anywhere, as `./<its name>`; the evaluated
    dataset named `dataset_id` where given (the Hub id of the repository that holds it)."""
    public = _public(copy.deepcopy(results), None)
    for name in MACHINE_SETTINGS:
        public["settings"].pop(name, None)
    if dataset_id is not None:
        public["settings"]["dataset"] = public["dataset"]["id"] = dataset_id
    return public
