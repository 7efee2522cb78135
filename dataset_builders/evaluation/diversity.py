"""Diversity of an augmented dataset: CLIP-I ↓ and LPIPS ↑, the paper's Table 1, through the project's `evaluate`
modules (`scripts/metrics/clip_i`, `scripts/metrics/lpips_diversity`).

The paper does not say which pairs it compares, so both readings are reported:

    clip_i_to_source     = mean_i cos(CLIP(synthetic_i), CLIP(source_i))
    clip_i_within_class  = mean over classes of the mean pairwise cos(CLIP(·), CLIP(·)) among its synthetic images
    lpips_within_source  = mean over sources of the mean pairwise LPIPS among its synthetic images
    lpips_to_source      = mean_i LPIPS(synthetic_i, source_i)

The Table 1 columns are `clip_i_to_source` and `lpips_within_source` (the definitions the paper's text gives).
"""

import logging
from dataclasses import asdict
from pathlib import Path

import datasets
import torch

from pipeline_dalda.data_files import data_file

from .arguments import DiversityArguments


logger = logging.getLogger(__name__)

_COLUMNS = ["is_synthetic", "source_index", "label"]


def metric_module_path(name: str) -> Path:
    """
    The folder of the evaluate module `name`, for `evaluate.load(str(path))`: `scripts/metrics/<name>` in a checkout,
    `<sys.prefix>/share/dalda/metrics/<name>` in an installed dalda ([`pipeline_dalda.data_files.data_file`]).

    Args:
        name: the module's folder name, e.g. `"clip_i"` or `"lpips_diversity"`.
    """
    return data_file(f"scripts/metrics/{name}", f"metrics/{name}", f"evaluate module {name!r}")


def check_diversity_requirements(args: DiversityArguments) -> None:
    """Fails at once, before any classifier trains, when the diversity metrics could not run, saying what is missing
    and what to do: the `diversity` extra, the CLIP model of CLIP-I, or LPIPS's ImageNet backbone weights (which
    torchvision downloads once)."""
    try:
        import evaluate  # noqa: F401
        import lpips
    except ImportError as error:
        raise ValueError(f"The diversity metrics need the `diversity` extra ({error}): pip install 'dalda[diversity]'.")
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(args.diversity_clip_model)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"CLIP-I's model {args.diversity_clip_model!r} cannot be loaded ({error}); give a local copy with "
            "`diversity_clip_model`."
        ) from error
    if args.lpips_pretrained_backbone:
        try:
            lpips.LPIPS(net=args.lpips_net, pretrained=True, pnet_rand=False, verbose=False)
        except Exception as error:  # the download's failure: URLError, HTTPError, OSError, RuntimeError, ...
            raise ValueError(
                f"LPIPS needs the ImageNet weights of its {args.lpips_net!r} backbone, which torchvision downloads "
                f"once into {Path(torch.hub.get_dir(), 'checkpoints')} and could not ({type(error).__name__}: "
                f"{error}). Put the file there from a machine with network access, or pass "
                "`--no_lpips_pretrained_backbone` for a smoke test (its LPIPS values mean nothing)."
            ) from error


def compute_diversity(dataset: datasets.Dataset, args: DiversityArguments, device: str | torch.device = "cpu") -> dict:
    """
    CLIP-I and LPIPS diversity of an augmented dataset (the output of `dalda augment`).

    Each synthetic row is paired with the real row of its `source_index`; synthetic rows whose real row is absent are
    skipped and counted. Images go to the modules as their stored bytes, so nothing is decoded twice or re-encoded.

    Args:
        dataset: rows with `image`, `label`, `is_synthetic` and `source_index` (decoded images or not).
        args: the CLIP model, the LPIPS backbone and the batch size.
        device: where CLIP and LPIPS run.

    Returns:
        `dict` with `clip_i_to_source`, `clip_i_within_class`, `lpips_within_source`, `lpips_to_source` (floats; NaN
        where no group has two images), `num_synthetic` (the synthetic rows measured), `num_sources` (their real
        images), `num_skipped_synthetic`, `num_lpips_pairs` and `settings` (the arguments used).
    """
    try:
        import evaluate
    except ImportError as error:
        raise ImportError(
            "The diversity metrics need the `diversity` extra: pip install 'dalda[diversity]'."
        ) from error

    # 1. Pair each synthetic row with its source's real row
    missing = sorted({"image", *_COLUMNS} - set(dataset.column_names))
    if missing:
        raise ValueError(
            f"The dataset lacks the column(s) {missing}; `compute_diversity` needs a `dalda augment` output."
        )
    columns = dataset.select_columns(_COLUMNS).to_dict()
    rows = list(zip(columns["is_synthetic"], columns["source_index"]))
    real_row: dict[int, int] = {}
    for row, (is_synthetic, source) in enumerate(rows):
        if not is_synthetic:
            if source in real_row:
                raise ValueError(f"Two real rows ({real_row[source]} and {row}) have source_index {source}.")
            real_row[source] = row
    synthetic_rows = [row for row, (is_synthetic, source) in enumerate(rows) if is_synthetic and source in real_row]
    num_skipped = sum(is_synthetic for is_synthetic, _ in rows) - len(synthetic_rows)
    if num_skipped:
        logger.warning("Skipped %d synthetic rows whose source real row is not in the dataset.", num_skipped)
    if not synthetic_rows:
        raise ValueError("The dataset has no synthetic row whose source real row is in it; nothing to measure.")
    sources = [columns["source_index"][row] for row in synthetic_rows]
    labels = [columns["label"][row] for row in synthetic_rows]

    # 2. The images as stored ({"bytes", "path"}): the modules decode each once
    undecoded = dataset.cast_column("image", datasets.Image(decode=False))
    synthetic_images = list(undecoded.select(synthetic_rows)["image"])
    source_images = list(undecoded.select([real_row[source] for source in sources])["image"])
    logger.info("Diversity of %d synthetic images from %d real images.", len(synthetic_rows), len(set(sources)))

    # 3. CLIP-I, to the source and within each class
    clip_i = evaluate.load(str(metric_module_path("clip_i")), keep_in_memory=True).compute(
        predictions=synthetic_images,
        references=source_images,
        groups=labels,
        model_name_or_path=args.diversity_clip_model,
        batch_size=args.diversity_batch_size,
        device=str(device),
    )

    # 4. LPIPS, within each source and to the source
    lpips = evaluate.load(str(metric_module_path("lpips_diversity")), keep_in_memory=True).compute(
        predictions=synthetic_images,
        groups=sources,
        source_images=source_images,
        net=args.lpips_net,
        pretrained_backbone=args.lpips_pretrained_backbone,
        batch_size=args.diversity_batch_size,
        device=str(device),
    )
    return {
        "clip_i_to_source": clip_i["clip_i"],
        "clip_i_within_class": clip_i["clip_i_within_group"],
        "lpips_within_source": lpips["lpips_diversity"],
        "lpips_to_source": lpips["lpips_to_source"],
        "num_synthetic": len(synthetic_rows),
        "num_sources": len(set(sources)),
        "num_skipped_synthetic": num_skipped,
        "num_lpips_pairs": lpips["num_pairs"],
        "settings": asdict(args),
    }


def diversity_table(rows: list[tuple[str, dict]]) -> str:
    """
    A markdown table in the layout of the paper's Table 1: method | CLIP-I ↓ | LPIPS ↑, with CLIP-I to the source
    and LPIPS within a source, 4 decimals.

    Args:
        rows: (method label, [`compute_diversity`] result) pairs, in table order.
    """
    lines = ["| method | CLIP-I ↓ | LPIPS ↑ |", "| --- | --- | --- |"]
    for label, result in rows:
        method = label.replace("|", "\\|")
        lines.append(f"| {method} | {result['clip_i_to_source']:.4f} | {result['lpips_within_source']:.4f} |")
    return "\n".join(lines)
