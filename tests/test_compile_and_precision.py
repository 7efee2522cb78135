"""torch.compile and reduced precision are supported paths: the compiled UNet compiles once for a batch size and
matches eager whatever the per-item λ's, and bfloat16 generates with per-item λ's while CLIPScore stays float32."""

import numpy as np
import pytest
import torch
from torch._dynamo.testing import CompileCounter
from torch._dynamo.utils import counters

from dataset_builders.arguments import AugmentArguments, SourceArguments
from dataset_builders.augment import run_settings
from pipeline_dalda import AdaptiveGuidanceScaling
from pipeline_dalda.loading import load_dalda_pipeline
from pipeline_dalda.seeding import noise_generator, scale_generator

from .helpers import CLIP_SCORE_TOLERANCE, kit_model_args, random_images


CLASSES = ["dog", "cat"]


def generate(pipe, scales, **kwargs):
    return pipe(
        ["a dog on the grass", "a cat on a sofa"],
        ip_adapter_image=random_images(2, seed=12),
        ip_adapter_scale=scales,
        num_inference_steps=2,
        generator=[noise_generator(seed) for seed in (3, 4)],
        output_type="np",
        **kwargs,
    )


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_unet_compiles_once_and_matches_eager(dalda_pipe, fresh_dynamo):
    scale_sets = ([0.2, 0.9], [0.7, 0.1], [0.5, 0.5])
    eager = [generate(dalda_pipe, scales).images for scales in scale_sets]
    counter = CompileCounter()
    dalda_pipe.unet = torch.compile(dalda_pipe.unet, backend=counter)

    compiled = [generate(dalda_pipe, scale_sets[0]).images]
    graphs = counter.frame_count
    compiled += [generate(dalda_pipe, scales).images for scales in scale_sets[1:]]
    assert graphs == 1, f"the UNet compiled into {graphs} graphs"
    assert counter.frame_count == graphs, "new per-item λ's recompiled the UNet"
    for expected, actual in zip(eager, compiled):
        np.testing.assert_allclose(actual, expected, atol=1e-5)
    # λ changes the compiled output, or the agreement above proves nothing.
    assert np.abs(compiled[0] - compiled[1]).max() > 1e-3


def test_compile_option_generates_through_inductor_as_eager_and_does_not_change_the_runs_settings(
    tiny_models, fresh_dynamo
):
    """`compile=True` as users run it: TorchInductor builds C++ kernels for the UNet (about a minute on 2 CPU cores,
    most of this test's time) and the images are eager's."""
    eager = generate(load_dalda_pipeline(kit_model_args(tiny_models, device="cpu")), [0.2, 0.9]).images
    pipe = load_dalda_pipeline(kit_model_args(tiny_models, device="cpu", compile=True))
    assert isinstance(pipe.unet, torch._dynamo.eval_frame.OptimizedModule)
    compiled = generate(pipe, [0.2, 0.9]).images
    assert counters["inductor"], "TorchInductor compiled nothing"
    np.testing.assert_allclose(compiled, eager, atol=1e-5)  # float reassociation in fused kernels: ~3e-6 measured

    source, args = SourceArguments(dataset="pets"), AugmentArguments(output_dir="out", base_prompt=True)
    ags = AdaptiveGuidanceScaling()
    compiled_settings = run_settings(source, args, kit_model_args(tiny_models, device="cpu", compile=True), ags)
    assert compiled_settings == run_settings(source, args, kit_model_args(tiny_models, device="cpu"), ags)


def test_bfloat16_generates_per_item_scales_and_scores_in_float32(tiny_models):
    full = load_dalda_pipeline(kit_model_args(tiny_models, device="cpu", dtype="float32"))
    half = load_dalda_pipeline(kit_model_args(tiny_models, device="cpu", dtype="bfloat16"))
    assert half.unet.dtype == torch.bfloat16 and half.image_encoder.dtype == torch.bfloat16
    assert half.clip_model.dtype == torch.float32
    assert half.dtype == torch.bfloat16 and full.dtype == torch.float32  # the denoising dtype, not the scorer's

    def ags():  # fresh λ streams for every call: a call draws from them
        return {
            "class_names": CLASSES,
            "class_labels": [0, 1],
            "ags_generator": [scale_generator(0, item, 0) for item in range(2)],
        }

    expected, output = generate(full, None, **ags()), generate(half, None, **ags())
    # The same float32 scores, so the same λ's (a λ moves with its score).
    np.testing.assert_allclose(output.clip_scores, expected.clip_scores, atol=CLIP_SCORE_TOLERANCE, rtol=0)
    np.testing.assert_allclose(output.ip_adapter_scales, expected.ip_adapter_scales, atol=CLIP_SCORE_TOLERANCE, rtol=0)
    assert np.isfinite(output.images).all()
    assert np.abs(output.images - expected.images).max() < 0.1  # bfloat16's rounding, not another image

    # Each item's λ acts in bfloat16 too.
    low, high = generate(half, [0.0, 0.0]).images, generate(half, [0.0, 1.0]).images
    assert np.abs(low[0] - high[0]).max() <= 1e-6 and np.abs(low[1] - high[1]).max() > 1e-2

    # A scoring model handed over in half precision scores in float32 all the same (its weights stay rounded).
    half.clip_model.to(torch.bfloat16)
    scores = generate(half, None, **ags()).clip_scores
    assert half.clip_model.dtype == torch.float32
    np.testing.assert_allclose(scores, expected.clip_scores, atol=1e-3)
