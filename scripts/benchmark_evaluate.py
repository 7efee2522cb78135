"""Benchmark: `dalda evaluate`'s cached path (frozen-backbone features computed once per image and view) against the
uncached path (the backbone run on augmented pixels at every training step, as the released code does), side by
side in one run on the same data, for the paper's schedule (50 epochs × 200 iterations × batch 32) and 3 seeds,
real-only and augmented: 6 trainings.

Part 1, speed, with the full-size architectures built from their configs with random weights (nothing downloaded):
CLIP ViT-B/16 and ResNet-50. The cached path runs whole, from a cold cache. The uncached path runs the same command
twice with a short schedule (1 epoch of K and 2K iterations); the difference gives the time per training step, and
the full schedule's time is projected from it (`--uncached-iterations 0` runs the whole uncached schedule instead:
hours on a GPU, days on a CPU). Each measurement runs in its own process, which also reports its peak memory.

Part 2, accuracy, on the offline fixture (the data kit's colour classes, the model kit's tiny backbones): both paths
whole, on one schedule, with their balanced accuracies.

    python scripts/benchmark_evaluate.py                       # both parts, sizes chosen for the device
    python scripts/benchmark_evaluate.py --part speed --classes 10 --test-per-class 10 --uncached-iterations 8
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["speed", "accuracy", "both"], default="both")
    parser.add_argument("--backbones", nargs="+", choices=["clip", "resnet"], default=["clip", "resnet"])
    parser.add_argument("--classes", type=int, default=10, help="classes of the speed dataset (1 shot each)")
    parser.add_argument("--synthetic-per-real", type=int, default=10, help="M")
    parser.add_argument("--test-per-class", type=int, default=20)
    parser.add_argument(
        "--uncached-iterations",
        type=int,
        default=None,
        help="K for the projection (default: 20 on a GPU, 4 on a CPU); 0 runs the whole schedule",
    )
    parser.add_argument(
        "--accuracy-epochs",
        type=int,
        default=None,
        help="epochs of part 2 (default: the paper's 50 on a GPU, 10 on a CPU)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args()


def build_full_size_backbones(folder: Path) -> dict[str, Path]:
    """ViT-B/16 CLIP (the model kit's full-size scorer) and ResNet-50 from their configs, random weights, saved with
    their processors."""
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetModel

    from pipeline_dalda.testing import SD15, save_tiny_clip_scorer

    clip = save_tiny_clip_scorer(folder / "clip-vit-b-16", architecture=SD15)
    paths = {"clip": clip, "resnet": folder / "resnet-50"}
    torch.manual_seed(0)
    ResNetModel(ResNetConfig()).save_pretrained(paths["resnet"])  # the default config is ResNet-50
    ConvNextImageProcessor(crop_pct=1.0).save_pretrained(paths["resnet"])
    return paths


def build_dataset(folder: Path, classes: int, synthetic_per_real: int, test_per_class: int, size: int) -> Path:
    """A source split and a 1-shot augmented dataset of it, as `dalda augment` lays them out."""
    import datasets
    import PIL.Image

    from dataset_builders.testing import augment_run_settings, write_augmented_dataset

    rng = np.random.default_rng(0)
    names = [f"class {index}" for index in range(classes)]
    labels = [index % classes for index in range(classes * (1 + test_per_class))]

    def image():
        return PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))

    images = [image() for _ in labels]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).save_to_disk(folder / "source")
    shots = list(range(classes))  # the first row of each class
    reals = [(row, images[row], labels[row]) for row in shots]
    synthetic = {row: [(image(), labels[row]) for _ in range(synthetic_per_real)] for row in shots}
    settings = augment_run_settings(folder / "source", num_shots=1)
    return write_augmented_dataset(folder / "augmented", reals, synthetic, settings, class_names=names)


def run_child(arguments: dict) -> dict:
    """Runs one `dalda evaluate` in a fresh process: its wall time, peak memory and results."""
    command = [sys.executable, __file__, "--child", json.dumps(arguments)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def child(arguments: dict) -> None:
    from dataset_builders.evaluation.arguments import EvaluateArguments
    from dataset_builders.evaluation.run import evaluate_augmented_dataset

    device = arguments.get("device", "cpu")
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    results = evaluate_augmented_dataset(EvaluateArguments(**arguments))
    elapsed = time.perf_counter() - start
    peak = {"host_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.startswith("cuda"):
        peak["gpu_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    figures = {arm: results["aggregate"][arm]["balanced_accuracy"]["mean"] for arm in ("augmented", "real_only")}
    print(json.dumps({"seconds": elapsed, "peak": peak, "balanced_accuracy": figures}))


def speed(args, work: Path) -> list[dict]:
    backbones = build_full_size_backbones(work / "models")
    dataset = build_dataset(work / "data", args.classes, args.synthetic_per_real, args.test_per_class, size=256)
    gpu = args.device.startswith("cuda")
    k = args.uncached_iterations if args.uncached_iterations is not None else (20 if gpu else 4)
    rows = []
    for name in args.backbones:
        common = dict(
            dataset=str(dataset),
            backbone=str(backbones[name]),
            device=args.device,
            seeds=[0, 1, 2],
            feature_batch_size=128 if gpu else 32,
            num_workers=8 if gpu else 2,
        )
        cached = run_child(
            {**common, "output_dir": str(work / f"{name}-cached"), "cache_dir": str(work / f"cache-{name}")}
        )
        schedule_steps = 6 * 50 * 200
        if k == 0:
            uncached = run_child({**common, "output_dir": str(work / f"{name}-uncached"), "feature_cache": False})
            projected, step = uncached["seconds"], None
        else:
            short = {**common, "feature_cache": False, "epochs": 1}
            one = run_child({**short, "output_dir": str(work / f"{name}-u1"), "iterations_per_epoch": k})
            two = run_child({**short, "output_dir": str(work / f"{name}-u2"), "iterations_per_epoch": 2 * k})
            step = (two["seconds"] - one["seconds"]) / (6 * k)
            projected = one["seconds"] + (schedule_steps - 6 * k) * step
            uncached = two
        rows.append(
            {
                "backbone": name,
                "cached_seconds": cached["seconds"],
                "uncached_seconds": projected,
                "uncached_projected": k != 0,
                "uncached_seconds_per_step": step,
                "speedup": projected / cached["seconds"],
                "cached_peak": cached["peak"],
                "uncached_peak": uncached["peak"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def accuracy(args, work: Path) -> list[dict]:
    from dataset_builders.source import select_few_shot
    from dataset_builders.testing import (
        COLOURS,
        augment_run_settings,
        colour_images,
        save_colour_dataset,
        write_augmented_dataset,
    )
    from pipeline_dalda.testing import save_tiny_clip_scorer, save_tiny_resnet

    gpu = args.device.startswith("cuda")
    epochs = args.accuracy_epochs or (50 if gpu else 10)
    labels, images = save_colour_dataset(work / "fixture" / "source", images_per_class=100)
    shots = select_few_shot(labels, COLOURS, 1, seed=0)
    extra = np.random.default_rng(100)
    synthetic = {row: [(image, labels[row]) for image in colour_images(extra, labels[row], 12)] for row in shots}
    dataset = write_augmented_dataset(
        work / "fixture" / "augmented",
        [(r, images[r], labels[r]) for r in shots],
        synthetic,
        augment_run_settings(work / "fixture" / "source", 1),
    )
    models = {"clip": save_tiny_clip_scorer(work / "tiny-clip"), "resnet": save_tiny_resnet(work / "tiny-resnet")}
    rows = []
    for name in args.backbones:
        common = dict(
            dataset=str(dataset),
            backbone=str(models[name]),
            device=args.device,
            epochs=epochs,
            image_size=32,
            learning_rate=0.01,
            num_workers=2,
        )
        cached = run_child(
            {**common, "output_dir": str(work / f"acc-{name}-cached"), "cache_dir": str(work / "acc-cache")}
        )
        uncached = run_child({**common, "output_dir": str(work / f"acc-{name}-uncached"), "feature_cache": False})
        row = {
            "backbone": f"tiny {name}",
            "epochs": epochs,
            "cached": cached["balanced_accuracy"],
            "uncached": uncached["balanced_accuracy"],
            "cached_seconds": cached["seconds"],
            "uncached_seconds": uncached["seconds"],
        }
        row["largest_gap_points"] = 100 * max(
            abs(cached["balanced_accuracy"][arm] - uncached["balanced_accuracy"][arm])
            for arm in ("augmented", "real_only")
        )
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main():
    args = parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    device = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(f"device: {device}", flush=True)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        speed_rows = speed(args, work) if args.part in ("speed", "both") else []
        accuracy_rows = accuracy(args, work) if args.part in ("accuracy", "both") else []
    print(f"\nSpeed: 3 seeds × (real-only + augmented), 50 epochs × 200 iterations × 32, on {device}")
    print("| backbone | cached (s) | uncached (s) | speed-up | peak cached | peak uncached |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in speed_rows:
        projected = " (projected)" if row["uncached_projected"] else ""
        print(
            f"| {row['backbone']} | {row['cached_seconds']:.1f} | {row['uncached_seconds']:.0f}{projected} | "
            f"{row['speedup']:.0f}× | {row['cached_peak']} | {row['uncached_peak']} |"
        )
    if accuracy_rows:
        print(f"\nAccuracy on the offline fixture (balanced accuracy, mean of 3 seeds), on {device}")
        print("| backbone | epochs | cached aug / real | uncached aug / real | largest gap (points) |")
        print("| --- | --- | --- | --- | --- |")
        for row in accuracy_rows:
            print(
                f"| {row['backbone']} | {row['epochs']} | {row['cached']['augmented']:.4f} / "
                f"{row['cached']['real_only']:.4f} | {row['uncached']['augmented']:.4f} / "
                f"{row['uncached']['real_only']:.4f} | {row['largest_gap_points']:.2f} |"
            )


if __name__ == "__main__":
    main()
