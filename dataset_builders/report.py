"""The end of a run: read back every shard, summarise it, draw the contact sheet and write the dataset card."""

import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageOps
import pyarrow.parquet as pq

from pipeline_dalda.prompts import PromptBank

from .hub_layout import WORK_DIR, output_features, shard_path, write_card, write_run_record
from .source import RealImages


logger = logging.getLogger(__name__)

_STAT_COLUMNS = ["label", "is_synthetic", "source_index", "ip_adapter_scale", "clip_score"]
_METHOD_NAMES = {"dalda": "DALDA", "real_guidance": "Real-Guidance"}  # as in the card's title, "<name>-augmented"


def _stats(values: np.ndarray) -> dict[str, float]:
    values = values[~np.isnan(values)]
    if values.size == 0:
        return {}
    return {key: round(float(fn(values)), 4) for key, fn in
            (("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max))}


def contact_sheet(groups: list[tuple[PIL.Image.Image, str, list[tuple[PIL.Image.Image, str]]]], thumb: int = 128):
    """One row per real image: the real image (class, CLIPScore), then its synthetic images (λ, if any)."""
    columns = 1 + max(len(synthetic) for _, _, synthetic in groups)
    caption = 18
    sheet = PIL.Image.new("RGB", (columns * (thumb + 4) + 4, len(groups) * (thumb + caption + 4) + 4), "white")
    draw = PIL.ImageDraw.Draw(sheet)
    for row, (real, real_caption, synthetic) in enumerate(groups):
        for column, (image, text) in enumerate([(real, real_caption)] + synthetic):
            x, y = 4 + column * (thumb + 4), 4 + row * (thumb + caption + 4)
            sheet.paste(PIL.ImageOps.pad(image.convert("RGB"), (thumb, thumb), color="white"), (x, y))
            draw.text((x + 2, y + thumb + 3), text, fill="black")
    return sheet


def _contact_sheet_groups(files: list[Path], class_names: list[str], rows: int) -> list:
    groups: dict[int, list] = {}
    for path in files:
        table = pq.read_table(path, columns=["image", "label", "is_synthetic", "source_index", "ip_adapter_scale", "clip_score"])
        for record in table.to_pylist():
            image = PIL.Image.open(io.BytesIO(record["image"]["bytes"]))
            group = groups.setdefault(record["source_index"], [None, "", []])
            if record["is_synthetic"]:
                scale = record["ip_adapter_scale"]
                group[2].append((image, f"lambda {scale:.2f}" if scale is not None else ""))
            else:
                score = record["clip_score"]
                name = class_names[record["label"]][:10]
                group[0], group[1] = image, name + (f"  CLIP {score:.2f}" if score is not None else "")
        if len(groups) >= rows:
            break
    return [tuple(group) for group in list(groups.values())[:rows] if group[0] is not None]


def finalize_output(
    output_dir: Path, real: RealImages, selected: list[int], settings: dict[str, Any], sheet_rows: int, count: int
) -> dict[str, Any]:
    files = [shard_path(output_dir, index, count) for index in range(count)]
    table = pq.read_table(files, columns=_STAT_COLUMNS) if files else None
    columns = table.to_pydict() if table is not None else {name: [] for name in _STAT_COLUMNS}
    synthetic = np.array(columns["is_synthetic"], dtype=bool)
    scales = np.array([np.nan if v is None else v for v in columns["ip_adapter_scale"]], dtype=float)[synthetic]
    scores = np.array([np.nan if v is None else v for v in columns["clip_score"]], dtype=float)[~synthetic]
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
    }
    if files and sheet_rows > 0:
        groups = _contact_sheet_groups(files, real.class_names, sheet_rows)
        if groups:
            contact_sheet(groups).save(output_dir / "contact_sheet.png")

    bank_metadata = {}
    if settings["generation"]["prompt_bank"]:
        bank_path = settings["generation"]["prompt_bank"]
        bank_metadata = {
            **PromptBank.load(bank_path).metadata.get("settings", {}),
            "file_sha256": settings["generation"]["prompt_bank_sha256"],
        }
    method = settings["generation"]["method"]
    header = {
        "pretty_name": f"{_METHOD_NAMES[method]}-augmented {settings['source']['dataset']}",
        "license": "other",
        "task_categories": ["image-classification"],
        "tags": ["synthetic", "data-augmentation", "dalda", "few-shot"]
        + (["real-guidance"] if method == "real_guidance" else []),
    }
    body = _card_body(settings, summary, skipped, unlabeled, real, selected, bank_metadata)
    write_card(output_dir, output_features(real.class_names), summary["rows"], header, body)
    write_run_record(output_dir, settings)
    logger.info("Summary: %s", json.dumps(summary))
    return summary


def _code(text: str) -> str:
    """`text` as Markdown code, or "none" for an empty string (an empty code span does not render)."""
    return f"`{text}`" if text else "none"


def _method_text(generation: dict[str, Any]) -> str:
    """The card's account of how the synthetic images were made."""
    if generation["method"] == "real_guidance":
        steps, strength = generation["num_inference_steps"], generation["real_guidance_strength"]
        return (
            "Real Guidance baseline: SD img2img from the real image, prompt 'a photo of a {class}', strength "
            f"{strength}, guidance {generation['guidance_scale']}; the real image is noised and denoised for "
            f"{int(steps * strength)} of {steps} DDIM steps. This is DA-Fusion's Real Guidance (Trabucco et al., "
            "2023), the first baseline of DALDA (Jung et al., ECCV 2024 workshop SyntheticData4CV, arXiv:2409.16949)."
        )
    return (
        "DALDA (Jung et al., ECCV 2024 workshop SyntheticData4CV, arXiv:2409.16949): Stable Diffusion with "
        "IP-Adapter, text prompts written per class, and an IP-Adapter weight λ per image drawn by Adaptive Guidance "
        "Scaling from the real image's CLIPScore."
    )


def _method_rows(generation: dict[str, Any], models: dict[str, Any], ags: dict[str, Any]) -> list[str]:
    """The settings table's rows for the IP-Adapter and AGS, which only DALDA uses."""
    if generation["method"] != "dalda":
        return []
    return [
        f"| IP-Adapter | `{models['ip_adapter']}`, "
        f"`{models['ip_adapter_subfolder']}/{models['ip_adapter_weight_name']}` |",
        f"| AGS | mode `{ags['mode']}`, α {ags['threshold']}, low [{ags['low_min']}, {ags['low_max']}], high "
        f"[{ags['high_min']}, {ags['high_max']}], σ "
        + (f"{ags['sigma']}" if ags["sigma"] is not None else f"{ags['sigma_per_shot']} · n") + " |",
    ]


def _card_body(settings, summary, skipped, unlabeled, real, selected, bank_metadata) -> str:
    source, generation, models, ags = settings["source"], settings["generation"], settings["models"], settings["ags"]
    prompts = (
        "the base prompt \"a photo of a {class}\"" if generation["base_prompt"] or generation["method"] != "dalda"
        else "a prompt bank: " + ", ".join(f"{key} `{value}`" for key, value in bank_metadata.items() if key in (
            "backend", "model", "base_url_host", "temperature", "top_p", "num_prompts", "seed", "file_sha256"))
    )
    by_class: dict[str, list[int]] = {}
    for index in selected:
        by_class.setdefault(real.class_names[real.labels[index]], []).append(index)
    lines = [
        f"# {_METHOD_NAMES[generation['method']]}-augmented `{source['dataset']}`",
        "",
        f"A few-shot split of `{source['dataset']}` augmented with synthetic images.",
        "",
        _method_text(generation),
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        "dataset = load_dataset(\"<this repository or folder>\", split=\"train\")",
        "real = dataset.filter(lambda row: not row[\"is_synthetic\"])",
        "```",
        "",
        "## How it was made",
        "",
        "| setting | value |",
        "| --- | --- |",
        f"| source dataset | `{source['dataset']}` (config `{source['dataset_config']}`, split `{source['split']}`, "
        f"revision `{source['dataset_revision']}`) |",
        f"| real images per class (n) | {source['num_shots']}"
        + (" (fewer where a class has fewer)" if source["allow_fewer_shots"] else "") + " |",
        f"| synthetic images per real image (M) | {generation['num_prompts']} |",
        f"| seed (selection, λ, images) | {generation['seed']} |",
        f"| Stable Diffusion | `{models['pretrained_model_name_or_path']}`, VAE `{models['vae'] or 'its own'}` |",
        f"| CLIPScore | `{models['clip_score_model'] or 'none'}`, {generation['clip_score_mode']} |",
        *_method_rows(generation, models, ags),
        f"| sampling | DDIM, {generation['num_inference_steps']} steps, guidance {generation['guidance_scale']} |",
        f"| prompts | {prompts}; prefix {_code(generation['prompt_prefix'])}, negative prompt "
        f"{_code(generation['negative_prompt'])} |",
        "",
        "## Contents",
        "",
        f"{summary['rows']} rows in one `train` split: {summary['real_images']} real images of "
        f"{summary['classes']} classes and {summary['synthetic_images']} synthetic ones. Columns: `image`, `label`, "
        "`is_synthetic`, `source_index` (the real image's row in the source split), `prompt`, `ip_adapter_scale` "
        "(λ), `clip_score` (of the real image), `seed` (of the synthetic image's initial noise).",
        "",
        "| | mean | std | min | max |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, key in (("λ (synthetic images)", "ip_adapter_scale"), ("CLIPScore (real images)", "clip_score")):
        stats = summary[key]
        lines.append(f"| {name} | " + " | ".join(str(stats.get(k, "–")) for k in ("mean", "std", "min", "max")) + " |")
    lines += ["", "## Skipped inputs", ""]
    if not skipped and not unlabeled:
        lines.append("None.")
    if unlabeled:
        lines.append(f"{len(unlabeled)} source rows have a label outside the class names and were not used "
                     f"(first rows: {unlabeled[:20]}).")
    if skipped:
        lines += [f"{len(skipped)} selected real images could not be used:", "", "| source row | reason |", "| --- | --- |"]
        lines += [f"| {item['source_index']} | {item['reason'].replace('|', '/')} |" for item in skipped]
    lines += [
        "",
        "## Few-shot selection",
        "",
        "Source rows of the real images, by class:",
        "",
        "```json",
        json.dumps(by_class, ensure_ascii=False),
        "```",
        "",
        "## License",
        "",
        "The real images keep the license of the source dataset. The synthetic images are derived from them and "
        "from Stable Diffusion, whose weights are under the CreativeML OpenRAIL-M license; check both before use.",
        "",
        "## Citation",
        "",
        "```bibtex",
        "@inproceedings{jung2024dalda,",
        "  title     = {DALDA: Data Augmentation Leveraging Diffusion Model and LLM with Adaptive Guidance Scaling},",
        "  author    = {Jung, Kyuheon and others},",
        "  booktitle = {ECCV 2024 Workshop on Synthetic Data for Computer Vision},",
        "  year      = {2024},",
        "  eprint    = {2409.16949},",
        "  archivePrefix = {arXiv}",
        "}",
        "```",
        "",
    ]
    return "\n".join(lines)
