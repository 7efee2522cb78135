"""DALDAPipeline samples λ per item from CLIPScore, and names every bad input."""

import numpy as np
import PIL.Image
import pytest
import torch

from pipeline_dalda import AdaptiveGuidanceScaling, CLIPScorer, DALDAPipeline
from pipeline_dalda.seeding import scale_generator

from .helpers import CLIP_SCORE_TOLERANCE, load_ip_adapter, random_images


CLASSES = ["dog", "cat", "bird"]


def call(pipe, count=3, **kwargs):
    kwargs.setdefault("ip_adapter_image", random_images(count, seed=21))
    return pipe([f"prompt {i}" for i in range(count)], num_inference_steps=1, output_type="latent", **kwargs)


def test_scales_are_sampled_from_the_items_clip_scores(dalda_pipe, tiny_models):
    images = random_images(3, seed=21)
    output = call(
        dalda_pipe, ip_adapter_image=images, class_names=CLASSES, class_labels=["cat", 0, 2], num_shots=4,
        ags_generator=5,
    )
    expected_scores = CLIPScorer.from_pretrained(tiny_models.clip_scorer)(images, [1, 0, 2], CLASSES)
    np.testing.assert_allclose(output.clip_scores, expected_scores.numpy(), atol=1e-6)
    expected_scales = AdaptiveGuidanceScaling().sample(output.clip_scores, num_shots=4, generator=5)
    np.testing.assert_allclose(output.ip_adapter_scales, expected_scales)

    again = call(dalda_pipe, ip_adapter_image=images, class_names=CLASSES, class_labels=[1, 0, 2], num_shots=4,
                 ags_generator=5)
    assert again.ip_adapter_scales == output.ip_adapter_scales


def test_per_item_ags_generators_make_each_items_scale_its_own(dalda_pipe):
    scores = [0.1, 0.5, 0.9]
    batch = call(dalda_pipe, clip_scores=scores, ags_generator=[scale_generator(0, i, 0) for i in range(3)])
    alone = [
        call(dalda_pipe, count=1, clip_scores=[score], ags_generator=[scale_generator(0, i, 0)]).ip_adapter_scales[0]
        for i, score in enumerate(scores)
    ]
    assert batch.ip_adapter_scales == alone
    # Each item's stream matters, or the equality above proves nothing.
    swapped = call(dalda_pipe, clip_scores=scores, ags_generator=[scale_generator(0, i, 1) for i in range(3)])
    assert swapped.ip_adapter_scales != batch.ip_adapter_scales
    with pytest.raises(ValueError, match="`ags_generator` has 2 generators for 3 items"):
        call(dalda_pipe, clip_scores=scores, ags_generator=[scale_generator(0, i, 0) for i in range(2)])


def test_images_are_scored_as_given_and_encoded_at_the_generation_size(dalda_pipe):
    wide = random_images(1, seed=4, size=(96, 32))[0]
    squashed = wide.resize((dalda_pipe.generation_size,) * 2, PIL.Image.BILINEAR)
    encoded = dalda_pipe.encode_ip_adapter_images([wide])
    assert torch.equal(encoded[0], dalda_pipe.encode_ip_adapter_images([squashed])[0])
    cropped = dalda_pipe.feature_extractor(wide, return_tensors="pt").pixel_values  # what no resize would encode
    assert not torch.allclose(dalda_pipe.image_encoder(cropped).image_embeds, encoded[0][:, 0])

    output = call(dalda_pipe, count=1, ip_adapter_image=[wide], class_names=CLASSES, class_labels=[0])
    as_given, as_squashed = (dalda_pipe.clip_scorer()([image], [0], CLASSES).item() for image in (wide, squashed))
    assert output.clip_scores[0] == pytest.approx(as_given, abs=CLIP_SCORE_TOLERANCE)
    assert abs(output.clip_scores[0] - as_squashed) > CLIP_SCORE_TOLERANCE


def test_clip_score_reads_snake_case_labels_as_words(dalda_pipe):
    images = random_images(2, seed=6)
    scorer = dalda_pipe.clip_scorer()
    snake = scorer(images, [0, 1], ["golden_retriever", "tabby__cat"])
    words = scorer(images, [0, 1], ["golden retriever", "tabby cat"])
    assert torch.equal(snake, words)
    assert not torch.equal(words, scorer(images, [0, 1], ["golden-retriever", "tabby-cat"]))


def test_given_scores_and_ags_settings_are_used(dalda_pipe):
    ags = AdaptiveGuidanceScaling(mode="reference", threshold=0.5)
    output = call(dalda_pipe, clip_scores=[0.1, 0.5, 0.9], ags=ags, ags_generator=1, num_shots=2)
    assert output.clip_scores == [0.1, 0.5, 0.9]
    np.testing.assert_allclose(output.ip_adapter_scales, ags.sample([0.1, 0.5, 0.9], num_shots=2, generator=1))
    assert output.ip_adapter_scales[0] >= 0.7 and output.ip_adapter_scales[2] <= 0.4 + 0.1 * np.sqrt(2)


def test_random_ablation_needs_no_scores(dalda_pipe):
    output = call(dalda_pipe, ags=AdaptiveGuidanceScaling(mode="random"), ags_generator=2)
    assert len(output.ip_adapter_scales) == 3 and output.clip_scores is None
    assert all(0 <= scale <= 1 for scale in output.ip_adapter_scales)


def test_explicit_scales_still_report_clip_scores(dalda_pipe):
    output = call(dalda_pipe, ip_adapter_scale=0.5, class_names=CLASSES, class_labels=[0, 1, 2])
    assert output.ip_adapter_scales == [0.5, 0.5, 0.5]
    assert len(output.clip_scores) == 3 and all(0 < score < 1 for score in output.clip_scores)


def test_ags_without_scoring_model_says_what_is_missing(tiny_models):
    pipe = load_ip_adapter(DALDAPipeline.from_pretrained(tiny_models.stable_diffusion), tiny_models)
    with pytest.raises(ValueError, match="clip_scores"):
        call(pipe, class_names=CLASSES, class_labels=[0, 1, 2])
    with pytest.raises(ValueError, match="clip_model"):
        pipe.clip_scorer()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"class_names": CLASSES, "class_labels": [0, 1, 7]}, r"`class_labels\[2\]`"),
        ({"class_names": CLASSES, "class_labels": [0, "horse", 1]}, r"`class_labels\[1\]` is 'horse'"),
        ({"class_names": CLASSES, "class_labels": [0, 1]}, "`class_labels` has 2 entries for 3 items"),
        ({"clip_scores": [0.2, 0.4]}, "`clip_scores` has 2 entries"),
        ({"clip_scores": [0.2, float("nan"), 0.3]}, r"`clip_scores\[1\]`"),
        ({"ip_adapter_scale": [0.1, 0.2]}, "`ip_adapter_scale` has 2 λ's for 3 items"),
        ({"ip_adapter_scale": float("inf")}, "`ip_adapter_scale` must be finite"),
        ({"ip_adapter_scale": 0.5, "ip_adapter_image": random_images(2)}, "2 `ip_adapter_image`s for 3 prompts"),
        ({"ip_adapter_scale": 0.5, "negative_prompt": ["a", "b"]}, "2 negative prompts for 3 prompts"),
    ],
)
def test_bad_inputs_are_named(dalda_pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        call(dalda_pipe, **kwargs)


def test_image_and_embeddings_are_exclusive(dalda_pipe):
    images = random_images(3)
    embeds = dalda_pipe.encode_ip_adapter_images(images)
    with pytest.raises(ValueError, match="exactly one of"):
        call(dalda_pipe, ip_adapter_image=images, ip_adapter_image_embeds=embeds, ip_adapter_scale=0.5)
    with pytest.raises(ValueError, match=r"`ip_adapter_image_embeds\[0\]` has 2 rows for 3 prompts"):
        call(dalda_pipe, ip_adapter_image=None, ip_adapter_image_embeds=[embeds[0][:2]], ip_adapter_scale=0.5)


def test_pipeline_without_ip_adapter_says_so(tiny_models):
    pipe = DALDAPipeline.from_pretrained(tiny_models.stable_diffusion)
    with pytest.raises(ValueError, match="load_ip_adapter"):
        call(pipe, ip_adapter_scale=0.5)


def test_class_prompts_are_encoded_once_across_calls(dalda_pipe):
    scorer = dalda_pipe.clip_scorer()
    call(dalda_pipe, ip_adapter_scale=0.5, class_names=CLASSES, class_labels=[0, 1, 2])
    cached = scorer.class_embeddings(CLASSES)
    call(dalda_pipe, ip_adapter_scale=0.5, class_names=CLASSES, class_labels=[2, 1, 0])
    assert dalda_pipe.clip_scorer() is scorer and scorer.class_embeddings(CLASSES) is cached
    assert dalda_pipe.clip_scorer("cosine").mode == "cosine"
