"""The contact sheet: each synthetic image labelled with its λ and its own CLIPScore, and those below the run's
`min_synthetic_score` marked."""

import datasets
import numpy as np
import PIL.Image

from dataset_builders.hub_layout import output_features
from dataset_builders.report import SheetTile, contact_sheet, contact_sheet_rows, synthetic_caption

from .helpers import PETS_CLASSES, random_images


def test_each_synthetic_caption_gives_its_own_score_and_says_where_it_is_below_the_threshold():
    assert synthetic_caption(0.42, 0.61, None) == (["lambda 0.42", "CLIP 0.61"], False)
    assert synthetic_caption(0.42, 0.31, None) == (["lambda 0.42", "CLIP 0.31"], False)  # no threshold, no mark
    assert synthetic_caption(0.42, 0.31, 0.5) == (["lambda 0.42", "CLIP 0.31 < 0.5"], True)
    assert synthetic_caption(0.42, 0.5, 0.5) == (["lambda 0.42", "CLIP 0.50"], False)  # at the threshold: kept
    assert synthetic_caption(None, None, 0.5) == ([], False)  # a row without λ or score (an older dataset)


def test_a_sheet_from_rows_with_known_scores_marks_those_below(tmp_path):
    """Shard rows with known scores: the sheet's captions carry each image's own score, and a tile marked below the
    threshold differs in pixels from the same image unmarked (its frame), nowhere else but its frame and caption."""
    images = random_images(3, seed=5)
    real = {"label": 1, "source_index": 7, "clip_score": 0.8}
    records = [
        {**real, "image": images[0], "is_synthetic": False},
        {**real, "image": images[1], "is_synthetic": True, "ip_adapter_scale": 0.3, "synthetic_clip_score": 0.25},
        {**real, "image": images[2], "is_synthetic": True, "ip_adapter_scale": 0.35, "synthetic_clip_score": 0.75},
    ]
    columns = {name: [record.get(name) for record in records] for name in output_features(PETS_CLASSES)}
    shard = tmp_path / "train-00000-of-00001.parquet"
    datasets.Dataset.from_dict(columns, features=output_features(PETS_CLASSES)).to_parquet(str(shard))

    (row,) = contact_sheet_rows([shard], PETS_CLASSES, rows=8, threshold=0.5)
    assert [(tile.lines, tile.below) for tile in row] == [
        (["beagle", "CLIP 0.80"], False),
        (["lambda 0.30", "CLIP 0.25 < 0.5"], True),
        (["lambda 0.35", "CLIP 0.75"], False),
    ]
    (unthresholded,) = contact_sheet_rows([shard], PETS_CLASSES, rows=8, threshold=None)
    assert not any(tile.below for tile in unthresholded)

    image = PIL.Image.new("RGB", (40, 40), "gray")
    lines = ["lambda 0.30", "CLIP 0.25"]
    marked = np.asarray(contact_sheet([[SheetTile(image, lines, below=True)]]), dtype=int)
    plain = np.asarray(contact_sheet([[SheetTile(image, lines, below=False)]]), dtype=int)
    changed = np.abs(marked - plain).sum(axis=2) > 0
    assert changed.any()
    red = marked[changed]
    assert (red[:, 0] > red[:, 1] + 100).mean() > 0.5  # the mark is red
    thumb = changed[4:132, 4:132]
    assert not thumb[3:-3, 3:-3].any()  # the image itself is untouched: only its frame
