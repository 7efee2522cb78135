"""CLIPScore on the kit's tiny CLIP model, checked against CLIP's own forward pass."""

import numpy as np
import PIL.Image
import pytest
import torch

from pipeline_dalda import CLIPScorer, to_rgb

from .helpers import CLIP_SCORE_TOLERANCE, random_images


CLASSES = ["dog", "cat", "golden retriever", "bird"]


@pytest.fixture(scope="module")
def scorer(tiny_models):
    return CLIPScorer.from_pretrained(tiny_models.clip_scorer)


def clip_logits(scorer, images, class_names):
    inputs = scorer.processor(
        text=[f"a photo of a {name}" for name in class_names], images=images, return_tensors="pt", padding=True
    )
    with torch.no_grad():
        return scorer.model(**inputs).logits_per_image


def test_probability_mode_is_softmax_of_clip_logits(scorer):
    images = random_images(3, seed=1)
    labels = [0, 2, 3]
    expected = clip_logits(scorer, images, CLASSES).softmax(dim=-1)[torch.arange(3), labels]
    scores = scorer(images, labels, CLASSES)
    torch.testing.assert_close(scores, expected, atol=CLIP_SCORE_TOLERANCE, rtol=0)


def test_probabilities_over_all_classes_sum_to_one(scorer):
    images = random_images(2, seed=2)
    per_class = torch.stack([scorer(images, [label] * 2, CLASSES) for label in range(len(CLASSES))], dim=1)
    torch.testing.assert_close(per_class.sum(dim=1), torch.ones(2))
    assert (per_class > 0).all()


def test_cosine_mode_is_logits_over_logit_scale(tiny_models, scorer):
    cosine = CLIPScorer.from_pretrained(tiny_models.clip_scorer, mode="cosine")
    images = random_images(2, seed=3)
    logits = clip_logits(scorer, images, CLASSES)
    expected = logits[torch.arange(2), [1, 0]] / scorer.model.logit_scale.exp()
    torch.testing.assert_close(cosine(images, [1, 0], CLASSES), expected, atol=CLIP_SCORE_TOLERANCE, rtol=0)


def test_batched_scores_equal_one_at_a_time(scorer):
    images = random_images(5, seed=4)
    labels = [0, 1, 2, 3, 0]
    batched = scorer(images, labels, CLASSES)
    single = torch.cat([scorer([image], [label], CLASSES) for image, label in zip(images, labels)])
    torch.testing.assert_close(batched, single, atol=CLIP_SCORE_TOLERANCE, rtol=0)


def test_class_list_change_is_not_served_from_cache(scorer):
    image = random_images(1, seed=5)
    first, second = scorer(image, [0], ["dog", "cat"]).item(), scorer(image, [0], ["dog", "bird"]).item()
    assert abs(first - second) > CLIP_SCORE_TOLERANCE


def image_in_every_mode():
    rgb = random_images(1, seed=6, size=(40, 30))[0]
    sixteen_bit = PIL.Image.fromarray((np.asarray(rgb.convert("L"), dtype=np.uint16) * 257))
    return {
        "RGB": rgb,
        "L": rgb.convert("L"),
        "RGBA": rgb.convert("RGBA"),
        "LA": rgb.convert("LA"),
        "P": rgb.convert("P"),
        "CMYK": rgb.convert("CMYK"),
        "I;16": sixteen_bit,
        "1": rgb.convert("1"),
    }


def test_every_image_mode_is_scored(scorer):
    images = image_in_every_mode()
    scores = scorer(list(images.values()), [0] * len(images), CLASSES)
    assert torch.isfinite(scores).all() and ((scores > 0) & (scores < 1)).all()
    # Grayscale and 16-bit grayscale of the same picture are the same picture.
    torch.testing.assert_close(scores[1], scores[6], atol=CLIP_SCORE_TOLERANCE, rtol=0)


def test_to_rgb_keeps_content():
    images = image_in_every_mode()
    gray = np.asarray(images["L"].convert("RGB"))
    np.testing.assert_array_equal(np.asarray(to_rgb(images["I;16"])), gray)
    np.testing.assert_array_equal(np.asarray(to_rgb(images["RGBA"])), np.asarray(images["RGB"]))
    transparent = PIL.Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_rgb(transparent).getpixel((0, 0)) == (255, 255, 255)
    assert all(to_rgb(image).mode == "RGB" for image in images.values())


def test_bad_inputs_are_named(scorer):
    with pytest.raises(ValueError, match="`mode`"):
        CLIPScorer(scorer.model, scorer.processor, mode="dot")
    with pytest.raises(ValueError, match="`class_names` is empty"):
        scorer(random_images(1), [0], [])
    with pytest.raises(ValueError, match="labels"):
        scorer(random_images(2), [0], CLASSES)
    with pytest.raises(ValueError, match=r"`labels\[1\]` is 4"):
        scorer(random_images(2), [0, 4], CLASSES)
