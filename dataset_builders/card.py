"""The augmented dataset's card (`README.md`): Hub metadata as `huggingface_hub.DatasetCardData`, the body rendered
from the Jinja template `templates/dataset_card.md`. It is built from the run's public settings only, since it is
published with the data: no local path, no secret."""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import jinja2
import pyarrow.parquet as pq
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCard, DatasetCardData

from pipeline_dalda.atomic import atomic_output
from pipeline_dalda.prompts import PromptBank

from .hub_layout import ALL_TOKENS_FILE, LOCAL_PREFIX, TOKENS_DIR, output_features, public_settings


OPENRAIL_M_LINK = "https://huggingface.co/spaces/CompVis/stable-diffusion-license"
"""The CreativeML OpenRAIL-M license of the Stable Diffusion 1.x weights the synthetic images come from."""

LICENSE_NAME = "creativeml-openrail-m-and-source-dataset-license"
"""The card's `license_name` (with `license: other`): the synthetic images derive from Stable Diffusion weights under
CreativeML OpenRAIL-M and from the source dataset's images, which keep their own license."""

_SIZE_CATEGORIES = [
    "n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B", "1B<n<10B", "10B<n<100B",
    "100B<n<1T",
]
"""The Hub's `size_categories` buckets below 1T rows: the first holds n < 1,000, each next one a power of ten more."""

_PROMPT_BANK_FACTS = ("backend", "model", "base_url_host", "temperature", "top_p", "num_prompts", "seed")
"""The prompt bank's generation settings the card shows (with the bank file's SHA-256)."""

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("dataset_builders", "templates"),
    undefined=jinja2.StrictUndefined,  # a misspelt name fails the run instead of publishing an empty cell
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


def method_label(settings: dict[str, Any]) -> str:
    """The paper's name (Table 2) for how a dataset was augmented: 'DALDA (LLM + AGS)', 'Base + AGS', 'LLM + RS',
    'Real Guidance', 'DA-Fusion', ...; the card's title and the evaluation's tables both use it.

    Args:
        settings: a run's settings or its published run record (older records may lack `method` and `ags`).
    """
    generation = settings["generation"]
    baselines = {"real_guidance": "Real Guidance", "da_fusion": "DA-Fusion"}
    if generation.get("method") in baselines:
        return baselines[generation["method"]]
    prompts = "Base" if generation.get("base_prompt") else "LLM"
    scaling = {"random": "RS", "fixed": "fixed λ"}.get(settings.get("ags", {}).get("mode"), "AGS")
    label = f"{prompts} + {scaling}"
    return "DALDA (LLM + AGS)" if label == "LLM + AGS" else label


def size_category(num_rows: int) -> str:
    """The Hub's `size_categories` bucket of `num_rows`: 'n<1K' below 1,000, '1K<n<10K' from 1,000, ..., 'n>1T'."""
    for exponent, name in enumerate(_SIZE_CATEGORIES, start=3):
        if num_rows < 10**exponent:
            return name
    return "n>1T"


@dataclass(frozen=True)
class ConfigFiles:
    """One configuration of a published dataset: its name, its shards (a path pattern), rows and bytes."""

    name: str
    path: str
    num_rows: int
    download_size: int
    """The shards' bytes on disk."""
    num_bytes: int
    """The rows' bytes as an Arrow table (the split's `num_bytes`, the figure `Dataset.push_to_hub` writes)."""

    @classmethod
    def of_shards(cls, name: str, path: str, shards: list[Path]) -> "ConfigFiles":
        """A configuration's figures, read from its shards one at a time."""
        return cls(
            name,
            path,
            num_rows=sum(pq.ParquetFile(shard).metadata.num_rows for shard in shards),
            download_size=sum(shard.stat().st_size for shard in shards),
            num_bytes=sum(pq.read_table(shard).nbytes for shard in shards),
        )


def card_data(public: dict[str, Any], class_names: list[str], configs: list[ConfigFiles]) -> DatasetCardData:
    """The metadata the Hub indexes, from the run's public settings, and what `datasets` reads before loading.

    `configs` points `load_dataset` at the shards: one `default` configuration for a run, one per trial for
    `dalda augment --seeds`. `dataset_info` declares the features and the split of each (as `Dataset.push_to_hub`
    writes them): `load_dataset_builder` reads the class names without downloading the data, and `datasets` keys its
    cache of a local folder on this YAML and the folder's name, so the row count and the shards' size keep two runs
    written to folders of the same name apart.
    """
    dataset, method = public["source"]["dataset"], public["generation"]["method"]
    data = DatasetCardData(
        pretty_name=f"{dataset.removeprefix(LOCAL_PREFIX)} augmented with {method_label(public)}",
        license="other",
        license_name=LICENSE_NAME,
        license_link=OPENRAIL_M_LINK,
        # A local source is published as `./<name>`, which names nothing on the Hub.
        source_datasets=None if dataset.startswith(LOCAL_PREFIX) else [dataset],
        size_categories=[size_category(sum(config.num_rows for config in configs))],
        task_categories=["image-classification"],
        tags=["synthetic", "data-augmentation", "dalda", "few-shot"]
        + {"real_guidance": ["real-guidance"], "da_fusion": ["da-fusion", "textual-inversion"]}.get(method, []),
        configs=[
            {"config_name": config.name, "data_files": [{"split": "train", "path": config.path}]} for config in configs
        ],
    )
    infos = {
        config.name: datasets.DatasetInfo(
            features=output_features(class_names),
            splits=[{"name": "train", "num_examples": config.num_rows, "num_bytes": config.num_bytes}],
            download_size=config.download_size,
            dataset_size=config.num_bytes,
        )
        for config in configs
    }
    DatasetInfosDict(infos).to_dataset_card_data(data)
    return data


def _prompt_bank_facts(generation: dict[str, Any]) -> dict[str, Any] | None:
    """How the run's prompt bank was made, read from the bank file itself; None when the run used no bank."""
    if not generation["prompt_bank"]:
        return None
    settings = PromptBank.load(generation["prompt_bank"]).metadata.get("settings", {})
    facts = {key: settings[key] for key in _PROMPT_BANK_FACTS if key in settings}
    return {**facts, "file_sha256": generation["prompt_bank_sha256"]}


def dataset_card(
    settings: dict[str, Any],
    summary: dict[str, Any],
    *,
    class_names: list[str],
    shards: list[Path],
    skipped: list[dict[str, Any]],
    unlabeled: list[int],
    selection: dict[str, list[int]],
) -> DatasetCard:
    """The card of a finished run.

    Args:
        settings: the run's full settings; only their [`public_settings`] reach the card.
        summary: the counts and the λ / CLIPScore statistics of `report.finalize_output`.
        class_names: the label's class names, in label order.
        shards: the run's parquet files.
        skipped: `{"source_index", "reason"}` of each selected real image that could not be used.
        unlabeled: the source rows whose label is outside the class names.
        selection: the few-shot selection, class name → source rows.
    """
    public = public_settings(settings)
    generation = public["generation"]
    data = card_data(public, class_names, [ConfigFiles.of_shards("default", "data/train-*", shards)])
    content = _TEMPLATES.get_template("dataset_card.md").render(
        card_data=data.to_yaml(),
        label=method_label(public),
        source=public["source"],
        generation=generation,
        models=public["models"],
        ags=public["ags"],
        denoising_steps=int(generation["num_inference_steps"] * generation["real_guidance_strength"]),
        textual_inversion=public.get("textual_inversion"),
        tokens_file=f"{TOKENS_DIR}/{ALL_TOKENS_FILE}",
        prompt_bank=_prompt_bank_facts(settings["generation"]),
        summary=summary,
        skipped=skipped,
        unlabeled=unlabeled,
        selection=json.dumps(selection, ensure_ascii=False),
        openrail_m_link=OPENRAIL_M_LINK,
    )
    return DatasetCard(content)


def trials_card(public: dict[str, Any], class_names: list[str], trials: dict[int, ConfigFiles]) -> DatasetCard:
    """The card of `dalda augment --seeds`: one configuration per trial (seed → its files), each a complete dataset
    with its own card in its folder.

    Args:
        public: the public settings of one trial (they differ between trials by the seed only).
    """
    data = card_data(public, class_names, list(trials.values()))
    content = _TEMPLATES.get_template("trials_card.md").render(
        card_data=data.to_yaml(),
        label=method_label(public),
        source=public["source"],
        trials=trials,
        openrail_m_link=OPENRAIL_M_LINK,
    )
    return DatasetCard(content)


def write_dataset_card(output_dir: str | os.PathLike, card: DatasetCard) -> None:
    """Writes `card` as the folder's `README.md`, atomically."""
    with atomic_output(Path(output_dir, "README.md")) as temporary:
        card.save(temporary)
