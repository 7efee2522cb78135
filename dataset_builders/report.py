"""The end of a run: read back every shard, summarise it, draw the contact sheet and write the dataset card."""

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageOps
import pyarrow.parquet as pq

from pipeline_dalda.images import load_image

from .card import ConfigFiles, dataset_card, trials_card, write_dataset_card
from .hub_layout import TRIAL_PREFIX, WORK_DIR, public_settings, read_run_record, shard_path, write_run_record
from .source import RealImages


logger = logging.getLogger(__name__)

_STAT_COLUMNS = [
    "label", "is_synthetic", "source_index", "ip_adapter_scale", "clip_score", "strength", "synthetic_clip_score",
    "attempts",
]


def _floats(values: list[float | None]) -> np.ndarray:
    return np.array([np.nan if value is None else value for value in values], dtype=float)


def _stats(values: np.ndarray) -> dict[str, float]:
    values = values[~np.isnan(values)]
    if values.size == 0:
        return {}
    return {key: round(float(fn(values)), 4) for key, fn in
            (("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max))}


SHEET_BELOW = "red"
"""The colour of the frame and the score line of a synthetic image below `min_synthetic_score` on the contact sheet."""


@dataclass(frozen=True)
class SheetTile:
    """One image of the contact sheet, with its caption lines and whether it is marked below the run's threshold."""

    image: PIL.Image.Image
    lines: list[str]
    below: bool = False


def real_caption(class_name: str, clip_score: float | None) -> list[str]:
    """A real image's caption: its class (cut to 16 characters) and its CLIPScore against the class."""
    return [class_name[:16]] + ([f"CLIP {clip_score:.2f}"] if clip_score is not None else [])


def synthetic_caption(scale: float | None, own_score: float | None, threshold: float | None) -> tuple[list[str], bool]:
    """A synthetic image's caption — its λ and its own CLIPScore (`synthetic_clip_score`) — and whether that score
    is below the run's `min_synthetic_score` (None: no threshold, nothing is below), which the caption says too:
    `(["lambda 0.42", "CLIP 0.31 < 0.5"], True)`."""
    lines = [f"lambda {scale:.2f}"] if scale is not None else []
    below = threshold is not None and own_score is not None and own_score < threshold
    if own_score is not None:
        lines.append(f"CLIP {own_score:.2f}" + (f" < {threshold:g}" if below else ""))
    return lines, below


def contact_sheet(rows: list[list[SheetTile]], thumb: int = 128) -> PIL.Image.Image:
    """One row per real image: the real image (class, CLIPScore), then its synthetic images (λ, own CLIPScore); a
    synthetic image below the run's threshold gets a red frame and a red score line."""
    columns = max(len(tiles) for tiles in rows)
    line_height, lines = 12, max(len(tile.lines) for tiles in rows for tile in tiles)
    caption = 6 + line_height * lines
    sheet = PIL.Image.new("RGB", (columns * (thumb + 4) + 4, len(rows) * (thumb + caption + 4) + 4), "white")
    draw = PIL.ImageDraw.Draw(sheet)
    for row, tiles in enumerate(rows):
        for column, tile in enumerate(tiles):
            x, y = 4 + column * (thumb + 4), 4 + row * (thumb + caption + 4)
            sheet.paste(PIL.ImageOps.pad(tile.image.convert("RGB"), (thumb, thumb), color="white"), (x, y))
            if tile.below:
                draw.rectangle((x, y, x + thumb - 1, y + thumb - 1), outline=SHEET_BELOW, width=3)
            for number, text in enumerate(tile.lines):
                colour = SHEET_BELOW if tile.below and number == len(tile.lines) - 1 else "black"
                draw.text((x + 2, y + thumb + 3 + number * line_height), text, fill=colour)
    return sheet


def contact_sheet_rows(
    files: list[Path], class_names: list[str], rows: int, threshold: float | None
) -> list[list[SheetTile]]:
    """The contact sheet's rows from the run's shards: the first `rows` real images, each with its synthetic images,
    those whose own CLIPScore is below `threshold` (the run's `min_synthetic_score`, None for none) marked."""
    groups: dict[int, dict[str, Any]] = {}
    for path in files:
        table = pq.read_table(path, columns=["image", *_STAT_COLUMNS])
        for record in table.to_pylist():
            image = load_image(record["image"])
            group = groups.setdefault(record["source_index"], {"real": None, "synthetic": []})
            if record["is_synthetic"]:
                lines, below = synthetic_caption(record["ip_adapter_scale"], record["synthetic_clip_score"], threshold)
                group["synthetic"].append(SheetTile(image, lines, below))
            else:
                group["real"] = SheetTile(image, real_caption(class_names[record["label"]], record["clip_score"]))
        if len(groups) >= rows:
            break
    return [[group["real"], *group["synthetic"]] for group in list(groups.values())[:rows] if group["real"]]


def finalize_output(
    output_dir: Path, real: RealImages, selected: list[int], settings: dict[str, Any], sheet_rows: int, count: int
) -> dict[str, Any]:
    """Reads back the run's shards and reports; writes the contact sheet, the dataset card and the run record.

    Returns the run's summary: counts, the statistics of λ and of the real and synthetic images' CLIPScores, the
    synthetic images per img2img strength and, with `min_synthetic_score`, how many were regenerated and how many
    never reached it.
    """
    files = [shard_path(output_dir, index, count) for index in range(count)]
    table = pq.read_table(files, columns=_STAT_COLUMNS) if files else None
    columns = table.to_pydict() if table is not None else {name: [] for name in _STAT_COLUMNS}
    synthetic = np.array(columns["is_synthetic"], dtype=bool)
    scales = _floats(columns["ip_adapter_scale"])[synthetic]
    scores = _floats(columns["clip_score"])[~synthetic]
    own_scores = _floats(columns["synthetic_clip_score"])[synthetic]
    strengths = Counter(value for value, is_synthetic in zip(columns["strength"], synthetic) if is_synthetic)
    skipped = []
    for report in sorted((output_dir / WORK_DIR / "reports").glob("shard-*.json")):
        skipped += json.loads(report.read_text(encoding="utf-8"))["skipped"]
    unlabeled = [index for index, label in enumerate(real.labels) if label is None]

    summary = {
        "classes": len(real.class_names),
        "real_images": int((~synthetic).sum()),
        "synthetic_images": int(synthetic.sum()),
        "rows": len(synthetic),
        "skipped_real_images": len(skipped),
        "rows_without_a_known_label": len(unlabeled),
        "ip_adapter_scale": _stats(scales),
        "clip_score": _stats(scores),
        "synthetic_clip_score": _stats(own_scores),
        "strength": {f"{value:g}": count for value, count in sorted(strengths.items()) if value is not None},
    }
    threshold = settings["generation"]["min_synthetic_score"]
    if threshold is not None:
        attempts = np.array([value for value in columns["attempts"] if value is not None], dtype=int)
        summary["regeneration"] = {
            "regenerated": int((attempts > 1).sum()),
            "extra_images": int((attempts - 1).sum()),
            "never_passed": int((own_scores < threshold).sum()),
        }
    if files and sheet_rows > 0:
        sheet_rows = contact_sheet_rows(files, real.class_names, sheet_rows, threshold)
        if sheet_rows:
            contact_sheet(sheet_rows).save(output_dir / "contact_sheet.png")

    selection: dict[str, list[int]] = {}
    for index in selected:
        selection.setdefault(real.class_names[real.labels[index]], []).append(index)
    card = dataset_card(
        settings, summary, class_names=real.class_names, shards=files, skipped=skipped, unlabeled=unlabeled,
        selection=selection,
    )
    write_dataset_card(output_dir, card)
    write_run_record(output_dir, settings)
    logger.info("Summary: %s", json.dumps(summary))
    return summary


def write_trials_card(root: Path, summaries: dict[int, dict[str, Any]]) -> None:
    """Writes the card of a folder of trials: one configuration per finished trial folder (`seed_<s>`), those of
    earlier runs into the same folder included."""
    trials: dict[int, ConfigFiles] = {}
    records = {}
    for folder in root.glob(f"{TRIAL_PREFIX}*"):
        settings = read_run_record(folder)
        shards = sorted(folder.glob("data/train-*.parquet"))
        if settings is None or not (folder / "README.md").exists():
            continue  # not a finished trial
        seed = int(settings["generation"]["seed"])
        trials[seed] = ConfigFiles.of_shards(folder.name, f"{folder.name}/data/train-*", shards)
        records[seed] = settings
    trials = dict(sorted(trials.items()))
    first = next(iter(trials))
    shard = next(Path(root, trials[first].name, "data").glob("train-*.parquet"))
    class_names = datasets.Features.from_arrow_schema(pq.read_schema(shard))["label"].names
    write_dataset_card(root, trials_card(public_settings(records[first]), class_names, trials))
    logger.info("%d trials: %s", len(trials), ", ".join(f"seed {seed}" for seed in trials))
