"""The three ways users load DALDAPipeline, offline, with real `from_pretrained` on saved folders."""

from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline
from transformers import CLIPModel, CLIPProcessor

import pipeline_dalda
from pipeline_dalda import DALDAPipeline

from .helpers import CLIP_SCORE_TOLERANCE, generate_two_items, load_ip_adapter, random_images


PIPELINE_FOLDER = str(Path(pipeline_dalda.__file__).parent)


def test_custom_pipeline_from_the_package_folder(tiny_models, dalda_pipe):
    pipe = DiffusionPipeline.from_pretrained(
        tiny_models.stable_diffusion, custom_pipeline=PIPELINE_FOLDER, trust_remote_code=True
    )
    assert type(pipe).__name__ == "DALDAPipeline"
    assert pipe.clip_model is None and pipe.clip_processor is None
    loaded = generate_two_items(load_ip_adapter(pipe, tiny_models))
    np.testing.assert_allclose(loaded, generate_two_items(dalda_pipe), atol=1e-6)


def test_saved_pipeline_loads_with_custom_pipeline_dalda(tiny_models, tmp_path):
    scorer_model = CLIPModel.from_pretrained(tiny_models.clip_scorer)
    pipe = DALDAPipeline.from_pretrained(
        tiny_models.stable_diffusion,
        clip_model=scorer_model,
        clip_processor=CLIPProcessor.from_pretrained(tiny_models.clip_scorer),
    )
    pipe.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "dalda.py").read_text() == Path(pipeline_dalda.pipeline.__file__).read_text()

    loaded = DiffusionPipeline.from_pretrained(tmp_path / "saved", custom_pipeline="dalda", trust_remote_code=True)
    assert type(loaded).__name__ == "DALDAPipeline"
    assert isinstance(loaded.clip_model, CLIPModel) and isinstance(loaded.clip_processor, CLIPProcessor)
    for name, weight in scorer_model.state_dict().items():
        torch.testing.assert_close(loaded.clip_model.state_dict()[name], weight, rtol=0, atol=0)

    load_ip_adapter(pipe, tiny_models)
    load_ip_adapter(loaded, tiny_models)
    np.testing.assert_allclose(generate_two_items(loaded), generate_two_items(pipe), atol=1e-6)
    # The reloaded scoring components give the same CLIPScores and hence the same AGS draws.
    kwargs = dict(class_names=["dog", "cat"], class_labels=[0, 1], num_inference_steps=2, ags_generator=3)
    images = random_images(2, seed=9)
    first, second = pipe(["a", "b"], ip_adapter_image=images, **kwargs), loaded(["a", "b"], ip_adapter_image=images, **kwargs)
    np.testing.assert_allclose(first.clip_scores, second.clip_scores, atol=CLIP_SCORE_TOLERANCE, rtol=0)
    np.testing.assert_allclose(first.ip_adapter_scales, second.ip_adapter_scales, atol=CLIP_SCORE_TOLERANCE, rtol=0)


def test_plain_import_from_pretrained(tiny_models):
    pipe = pipeline_dalda.DALDAPipeline.from_pretrained(tiny_models.stable_diffusion)
    assert isinstance(pipe, DALDAPipeline)
    assert len(generate_two_items(load_ip_adapter(pipe, tiny_models))) == 2
