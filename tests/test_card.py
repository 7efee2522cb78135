"""The dataset card of `dalda augment`: Hub metadata that parses back into `DatasetCardData`, a body rendered from the
packaged template, and nothing of the machine that made it."""

import json
from pathlib import Path

import datasets
import pytest
from huggingface_hub import DatasetCard

from dataset_builders.card import (
    LICENSE_NAME,
    OPENRAIL_M_LINK,
    dataset_card,
    method_label,
    size_category,
    write_dataset_card,
)
from dataset_builders.hub_layout import RUN_RECORD
from dataset_builders.testing import augment_run_settings, write_augmented_dataset

from .helpers import PETS_CLASSES, random_images


ROOT = Path(__file__).resolve().parents[1]
HUB_SOURCE = "timm/oxford-iiit-pet"


def summary(rows: int) -> dict:
    """A run summary as `report.finalize_output` returns it, for `rows` rows."""
    return {
        "classes": len(PETS_CLASSES), "real_images": 1, "synthetic_images": rows - 1, "rows": rows,
        "skipped_real_images": 0, "rows_without_a_known_label": 0,
        "ip_adapter_scale": {"mean": 0.3, "std": 0.1, "min": 0.1, "max": 0.5}, "clip_score": {},
        "synthetic_clip_score": {"mean": 0.4, "std": 0.1, "min": 0.2, "max": 0.6},
    }


def write_small_output(folder: Path, settings: dict, image_size: int, rows: int = 2, **card_facts) -> Path:
    """A folder as `dalda augment` leaves it: one real image of class 0 and its synthetic ones, and the card."""
    images = random_images(rows, seed=image_size, size=(image_size, image_size))
    write_augmented_dataset(folder, [(0, images[0], 0)], {0: [(image, 0) for image in images[1:]]}, settings, PETS_CLASSES)
    facts = {"skipped": [], "unlabeled": [], "selection": {PETS_CLASSES[0]: [0]}, **card_facts}
    shards = sorted(Path(folder, "data").glob("*.parquet"))
    write_dataset_card(folder, dataset_card(settings, summary(rows), class_names=PETS_CLASSES, shards=shards, **facts))
    return folder


@pytest.mark.parametrize(
    "rows, category",
    [(0, "n<1K"), (999, "n<1K"), (1_000, "1K<n<10K"), (9_999, "1K<n<10K"), (10_000, "10K<n<100K"),
     (10**6, "1M<n<10M"), (10**12 - 1, "100B<n<1T"), (10**12, "n>1T")],
)
def test_size_category_uses_the_hub_buckets(rows, category):
    assert size_category(rows) == category


def test_one_method_label_for_the_card_and_the_evaluation(tmp_path):
    settings = augment_run_settings(HUB_SOURCE, 1)  # a base-prompt run
    llm = {**settings, "generation": {**settings["generation"], "base_prompt": False}}
    real_guidance = {**settings, "generation": {**settings["generation"], "method": "real_guidance"}}
    assert method_label(settings) == "Base + AGS"
    assert method_label(llm) == "DALDA (LLM + AGS)"
    assert method_label({**llm, "ags": {**llm["ags"], "mode": "random"}}) == "LLM + RS"
    assert method_label({**settings, "ags": {**settings["ags"], "mode": "fixed"}}) == "Base + fixed λ"
    assert method_label(real_guidance) == "Real Guidance"
    assert method_label({"generation": {"base_prompt": False}}) == "DALDA (LLM + AGS)"  # an older record
    card = DatasetCard.load(write_small_output(tmp_path, real_guidance, 16) / "README.md")
    assert card.data.pretty_name == f"{HUB_SOURCE} augmented with Real Guidance" and "real-guidance" in card.data.tags
    assert "# `timm/oxford-iiit-pet` augmented with Real Guidance" in card.text and "| AGS |" not in card.text


def test_card_metadata_parses_back_into_dataset_card_data(tmp_path):
    skipped = [{"source_index": 4, "reason": "cannot decode the image: a | b"}]
    folder = write_small_output(tmp_path / "out", augment_run_settings(HUB_SOURCE, 2), 16, rows=1_001, skipped=skipped)
    card = DatasetCard.load(folder / "README.md")
    data = card.data
    assert data.license == "other" and data.license_name == LICENSE_NAME and data.license_link == OPENRAIL_M_LINK
    assert data.source_datasets == [HUB_SOURCE]
    assert data.size_categories == ["1K<n<10K"]
    assert data.task_categories == ["image-classification"]
    assert data.pretty_name == f"{HUB_SOURCE} augmented with Base + AGS"
    assert {"synthetic", "data-augmentation", "dalda", "few-shot"} == set(data.tags)
    assert data.configs == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    loaded = datasets.load_dataset(str(folder), split="train", cache_dir=str(tmp_path / "loaded"))
    (split,) = data.dataset_info["splits"]
    assert split["name"] == "train" and split["num_examples"] == 1_001
    # The rows' size in Arrow, as loaded (within the Arrow buffers' padding), not 0: the images are in it.
    assert split["num_bytes"] == pytest.approx(loaded.data.nbytes, rel=0.01) and split["num_bytes"] > 1_001 * 100
    assert data.dataset_info["download_size"] == sum(path.stat().st_size for path in (folder / "data").iterdir())
    assert "| 4 | cannot decode the image: a / b |" in card.text  # a `|` would split the table's cell
    assert "1001 rows in one `train` split" in card.text and 'the base prompt "a photo of a {class}"' in card.text

    builder = datasets.load_dataset_builder(str(folder), cache_dir=str(tmp_path / "cache"))
    assert builder.info.features["label"].names == PETS_CLASSES  # read from the card, before any data is loaded
    assert builder.info.splits["train"].num_examples == 1_001


def test_two_outputs_of_the_same_name_load_as_themselves(tmp_path):
    """`datasets` caches a local folder under its name and its card's YAML: the card tells two runs apart."""
    settings = augment_run_settings(HUB_SOURCE, 1)
    small, large = write_small_output(tmp_path / "a" / "out", settings, 8), write_small_output(
        tmp_path / "b" / "out", settings, 24)
    for folder, size in ((small, 8), (large, 24)):
        dataset = datasets.load_dataset(str(folder), split="train", cache_dir=str(tmp_path / "cache"))
        assert [image.size for image in dataset["image"]] == [(size, size)] * 2, folder


def test_card_template_is_packaged():
    """The template ships with the package (an installed, non-editable copy renders from its own files)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    package = ROOT / "dataset_builders"
    packaged = {path for pattern in package_data["dataset_builders"] for path in package.glob(pattern)}
    templates = set((package / "templates").iterdir())
    assert templates and templates <= packaged


def test_run_card_names_no_local_path_and_matches_the_run_record(augmented, tiny_models, tmp_path_factory):
    output, summary = augmented
    text = (output / "README.md").read_text()
    assert str(tmp_path_factory.getbasetemp()) not in text  # every folder of this test session lies under it
    card = DatasetCard.load(output / "README.md")
    assert card.data.pretty_name == "dataset augmented with DALDA (LLM + AGS)"
    assert card.data.source_datasets is None  # a local folder is no Hub dataset to link to
    assert card.data.size_categories == ["n<1K"] and card.data.license == "other"
    # The card names local paths exactly as the published run record does.
    record = json.loads((output / RUN_RECORD).read_text())
    published = [record["source"]["dataset"], record["generation"]["prompt_bank"]] + [
        record["models"][name] for name in ("pretrained_model_name_or_path", "ip_adapter", "clip_score_model")]
    assert published == ["./dataset", "./bank.json"] + [
        f"./{path.name}" for path in (tiny_models.stable_diffusion, tiny_models.ip_adapter, tiny_models.clip_scorer)]
    for name in published:
        assert f"`{name}`" in text, name


def test_run_output_loads_with_the_class_names(augmented, tmp_path):
    output, summary = augmented
    dataset = datasets.load_dataset(str(output), split="train", cache_dir=str(tmp_path / "cache"))
    assert dataset.features["label"] == datasets.ClassLabel(names=PETS_CLASSES) and len(dataset) == summary["rows"]
