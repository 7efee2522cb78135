"""Benchmark: one batched DALDAPipeline call on B items versus B one-item diffusers calls, side by side.

Both sides generate the same B images (the same prompts, real images, λ's and seeds); the script also reports how far
apart the two sides' images are. The real images are made at the generation size (`pipe.generation_size`): the
DALDAPipeline squashes a real image to that size before its image encoder and diffusers does not, so at any other
size the two sides encode different pixels and the difference printed would be the resize's, not the batching's.
Runs on the offline model kit, so it needs no download:

    python scripts/benchmark_batched_call.py --batch-size 8 --steps 10
"""

import argparse
import statistics
import tempfile
import time

import numpy as np
import PIL.Image
import torch
from diffusers import StableDiffusionPipeline

from pipeline_dalda import DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT_PREFIX, DALDAPipeline
from pipeline_dalda.testing import IP_ADAPTER_SUBFOLDER, IP_ADAPTER_WEIGHT_NAME, save_tiny_models


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8, help="items per batched call (B)")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps per image")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions of each side (median reported)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args()


def load(pipeline_class, paths, device):
    pipe = pipeline_class.from_pretrained(paths.stable_diffusion)
    pipe.load_ip_adapter(paths.ip_adapter, subfolder=IP_ADAPTER_SUBFOLDER, weight_name=IP_ADAPTER_WEIGHT_NAME)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def real_images(count: int, size: int) -> list[PIL.Image.Image]:
    """`count` random RGB images of `size` × `size` px: at the generation size, which both sides encode as they are."""
    rng = np.random.default_rng(0)
    return [PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def timed(run, repeats, device):
    run()  # warm-up
    seconds = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


def main():
    args = parse_args()
    prompts = [f"a photo of item {i}, seen from the side" for i in range(args.batch_size)]
    scales = np.linspace(0.0, 1.0, args.batch_size).tolist()
    seeds = list(range(args.batch_size))

    with tempfile.TemporaryDirectory() as kit:
        paths = save_tiny_models(kit)
        dalda = load(DALDAPipeline, paths, args.device)
        reference = load(StableDiffusionPipeline, paths, args.device)
        images = real_images(args.batch_size, dalda.generation_size)

        def batched():
            return dalda(
                prompts,
                ip_adapter_image=images,
                ip_adapter_scale=scales,
                num_inference_steps=args.steps,
                generator=[torch.Generator().manual_seed(seed) for seed in seeds],
                output_type="np",
            ).images

        def one_at_a_time():
            outputs = []
            for prompt, image, scale, seed in zip(prompts, images, scales, seeds):
                reference.set_ip_adapter_scale(scale)
                output = reference(
                    DEFAULT_PROMPT_PREFIX + prompt,
                    negative_prompt=DEFAULT_NEGATIVE_PROMPT,
                    ip_adapter_image=image,
                    num_inference_steps=args.steps,
                    generator=torch.Generator().manual_seed(seed),
                    output_type="np",
                )
                outputs.append(output.images[0])
            return np.stack(outputs)

        batched_seconds, batched_images = timed(batched, args.repeats, args.device)
        single_seconds, single_images = timed(one_at_a_time, args.repeats, args.device)

    print(
        f"device: {args.device}, torch threads: {torch.get_num_threads()}, B={args.batch_size}, steps={args.steps}, "
        f"real images {images[0].width} × {images[0].height} px (the generation size)"
    )
    print(f"one batched DALDAPipeline call on {args.batch_size} items: {batched_seconds:.3f} s")
    print(f"{args.batch_size} one-item diffusers calls:               {single_seconds:.3f} s")
    print(f"speed-up (one-item calls / batched call): {single_seconds / batched_seconds:.2f}x")
    print(f"max abs pixel difference, batched vs one-item: {np.abs(batched_images - single_images).max():.2e}")


if __name__ == "__main__":
    main()
