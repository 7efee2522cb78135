"""CLIP-I and LPIPS diversity: the evaluate modules loaded by path and checked against direct computations with the
same models, `compute_diversity` over an augmented dataset read back with `load_dataset`, and `dalda evaluate
--diversity` reporting what the modules compute."""

import json
import sys
from pathlib import Path

import datasets
import evaluate
import lpips
import numpy as np
import PIL.Image
import pytest
import torch
import torchvision
import yaml
from transformers import CLIPModel, CLIPProcessor

from pipeline_dalda import data_files
from dataset_builders import testing as data_kit
from dataset_builders.evaluation.arguments import DiversityArguments
from dataset_builders.evaluation.diversity import compute_diversity, diversity_table, metric_module_path
from dataset_builders.hub_layout import output_features
from pipeline_dalda.testing import save_tiny_clip_scorer

from .helpers import random_images, run_dalda


ROOT = Path(__file__).resolve().parents[1]
MODULES = ["clip_i", "lpips_diversity"]
LPIPS_SIZE = 64  # small images keep the random AlexNet fast; the modules' default is 256
# lpips 0.1.4 builds its backbone with torchvision's deprecated `pretrained=` argument.
IGNORE_TORCHVISION = pytest.mark.filterwarnings("ignore:.*(pretrained|weight enum).*:UserWarning")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip_scorer(tmp_path_factory.mktemp("clip-scorer"))


@pytest.fixture(scope="module")
def clip_embed(clip_dir):
    """Normalised image embeddings by CLIP's own forward (`CLIPOutput.image_embeds`), not the module's code."""
    model = CLIPModel.from_pretrained(clip_dir).eval()
    processor = CLIPProcessor.from_pretrained(clip_dir)

    @torch.no_grad()
    def embed(images):
        inputs = processor(text=["a photo"], images=images, return_tensors="pt", padding=True)
        return model(**inputs).image_embeds

    return embed


def load_module(name):
    return evaluate.load(str(metric_module_path(name)), keep_in_memory=True)


def lpips_by_hand(net, first, second):
    """LPIPS of two PIL images with the package directly, resized to LPIPS_SIZE and scaled to [-1, 1]."""

    def tensor(image):
        return lpips.im2tensor(np.asarray(image.convert("RGB").resize((LPIPS_SIZE, LPIPS_SIZE), PIL.Image.BILINEAR)))

    with torch.no_grad():
        return net(tensor(first), tensor(second)).item()


def test_clip_i_identical_and_different_images(clip_dir):
    clip_i = load_module("clip_i")
    image, *others = random_images(3, seed=1)
    same = clip_i.compute(
        predictions=[image] * 3, references=[image] * 3, groups=[0, 0, 0], model_name_or_path=clip_dir
    )
    assert same["clip_i"] == pytest.approx(1.0, abs=1e-5)
    assert same["clip_i_within_group"] == pytest.approx(1.0, abs=1e-5)

    # Or the comparison proves nothing: the tiny CLIP tells these images apart.
    different = clip_i.compute(
        predictions=[image, *others], references=[*others, image], groups=[0, 0, 0], model_name_or_path=clip_dir
    )
    assert different["clip_i"] < 1 - 1e-4
    assert different["clip_i_within_group"] < 1 - 1e-4


def test_clip_i_matches_direct_computation(clip_dir, clip_embed):
    predictions = random_images(3, seed=2, size=(40, 30))
    references = random_images(3, seed=3, size=(24, 36))
    result = load_module("clip_i").compute(
        predictions=predictions,
        references=references,
        groups=["a", "a", "b"],
        model_name_or_path=clip_dir,
        batch_size=2,
    )

    synthetic, sources = clip_embed(predictions), clip_embed(references)
    assert result["clip_i"] == pytest.approx((synthetic * sources).sum(-1).mean().item(), abs=1e-5)
    assert result["clip_i_within_group"] == pytest.approx((synthetic[0] @ synthetic[1]).item(), abs=1e-5)
    assert (result["num_groups"], result["num_skipped_groups"]) == (1, 1)


@IGNORE_TORCHVISION
def test_lpips_identical_and_different_images():
    lpips_diversity = load_module("lpips_diversity")
    image, other = random_images(2, seed=4)
    kwargs = {"pretrained_backbone": False, "image_size": LPIPS_SIZE}
    same = lpips_diversity.compute(predictions=[image] * 3, groups=[0, 0, 0], source_images=[image] * 3, **kwargs)
    assert same["lpips_diversity"] == pytest.approx(0.0, abs=1e-6)
    assert same["lpips_to_source"] == pytest.approx(0.0, abs=1e-6)

    # Or the comparison proves nothing: even the random backbone tells these images apart.
    different = lpips_diversity.compute(predictions=[image, other], source_images=[other, image], **kwargs)
    assert different["lpips_diversity"] > 1e-3
    assert different["lpips_to_source"] > 1e-3


@IGNORE_TORCHVISION
def test_lpips_matches_direct_computation_and_counts_pairs():
    predictions = random_images(6, seed=5, size=(40, 30))
    sources = random_images(6, seed=6, size=(40, 30))
    torch.manual_seed(0)  # the random backbone is drawn at the first compute
    result = load_module("lpips_diversity").compute(
        predictions=predictions,
        groups=[0, 0, 0, 1, 2, 2],  # sizes 3, 1, 2: 3 + 0 + 1 pairs, one group skipped
        source_images=sources,
        pretrained_backbone=False,
        image_size=LPIPS_SIZE,
        batch_size=2,
    )

    torch.manual_seed(0)
    net = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)
    group_0 = np.mean([lpips_by_hand(net, predictions[i], predictions[j]) for i, j in [(0, 1), (0, 2), (1, 2)]])
    group_2 = lpips_by_hand(net, predictions[4], predictions[5])
    to_source = np.mean([lpips_by_hand(net, prediction, source) for prediction, source in zip(predictions, sources)])
    assert result["lpips_diversity"] == pytest.approx((group_0 + group_2) / 2, rel=1e-4)
    assert result["lpips_to_source"] == pytest.approx(to_source, rel=1e-4)
    assert (result["num_pairs"], result["num_groups"], result["num_skipped_groups"]) == (4, 2, 1)


def test_modules_refuse_inputs_that_do_not_pair():
    image = random_images(1)[0]
    with pytest.raises(ValueError, match="groups"):
        load_module("clip_i").compute(predictions=[image, image], references=[image, image], groups=[0])
    with pytest.raises(ValueError, match="net"):
        load_module("lpips_diversity").compute(predictions=[image], net="resnet")


def write_augmented_dataset(folder: Path, images) -> None:
    """A `dalda augment`-shaped parquet folder, rows in shuffled order; every synthetic image copies its source."""
    real_0, real_1, real_2, orphan = images
    rows = [  # (image, label, is_synthetic, source_index)
        (real_1, 1, True, 1),
        (real_0, 0, False, 0),
        (real_2, 1, True, 2),
        (real_0, 0, True, 0),
        (orphan, 0, True, 7),  # its real row is missing: skipped and counted
        (real_1, 1, False, 1),
        (real_0, 0, True, 0),
        (real_2, 1, False, 2),
        (real_2, 1, True, 2),
    ]
    features = output_features(["cat", "dog"])
    columns = {
        "image": [row[0] for row in rows],
        "label": [row[1] for row in rows],
        "is_synthetic": [row[2] for row in rows],
        "source_index": [row[3] for row in rows],
        "prompt": [f"a photo, row {index}" if row[2] else None for index, row in enumerate(rows)],
        "ip_adapter_scale": [0.5 if row[2] else None for row in rows],
        "clip_score": [None if row[2] else 0.4 for row in rows],
        "seed": [index if row[2] else None for index, row in enumerate(rows)],
    }
    columns.update({name: [None] * len(rows) for name in features if name not in columns})  # the rest left empty
    (folder / "data").mkdir(parents=True)
    dataset = datasets.Dataset.from_dict(columns, features=features)
    dataset.to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))


@IGNORE_TORCHVISION
def test_compute_diversity_over_an_augmented_dataset(tmp_path, clip_dir, clip_embed):
    images = random_images(4, seed=7)
    write_augmented_dataset(tmp_path / "augmented", images)
    dataset = datasets.load_dataset(str(tmp_path / "augmented"), split="train", cache_dir=str(tmp_path / "cache"))
    args = DiversityArguments(
        diversity_clip_model=str(clip_dir), lpips_pretrained_backbone=False, diversity_batch_size=4
    )

    result = compute_diversity(dataset, args)

    # Copies paired with their own source: exactly similar, at distance 0. A wrong pairing would show.
    assert result["clip_i_to_source"] == pytest.approx(1.0, abs=1e-5)
    assert result["lpips_to_source"] == pytest.approx(0.0, abs=1e-6)
    assert result["lpips_within_source"] == pytest.approx(0.0, abs=1e-6)  # sources 0 and 2; source 1 has one image
    # Within class: cat = {real_0, real_0}; dog = {real_1, real_2, real_2}.
    real_1, real_2 = clip_embed(images[1:3])
    dog = (2 * (real_1 @ real_2).item() + 1) / 3
    assert dog < 1 - 1e-4  # or the within-class check proves nothing
    assert result["clip_i_within_class"] == pytest.approx((1 + dog) / 2, abs=1e-5)
    counts = ["num_synthetic", "num_sources", "num_skipped_synthetic", "num_lpips_pairs"]
    assert [result[key] for key in counts] == [5, 3, 1, 2]
    assert result["settings"]["diversity_clip_model"] == str(clip_dir)

    table = diversity_table([("DALDA", result)]).splitlines()
    assert table[0] == "| method | CLIP-I ↓ | LPIPS ↑ |"
    assert table[2] == f"| DALDA | {result['clip_i_to_source']:.4f} | {result['lpips_within_source']:.4f} |"


def save_alexnet_checkpoint(torch_home: Path) -> None:
    """Random AlexNet weights where torchvision keeps its download of the ImageNet ones, so that LPIPS's pretrained
    backbone loads offline, the same in every process. Only `features` feed LPIPS: the classifier's 58M weights are
    stored as one broadcast zero, to keep the file small."""
    torch.manual_seed(0)
    state = torchvision.models.alexnet().state_dict()
    state = {
        name: value if name.startswith("features.") else torch.zeros(()).expand(value.shape)
        for name, value in state.items()
    }
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(state, folder / Path(torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url).name)


@IGNORE_TORCHVISION
def test_evaluate_command_reports_what_the_modules_compute(tmp_path, clip_dir, monkeypatch):
    # One trial: one real image per colour; the first two have two synthetic images of their class each.
    labels, images = data_kit.save_colour_dataset(tmp_path / "source", images_per_class=5)
    rng = np.random.default_rng(1)
    reals = [(row, images[row], labels[row]) for row in range(len(data_kit.COLOURS))]
    synthetic = {
        row: [(image, label) for image in data_kit.colour_images(rng, label, 2)] for row, _, label in reals[:2]
    }
    settings = data_kit.augment_run_settings(tmp_path / "source", num_shots=1)
    dataset = data_kit.write_augmented_dataset(tmp_path / "augmented", reals, synthetic, settings)
    save_alexnet_checkpoint(tmp_path / "torch-home")
    environment = {
        "TORCH_HOME": str(tmp_path / "torch-home"),
        "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache"),
        "https_proxy": "http://127.0.0.1:9",  # nothing may be downloaded: a missing file fails at once
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    result = run_dalda(
        "evaluate", "--dataset", dataset, "--output_dir", tmp_path / "eval", "--backbone", clip_dir,
        "--epochs", 1, "--iterations_per_epoch", 2, "--image_size", 32, "--cache_dir", tmp_path / "feature-cache",
        "--device", "cpu", "--method_label", "DALDA", "--diversity", "--diversity_clip_model", clip_dir,
        "--diversity_batch_size", 3,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reported = json.loads((tmp_path / "eval" / "results.json").read_text())["diversity"]

    # The same figures from the evaluate modules directly, each synthetic image paired with its own real image.
    pairs = [(image, real, row, label) for row, real, label in reals for image, _ in synthetic.get(row, [])]
    predictions, references, sources, classes = (list(column) for column in zip(*pairs))
    clip_i = load_module("clip_i").compute(
        predictions=predictions, references=references, groups=classes, model_name_or_path=str(clip_dir), device="cpu"
    )
    lpips_result = load_module("lpips_diversity").compute(
        predictions=predictions, groups=sources, source_images=references, device="cpu"
    )
    expected = {
        "clip_i_to_source": clip_i["clip_i"],
        "clip_i_within_class": clip_i["clip_i_within_group"],
        "lpips_within_source": lpips_result["lpips_diversity"],
        "lpips_to_source": lpips_result["lpips_to_source"],
    }
    # Or the comparison proves nothing: every figure is away from what identical images would give.
    assert max(expected["clip_i_to_source"], expected["clip_i_within_class"]) < 1 - 1e-4
    assert min(expected["lpips_within_source"], expected["lpips_to_source"]) > 1e-3
    assert {name: reported[name] for name in expected} == pytest.approx(expected, abs=1e-5)
    counts = ["num_synthetic", "num_sources", "num_skipped_synthetic", "num_lpips_pairs"]
    assert [reported[name] for name in counts] == [4, 2, 0, 2]
    assert reported["settings"] == {
        "diversity_clip_model": str(clip_dir),
        "lpips_net": "alex",
        "lpips_pretrained_backbone": True,
        "diversity_batch_size": 3,
    }
    table = f"| DALDA | {reported['clip_i_to_source']:.4f} | {reported['lpips_within_source']:.4f} |"
    assert table in (tmp_path / "eval" / "results.md").read_text().split("## Diversity")[1]


@pytest.mark.parametrize("name", MODULES)
def test_metric_module_path_finds_the_checkout_copy(name):
    path = metric_module_path(name)
    assert path == ROOT / "scripts" / "metrics" / name
    assert (path / f"{name}.py").is_file()


def test_metric_module_path_falls_back_to_the_installed_copy(tmp_path, monkeypatch):
    installed = tmp_path / "prefix" / "share" / "dalda" / "metrics" / "clip_i"
    installed.mkdir(parents=True)
    monkeypatch.setattr(data_files, "REPOSITORY_ROOT", tmp_path / "site-packages")
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "prefix"))
    assert metric_module_path("clip_i") == installed
    with pytest.raises(FileNotFoundError, match="scripts/metrics/missing.*share/dalda/metrics/missing"):
        metric_module_path("missing")


@pytest.mark.parametrize("name", MODULES)
def test_module_folder_is_packaged_and_publishable(name):
    folder = ROOT / "scripts" / "metrics" / name
    files = sorted(path.relative_to(ROOT).as_posix() for path in folder.iterdir() if path.name != "__pycache__")
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    data_files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    assert sorted(data_files[f"share/dalda/metrics/{name}"]) == files

    card = yaml.safe_load((folder / "README.md").read_text().split("---")[1])
    assert card["sdk"] == "gradio" and card["app_file"] == "app.py" and (folder / "app.py").is_file()
    assert {"evaluate", "metric"} <= set(card["tags"])
    assert card["title"] and card["description"]
