"""Shared fixtures: the offline model kit, saved once per test session, and loaders that use the real code paths."""

import os


os.environ["HF_HUB_OFFLINE"] = "1"  # before any Hugging Face import: nothing may be downloaded

import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import CLIPModel, CLIPProcessor  # noqa: E402

from pipeline_dalda import DALDAPipeline  # noqa: E402
from pipeline_dalda.testing import IP_ADAPTER_SUBFOLDER, IP_ADAPTER_WEIGHT_NAME, save_tiny_models  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    return save_tiny_models(tmp_path_factory.mktemp("tiny-models"))


def load_ip_adapter(pipe, tiny_models):
    """Loads the kit's IP-Adapter the way users load `h94/IP-Adapter`."""
    pipe.load_ip_adapter(tiny_models.ip_adapter, subfolder=IP_ADAPTER_SUBFOLDER, weight_name=IP_ADAPTER_WEIGHT_NAME)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def dalda_pipe(tiny_models):
    """A fresh DALDAPipeline with the CLIP scoring components and the IP-Adapter."""
    pipe = DALDAPipeline.from_pretrained(
        tiny_models.stable_diffusion,
        clip_model=CLIPModel.from_pretrained(tiny_models.clip_scorer),
        clip_processor=CLIPProcessor.from_pretrained(tiny_models.clip_scorer),
    )
    return load_ip_adapter(pipe, tiny_models)


def random_images(count, seed=0, size=(48, 40)):
    rng = np.random.default_rng(seed)
    return [PIL.Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(count)]


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
