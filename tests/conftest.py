"""Shared fixtures, each made once per test session: the offline model kit, a small `pets` dataset with a prompt
bank, and one `dalda augment` run on it; and a fresh pipeline per test."""

import os
import types


os.environ["HF_HUB_OFFLINE"] = "1"  # before any Hugging Face import: nothing may be downloaded

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from transformers import CLIPModel, CLIPProcessor  # noqa: E402

from pipeline_dalda import DALDAPipeline  # noqa: E402
from pipeline_dalda.prompts import PromptArguments, generate_prompt_bank  # noqa: E402
from pipeline_dalda.testing import save_tiny_models  # noqa: E402
from pipeline_dalda.testing_sdxl import save_tiny_sdxl_models  # noqa: E402

from .helpers import PETS_CLASSES, REGENERATION_STEPS, augment, load_ip_adapter, random_images  # noqa: E402
from .hub_server import SECRET_TOKEN  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    return save_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory):
    """The model kit's SDXL part: an SDXL pipeline, h94's SDXL IP-Adapter files with their image encoders, a CLIP
    scorer (`TinyModelPaths`, no ResNet)."""
    return save_tiny_sdxl_models(tmp_path_factory.mktemp("tiny-sdxl"))


@pytest.fixture
def dalda_pipe(tiny_models):
    """A fresh DALDAPipeline with the CLIP scoring components and the IP-Adapter."""
    pipe = DALDAPipeline.from_pretrained(
        tiny_models.stable_diffusion,
        clip_model=CLIPModel.from_pretrained(tiny_models.clip_scorer),
        clip_processor=CLIPProcessor.from_pretrained(tiny_models.clip_scorer),
    )
    return load_ip_adapter(pipe, tiny_models)


@pytest.fixture(scope="session")
def pets(tmp_path_factory):
    """A `save_to_disk` dataset: 3 classes × 3 images of assorted sizes, and a template prompt bank for it."""
    root = tmp_path_factory.mktemp("pets")
    sizes = [(48, 40), (30, 30), (64, 20)]
    images = [image.resize(sizes[i % 3]) for i, image in enumerate(random_images(9, seed=40))]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=PETS_CLASSES)})
    datasets.Dataset.from_dict({"image": images, "label": [i % 3 for i in range(9)]}, features=features).save_to_disk(
        root / "dataset"
    )
    generate_prompt_bank(PromptArguments(output=str(root / "bank.json"), num_prompts=3), PETS_CLASSES)
    return root


@pytest.fixture(scope="session")
def augmented(tiny_models, pets, tmp_path_factory):
    """`dalda augment` on `pets` with the helpers' tiny settings, run with a Hub token in the environment (which must
    reach no file): the output folder and the run summary."""
    os.environ["HF_TOKEN"] = SECRET_TOKEN
    try:
        output = tmp_path_factory.mktemp("augmented") / "out"
        summary = augment(tiny_models, pets, output)
    finally:
        del os.environ["HF_TOKEN"]
    return output, summary


@pytest.fixture(scope="session")
def regenerated(tiny_models, pets, tmp_path_factory):
    """`dalda augment` on `pets` as it is (the baseline), then again with every image whose own CLIPScore is below a
    threshold regenerated (`min_synthetic_score`, 3 attempts): the baseline's folder, the threshold, and the second
    run's folder and summary.

    The threshold splits the baseline's synthetic scores in the middle of their widest gap (at least three images on
    either side), so that images on both sides of it stay there however a run batches them.
    """
    root = tmp_path_factory.mktemp("regenerated")
    augment(tiny_models, pets, root / "baseline", num_inference_steps=REGENERATION_STEPS)
    baseline = datasets.load_dataset(str(root / "baseline"), split="train")
    scores = np.sort([score for score in baseline["synthetic_clip_score"] if score is not None])
    widest = 2 + int(np.argmax(np.diff(scores)[2:-3]))
    threshold = float(scores[widest : widest + 2].mean())
    output = root / "regenerated"
    summary = augment(
        tiny_models, pets, output, num_inference_steps=REGENERATION_STEPS, min_synthetic_score=threshold
    )
    return types.SimpleNamespace(baseline=root / "baseline", threshold=threshold, output=output, summary=summary)
