"""Benchmark: `dalda augment`'s generation (IP-Adapter embedding computed once per real image, items batched across
real images) versus generating one synthetic image at a time, side by side on the same items.

Runs on the offline model kit, so it needs no download:

    python scripts/benchmark_augment.py --classes 4 --shots 2 --prompts 4 --batch-size 8 --steps 10
"""

import argparse
import resource
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import torch
from tqdm.auto import tqdm

from dataset_builders.arguments import AugmentArguments, SourceArguments
from dataset_builders.augment import DatasetAugmenter, class_prompts, score_real_images
from dataset_builders.source import load_real_images
from pipeline_dalda import AdaptiveGuidanceScaling
from pipeline_dalda.arguments import ModelArguments
from pipeline_dalda.images import load_image
from pipeline_dalda.loading import load_dalda_pipeline
from pipeline_dalda.prompts import PromptArguments, generate_prompt_bank
from pipeline_dalda.testing import IP_ADAPTER_WEIGHT_NAME, save_tiny_models


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--shots", type=int, default=2, help="real images per class (n)")
    parser.add_argument("--prompts", type=int, default=4, help="synthetic images per real image (M)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    return parser.parse_args()


def peak_memory_mib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main():
    args = parse_args()
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        kit = save_tiny_models(work / "models")
        names = [f"class {index}" for index in range(args.classes)]
        rng = np.random.default_rng(0)
        images = [PIL.Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)) for _ in names * args.shots]
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
        labels = [index % args.classes for index in range(len(images))]
        datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).save_to_disk(work / "data")
        generate_prompt_bank(PromptArguments(output=str(work / "bank.json"), num_prompts=args.prompts), names)

        source = SourceArguments(dataset=str(work / "data"), num_shots=args.shots)
        augment = AugmentArguments(
            output_dir=str(work / "out"), prompt_bank=str(work / "bank.json"), num_prompts=args.prompts,
            batch_size=args.batch_size, num_inference_steps=args.steps,
        )
        models = ModelArguments(
            pretrained_model_name_or_path=str(kit.stable_diffusion), vae="", ip_adapter=str(kit.ip_adapter),
            ip_adapter_weight_name=IP_ADAPTER_WEIGHT_NAME, clip_score_model=str(kit.clip_scorer),
        )
        device = str(models.resolved_device())
        pipe = load_dalda_pipeline(models)
        pipe.set_progress_bar_config(disable=True)
        real = load_real_images(source)
        prompts = class_prompts(augment, real.class_names)
        rows = real.dataset.add_column("source_index", list(range(len(real.dataset))))[:]
        clip_scores = score_real_images(pipe, real, list(range(len(images))), source, augment)
        total = len(images) * args.prompts
        ags = AdaptiveGuidanceScaling()

        augmenter = DatasetAugmenter(pipe, real, prompts, source, augment, ags, clip_scores, tqdm(disable=True))
        start = time.perf_counter()
        batched_rows = augmenter._augment_batch(rows, skipped=[])
        batched_seconds = time.perf_counter() - start
        batched_peak = peak_memory_mib(device)

        synthetic = [i for i, is_synthetic in enumerate(batched_rows["is_synthetic"]) if is_synthetic]
        start = time.perf_counter()
        for i in synthetic:
            source_index = batched_rows["source_index"][i]
            real_image = load_image(rows["image"][source_index])
            image = pipe(
                batched_rows["prompt"][i],
                ip_adapter_image=real_image,
                ip_adapter_scale=batched_rows["ip_adapter_scale"][i],
                prompt_prefix=augment.prompt_prefix,
                num_inference_steps=args.steps,
                generator=torch.Generator().manual_seed(batched_rows["seed"][i]),
            ).images[0]
            image.resize(real_image.size, PIL.Image.BILINEAR)
        single_seconds = time.perf_counter() - start

    print(f"device: {device}, torch threads: {torch.get_num_threads()}, {total} synthetic images, "
          f"batch size {args.batch_size}, {args.steps} steps")
    print(f"embedding reuse + cross-image batching: {total / batched_seconds:.2f} images/s ({batched_seconds:.2f} s)")
    print(f"one image at a time:                    {total / single_seconds:.2f} images/s ({single_seconds:.2f} s)")
    print(f"speed-up: {single_seconds / batched_seconds:.2f}x")
    print(f"peak memory after the batched run: {batched_peak:.0f} MiB ({'GPU allocated' if 'cuda' in device else 'RSS'})")


if __name__ == "__main__":
    main()
