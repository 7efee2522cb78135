"""Benchmark: the step time of DA-Fusion's per-class textual inversion (`dalda textual-inversion`) at Stable Diffusion
1.5's size, and the GPU hours the paper's DA-Fusion baseline needs, projected from it.

Builds SD 1.5's UNet (860 M parameters), VAE and CLIP ViT-L/14 text encoder from their configs with random weights
(the offline kit's `SD15` architecture; nothing is downloaded), then, side by side in one run on the same shot:

- times training steps of [`TextualInversionTrainer`] (batch 4 at 512 px by default: DA-Fusion's), the median over
  `--steps` steps after one warm-up step (a step is timed from one UNet call to the next);
- times one VAE encoding of a batch: the work `fine_tune.py` adds to every step by encoding each batch again, which
  the trainer does once per shot and flip (its posterior is kept and sampled afresh each step);
- counts the FLOPs of one step (forward and backward, `torch.utils.flop_counter`) and of the VAE encoding;

and projects the GPU hours of the paper's protocol — one token per class, 1,000 steps each, for every trial (3
seeds: each trial draws its own shots) of Oxford-IIIT Pets (37 classes), Caltech-101 (101) and Flowers102 (102) —
from the FLOPs and an assumed GPU throughput: its dense half-precision peak times an assumed model FLOPs utilisation
(`--mfu`: 15 % and 35 % by default, a cautious and a good figure for mixed-precision Stable Diffusion training with
fused attention at batch 4). The ratio GPU/CPU is then the assumed GPU FLOP/s over the FLOP/s this CPU achieved; on a
GPU the script measures that GPU instead of assuming it.

    python scripts/benchmark_textual_inversion.py                          # SD 1.5 size, batch 4, 512 px, 3 steps
    python scripts/benchmark_textual_inversion.py --architecture tiny      # the offline kit, in seconds
"""

import argparse
import dataclasses
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import PIL.Image
import torch
from diffusers import StableDiffusionPipeline
from torch.utils.flop_counter import FlopCounterMode

from pipeline_dalda.testing import SD15, TINY, save_tiny_stable_diffusion
from pipeline_dalda.textual_inversion import TextualInversionTrainer
from pipeline_dalda.textual_inversion_arguments import TextualInversionArguments


DATASETS = {"Oxford-IIIT Pets": 37, "Caltech-101": 101, "Flowers102": 102}
"""Classes of the paper's datasets (Caltech-101 without its background class; DESIGN §2)."""
TRIALS = 3
STEPS_PER_CLASS = 1000
GPU_PEAK_TFLOPS = {"A100": 312.0, "H100": 989.4}
"""Dense float16 tensor-core peaks (TFLOP/s); an H200 has the H100's compute."""


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architecture", choices=["sd15", "tiny"], default="sd15")
    parser.add_argument("--resolution", type=int, default=None, help="default: 512 (sd15), 64 (tiny)")
    parser.add_argument("--batch-size", type=int, default=4, help="DA-Fusion: 4")
    parser.add_argument("--steps", type=int, default=3, help="timed steps, after one warm-up step")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--mfu", type=float, nargs="+", default=[0.15, 0.35],
                        help="assumed GPU model FLOPs utilisations, each projected")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--models-dir", help="keep the random models here and reuse them (about 4 GB at sd15)")
    return parser.parse_args()


def load_components(architecture, models_dir: Path, dtype: torch.dtype, device: torch.device):
    """SD 1.x with random weights, saved by the offline kit (once: `--models-dir` keeps them) and loaded as users load
    a model.

    The kit's tokenizer is byte-level (514 tokens), so the input embedding has 515 rows where CLIP's has 49,409: the
    AdamW update over the whole matrix (38 M numbers in DA-Fusion's way) is left out, a few GFLOPs against the
    step's TFLOPs."""
    if not (models_dir / "model_index.json").exists():
        print(f"building the models in {models_dir} ...", file=sys.stderr, flush=True)
        save_tiny_stable_diffusion(models_dir, architecture=architecture)
    pipe = StableDiffusionPipeline.from_pretrained(models_dir, dtype=dtype, safety_checker=None)
    return pipe.to(device)


def timed_steps(components, args: TextualInversionArguments, shot: PIL.Image.Image) -> list[float]:
    """Seconds of each training step: from one UNet call to the next (the last one to the end of training)."""
    starts = []

    def mark(module, inputs):
        if components.unet.device.type == "cuda":
            torch.cuda.synchronize()
        starts.append(time.perf_counter())

    hook = components.unet.register_forward_pre_hook(mark)
    try:
        TextualInversionTrainer(components, args).train("<shot>", [shot], seed=0, show_progress=False)
        if components.unet.device.type == "cuda":
            torch.cuda.synchronize()
        end = time.perf_counter()
    finally:
        hook.remove()
    return [later - earlier for earlier, later in zip(starts, starts[1:] + [end])]


def vae_encode_seconds_and_flops(components, batch_size: int, resolution: int) -> tuple[float, float]:
    """One VAE encoding of a batch (what `fine_tune.py` adds to every step): seconds (the faster of two) and FLOPs."""
    pixels = torch.rand(batch_size, 3, resolution, resolution, device=components.vae.device) * 2 - 1
    seconds = []
    with torch.no_grad():
        for _ in range(2):
            start = time.perf_counter()
            components.vae.encode(pixels.to(components.vae.dtype)).latent_dist.sample()
            if pixels.device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
        counter = FlopCounterMode(display=False)
        with counter:
            components.vae.encode(pixels.to(components.vae.dtype)).latent_dist.sample()
    return min(seconds), counter.get_total_flops()


def step_flops(components, args: TextualInversionArguments, shot: PIL.Image.Image) -> float:
    """FLOPs of one training step (text encoder, UNet forward and backward, optimiser), without the one-off VAE
    encoding of the shot and its flip."""
    one_step = dataclasses.replace(args, max_train_steps=1)
    counter = FlopCounterMode(display=False)
    with counter:
        TextualInversionTrainer(components, one_step).train("<shot>", [shot], seed=0, show_progress=False)
    with FlopCounterMode(display=False) as posterior, torch.no_grad():
        pixels = torch.zeros(2, 3, args.resolution, args.resolution, device=components.vae.device)
        components.vae.encode(pixels.to(components.vae.dtype))
    return counter.get_total_flops() - posterior.get_total_flops()


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def main():
    options = parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)
    architecture = SD15 if options.architecture == "sd15" else TINY
    resolution = options.resolution or (512 if options.architecture == "sd15" else 64)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    with tempfile.TemporaryDirectory() as work:
        models_dir = Path(options.models_dir or work) / f"{options.architecture}-stable-diffusion"
        components = load_components(architecture, models_dir, dtype, device)
        measure(components, options, resolution, device, dtype)


def measure(components, options, resolution: int, device: torch.device, dtype: torch.dtype) -> None:
    initializer = "the" if len(components.tokenizer.encode("the", add_special_tokens=False)) == 1 else "a"
    args = TextualInversionArguments(
        resolution=resolution,
        train_batch_size=options.batch_size,
        max_train_steps=options.steps + 1,
        initializer_token=initializer,
        gradient_checkpointing=options.gradient_checkpointing,
    )
    shot = PIL.Image.new("RGB", (500, 375), (120, 90, 60))

    steps = timed_steps(components, args, shot)[1:]  # the first step warms up
    step_seconds = statistics.median(steps)
    vae_seconds, vae_flops = vae_encode_seconds_and_flops(components, options.batch_size, resolution)
    flops = step_flops(components, args, shot)
    achieved = flops / step_seconds
    on = f"{device.type}, {torch.get_num_threads()} threads" if device.type == "cpu" else torch.cuda.get_device_name()

    checkpointing = "on" if options.gradient_checkpointing else "off"
    print(f"\ntextual inversion at {options.architecture} size, batch {options.batch_size} at {resolution} px, "
          f"{str(dtype).removeprefix('torch.')}, gradient checkpointing {checkpointing} ({on})")
    print(f"  step time: median {step_seconds:.2f} s over {len(steps)} steps "
          f"({', '.join(f'{seconds:.2f}' for seconds in steps)})")
    print(f"  VAE encoding of a batch (fine_tune.py's extra work per step): {vae_seconds:.2f} s -> its step "
          f"{step_seconds + vae_seconds:.2f} s, {1 + vae_seconds / step_seconds:.2f}x ours")
    print(f"  FLOPs per step: {flops / 1e12:.2f} TFLOP (+{vae_flops / 1e12:.2f} TFLOP VAE encoding in fine_tune.py) "
          f"-> {achieved / 1e12:.3f} TFLOP/s achieved")
    print(f"  peak memory: {peak_memory_gib(device):.1f} GiB")

    total_steps = TRIALS * STEPS_PER_CLASS
    print(f"\nprojected: {TRIALS} trials x {STEPS_PER_CLASS} steps per class, 1 shot "
          f"({', '.join(f'{name} {count}' for name, count in DATASETS.items())} classes)")
    if device.type == "cuda":
        rows = [(f"measured on {on}", step_seconds)]
    else:
        rows = []
        for gpu, peak in GPU_PEAK_TFLOPS.items():
            for mfu in options.mfu:
                gpu_flops = peak * 1e12 * mfu
                rows.append((f"{gpu} at {mfu:.0%} MFU ({gpu_flops / 1e12:.0f} TFLOP/s, "
                             f"{gpu_flops / achieved:.0f}x this CPU)", flops / gpu_flops))
        rows.append(("this CPU", step_seconds))
    for name, seconds in rows:
        hours = {dataset: count * total_steps * seconds / 3600 for dataset, count in DATASETS.items()}
        per_dataset = ", ".join(f"{dataset} {value:,.1f} h" for dataset, value in hours.items())
        print(f"  {name}: {seconds:.3f} s/step -> {per_dataset}; all three {sum(hours.values()):,.1f} h")

if __name__ == "__main__":
    main()
