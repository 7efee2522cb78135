"""Benchmark: `dalda evaluate`'s cached path (frozen-backbone features computed once per image and view) against the
uncached path (the backbone run on augmented pixels at every training step, the released code's data path), side by
side in one run on the same data, for the paper's schedule (50 epochs × 200 iterations × batch 32) and 3 classifiers,
real-only and augmented: 6 trainings.

Part 1, speed, with the full-size architectures built from their configs with random weights (nothing downloaded):
CLIP ViT-B/16 and ResNet-50. The cached path runs whole, from a cold cache. The uncached path runs the same command
twice with a short schedule (1 epoch of K and 2K iterations); the difference gives the time per training step, and
the full schedule's time is projected from it (`--uncached-iterations 0` runs the whole uncached schedule instead:
hours on a GPU, days on a CPU). Each measurement runs in its own process, which also reports its peak memory.

Part 2, accuracy, on the offline fixture (the data kit's colour classes in three trials, the model kit's tiny
backbones): both paths whole, on one schedule, with their balanced accuracies; and, for the tiny ResNet, the frozen
(eval-mode) probe against the paper's batch-norm mode (`--batch_norm paper`).

Part 3, heads: the linear heads of 3 trials × 2 arms trained as one batched computation (`train_linear_heads`)
against the per-trial loop (one `torch.nn.Linear` per trial and arm, trained by autograd one after another, as
`dalda evaluate` did before), on cached features of the paper's size (ViT-B/16's 512 features, 37 classes, 1 shot and
M = 10, 62 views), side by side in interleaved rounds (A B B A ...): the median ratio, its spread, and how far any
head's loss moved.

    python scripts/benchmark_evaluate.py                       # every part, sizes chosen for the device
    python scripts/benchmark_evaluate.py --part speed --classes 10 --test-per-class 10 --uncached-iterations 8
    python scripts/benchmark_evaluate.py --part heads --head-epochs 10 --rounds 4
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
    parser.add_argument("--part", choices=["speed", "accuracy", "heads", "all"], default="all")
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
    parser.add_argument("--head-epochs", type=int, default=50, help="epochs of part 3 (200 iterations of 32 each)")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds of part 3 (A B, then B A, ...)")
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
            classifier_seeds=[0, 1, 2],
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
    from dataset_builders.testing import save_colour_dataset, write_colour_trials
    from pipeline_dalda.testing import save_tiny_clip_scorer, save_tiny_resnet

    gpu = args.device.startswith("cuda")
    epochs = args.accuracy_epochs or (50 if gpu else 10)
    source = work / "fixture" / "source"
    labels, images = save_colour_dataset(source, images_per_class=100)
    dataset = write_colour_trials(work / "fixture" / "augmented", source, labels, images, [0, 1, 2])
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
        arms = {
            "cached": {"cache_dir": str(work / "acc-cache")},
            "uncached": {"feature_cache": False},
        }
        if name == "resnet":
            arms["paper batch norm"] = {"batch_norm": "paper"}
        runs = {
            arm: run_child({**common, **overrides, "output_dir": str(work / f"acc-{name}-{arm.replace(' ', '-')}")})
            for arm, overrides in arms.items()
        }
        row = {"backbone": f"tiny {name}", "epochs": epochs, **{arm: run["balanced_accuracy"] for arm, run in runs.items()}}
        row["seconds"] = {arm: run["seconds"] for arm, run in runs.items()}
        row["largest_gap_points"] = {
            arm: 100 * max(abs(runs["cached"]["balanced_accuracy"][a] - runs[arm]["balanced_accuracy"][a])
                           for a in ("augmented", "real_only"))
            for arm in runs if arm != "cached"
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def heads(args) -> dict:
    """Part 3: batched heads against one training per head, interleaved; see the module docstring."""
    from dataset_builders.evaluation.backbones import CLIP_RECIPE
    from dataset_builders.evaluation.training import (
        CachedFeatures,
        LabelledFeatures,
        StackedLinearHeads,
        TrainingPool,
        TrainingSchedule,
        draw_training_batches,
        held_out_scorer,
        train_linear_heads,
    )

    rng = np.random.default_rng(0)
    classes, dim, views, tests = 37, 512, 62, 50
    device = torch.device(args.device)
    pool = TrainingPool.from_groups(list(range(classes)), [10] * classes)
    trials = [torch.from_numpy(rng.normal(size=(len(pool.labels), views, dim)).astype(np.float32)) for _ in range(3)]
    table = CachedFeatures(torch.cat(trials), device)
    test = LabelledFeatures(
        torch.from_numpy(rng.normal(size=(classes * tests, dim)).astype(np.float32)), np.repeat(np.arange(classes), tests)
    ).to(device)
    schedule = TrainingSchedule(args.head_epochs, 200, 32)
    tasks = [(trial, p) for trial in range(3) for p in (0.5, 0.0)]  # (trial, synthetic probability)
    draws = [draw_training_batches(pool, schedule, trial, p) for trial, p in tasks]
    offsets = [trial * len(pool.labels) for trial, _ in tasks]

    def initial(seed):
        torch.manual_seed(seed)
        return torch.nn.Linear(dim, classes).to(device)

    def loop():
        """The per-trial loop: one head after another, `Linear` + cross-entropy + autograd + AdamW at every step."""
        histories = []
        for (trial, _), d, offset in zip(tasks, draws, offsets):
            head = initial(trial)
            optimizer = torch.optim.AdamW(head.parameters(), lr=CLIP_RECIPE.learning_rate,
                                          weight_decay=CLIP_RECIPE.weight_decay)
            items = torch.as_tensor(d.items + offset, device=device)
            grid = torch.as_tensor(d.grid, device=device)
            labels = torch.as_tensor(pool.labels, device=device)[torch.as_tensor(d.items, device=device)]
            history = []
            for epoch in range(schedule.epochs):
                losses = torch.zeros((), device=device)
                for index in range(schedule.iterations_per_epoch):
                    features = table.table.view(-1, views, dim)[items[epoch, index], grid[epoch, index]]
                    loss = torch.nn.functional.cross_entropy(head(features), labels[epoch, index])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    losses += loss.detach()
                accuracy, _ = test.scores(head)
                history.append({"train_loss": float(losses) / schedule.iterations_per_epoch, "accuracy": accuracy})
            histories.append(history)
        return histories

    def batched():
        return train_linear_heads(
            StackedLinearHeads([initial(trial) for trial, _ in tasks]), CLIP_RECIPE, table, draws,
            [pool.labels] * len(tasks), held_out_scorer([test] * len(tasks), [None] * len(tasks)), offsets=offsets,
        )

    def timed(function):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        histories = function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, histories

    seconds = {"loop": [], "batched": []}
    gap = 0.0
    for round_index in range(args.rounds):
        order = ("loop", "batched") if round_index % 2 == 0 else ("batched", "loop")
        histories = {}
        for arm in order:
            elapsed, histories[arm] = timed(loop if arm == "loop" else batched)
            seconds[arm].append(elapsed)
        for one, other in zip(histories["loop"], histories["batched"]):
            gap = max(gap, max(abs(a["train_loss"] - b["train_loss"]) for a, b in zip(one, other)))
        print(json.dumps({"round": round_index, **{arm: values[-1] for arm, values in seconds.items()}}), flush=True)
    ratios = np.array(seconds["loop"]) / np.array(seconds["batched"])
    return {
        "heads": len(tasks),
        "steps_per_head": schedule.epochs * schedule.iterations_per_epoch,
        "loop_seconds": float(np.median(seconds["loop"])),
        "batched_seconds": float(np.median(seconds["batched"])),
        "ratio_median": float(np.median(ratios)),
        "ratio_min": float(ratios.min()),
        "ratio_max": float(ratios.max()),
        "largest_loss_gap": gap,
    }


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
        speed_rows = speed(args, work) if args.part in ("speed", "all") else []
        accuracy_rows = accuracy(args, work) if args.part in ("accuracy", "all") else []
    head_figures = heads(args) if args.part in ("heads", "all") else None
    if speed_rows:
        print(f"\nSpeed: 3 classifiers × (real-only + augmented), 50 epochs × 200 iterations × 32, on {device}")
        print("| backbone | cached (s) | uncached (s) | speed-up | peak cached | peak uncached |")
        print("| --- | --- | --- | --- | --- | --- |")
    for row in speed_rows:
        projected = " (projected)" if row["uncached_projected"] else ""
        print(
            f"| {row['backbone']} | {row['cached_seconds']:.1f} | {row['uncached_seconds']:.0f}{projected} | "
            f"{row['speedup']:.0f}× | {row['cached_peak']} | {row['uncached_peak']} |"
        )
    if accuracy_rows:
        print(f"\nAccuracy on the offline fixture (balanced accuracy, mean of 3 trials), on {device}")
        print("| backbone | epochs | path | augmented | real only | largest gap to cached (points) | seconds |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for row in accuracy_rows:
            for arm, seconds in row["seconds"].items():
                gap = row["largest_gap_points"].get(arm)
                print(
                    f"| {row['backbone']} | {row['epochs']} | {arm} | {row[arm]['augmented']:.4f} | "
                    f"{row[arm]['real_only']:.4f} | {'–' if gap is None else f'{gap:.2f}'} | {seconds:.1f} |"
                )
    if head_figures:
        figures = head_figures
        print(
            f"\nHeads: {figures['heads']} heads (3 trials × 2 arms) × {figures['steps_per_head']} steps, cached "
            f"features, on {device}, {args.rounds} interleaved rounds"
        )
        print("| per-head loop (s) | batched (s) | ratio, median [min, max] | largest loss gap |")
        print("| --- | --- | --- | --- |")
        print(
            f"| {figures['loop_seconds']:.1f} | {figures['batched_seconds']:.1f} | {figures['ratio_median']:.2f}× "
            f"[{figures['ratio_min']:.2f}, {figures['ratio_max']:.2f}] | {figures['largest_loss_gap']:.1e} |"
        )


if __name__ == "__main__":
    main()
