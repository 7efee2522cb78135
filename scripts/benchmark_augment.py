"""Benchmark: `dalda augment`'s generation against the released code's way of working, at Stable Diffusion 1.5's size.

Builds the full-size architectures from their configs with random weights (SD 1.5's UNet, VAE and CLIP text encoder,
IP-Adapter SD 1.5 with its ViT-H/14 image encoder, a ViT-B/16 CLIP scorer; nothing is downloaded), then measures,
side by side in one run, on the same real images, prompts, λ's, seeds and steps:

- `dalda augment` (CLIPScores batched, IP-Adapter embeddings once per real image, items batched across real images,
  each synthetic image scored by CLIP in its batch, decoding, PNG encoding and shard writing off the denoising path)
  against a loop in the released code's way (one image per call, the real image encoded on every call, each image
  saved as it comes, no synthetic image scored), in `--rounds` interleaved rounds A B, B A, A B, ... (A: `dalda
  augment`, B: the released way), each arm doing the same work every time: per round the ratio of the two times, then
  the median ratio with its spread (min–max over rounds) and each arm's median images per second. Interleaving puts
  both arms through the same drifts of a shared machine's speed, which one run of each after the other does not;
- the share of `dalda augment`'s time spent scoring its synthetic images with CLIP (the median and range over rounds;
  CLIP sees 224 px whatever the generation size, so the share falls as size and steps grow);
- the share of `dalda augment`'s time spent outside the UNet;
- a batch-size sweep of one pipeline call (images per second, peak memory), and with `--compile` the same sweep
  again with a compiled UNet, side by side;
- on a GPU, the UNet's model FLOPs utilisation: its FLOPs per step against the GPU's peak.

On the CPU it defaults to 256 px, 4 steps and float32; on a GPU to 512 px, 30 steps and float16:

    python scripts/benchmark_augment.py                       # sizes chosen per device
    python scripts/benchmark_augment.py --architecture tiny   # the offline kit, in a minute or two
    python scripts/benchmark_augment.py --rounds 4 --sweep    # four rounds (A B B A A B B A), no batch-size sweep
"""

import argparse
import dataclasses
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import datasets
import numpy as np
import PIL.Image
import torch
from diffusers import StableDiffusionPipeline
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from dataset_builders.arguments import AugmentArguments, SourceArguments
from dataset_builders.augment import DatasetAugmenter, score_real_images
from dataset_builders.methods import class_prompts
from dataset_builders.source import load_real_images
from pipeline_dalda import DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT_PREFIX, AdaptiveGuidanceScaling
from pipeline_dalda.arguments import ModelArguments
from pipeline_dalda.images import load_image
from pipeline_dalda.loading import load_dalda_pipeline
from pipeline_dalda.prompts import PromptArguments, generate_prompt_bank
from pipeline_dalda.seeding import noise_generator
from pipeline_dalda.testing import IP_ADAPTER_WEIGHT_NAME, SD15, TINY, save_tiny_models


PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}
"""Dense float16/bfloat16 tensor-core peaks (TFLOP/s) of the GPUs the MFU figure knows, by name."""


def parse_args():
    on_gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architecture", choices=["sd15", "tiny"], default="sd15")
    parser.add_argument("--size", type=int, default=512 if on_gpu else 256, help="generated image side, px")
    parser.add_argument("--steps", type=int, default=30 if on_gpu else 4)
    parser.add_argument("--classes", type=int, default=4 if on_gpu else 2)
    parser.add_argument("--shots", type=int, default=2 if on_gpu else 1, help="real images per class (n)")
    parser.add_argument("--prompts", type=int, default=8 if on_gpu else 4, help="synthetic images per real image (M)")
    parser.add_argument("--batch-size", type=int, default=16 if on_gpu else 4, help="dalda augment's batch size")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the two arms: A B, B A, ...")
    parser.add_argument("--sweep", type=int, nargs="*", default=[1, 2, 4, 8, 16] if on_gpu else [1, 2, 4, 8],
                        help="batch sizes of the one-call sweep; none given: no sweep")
    parser.add_argument("--dtype", default="auto", help="'auto': float16 on a GPU, float32 on the CPU")
    parser.add_argument("--compile", action="store_true", help="also sweep with a compiled UNet")
    parser.add_argument("--models-dir", help="keep the random models here and reuse them (about 7 GB at sd15)")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense half-precision peak, if not known by name")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def architecture_at(name: str, size: int):
    """The kit's architecture with its default generation size set to `size` px (the weights do not change)."""
    architecture = SD15 if name == "sd15" else TINY
    unet, vae = {**architecture.unet, "sample_size": size // 8}, {**architecture.vae, "sample_size": size}
    return dataclasses.replace(architecture, unet=unet, vae=vae)


def set_generation_size(models_dir: Path, architecture) -> None:
    """Writes `architecture`'s sample sizes into the kept UNet's and VAE's configs, where they differ: both arms
    generate at the UNet's configured size, and models kept in `--models-dir` may have been built for another
    `--size` (the weights do not depend on it)."""
    for component in ("unet", "vae"):
        path = models_dir / "stable-diffusion" / component / "config.json"
        config = json.loads(path.read_text())
        sample_size = getattr(architecture, component)["sample_size"]
        if config["sample_size"] != sample_size:
            path.write_text(json.dumps({**config, "sample_size": sample_size}, indent=2))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class UNetTimer:
    """Time spent in the UNet's forward passes (the device synchronised around each), and their number."""

    def __init__(self, unet: torch.nn.Module, device: torch.device):
        self.seconds, self.calls, self.device = 0.0, 0, device
        self._start = 0.0
        self._hooks = [unet.register_forward_pre_hook(self._before), unet.register_forward_hook(self._after)]

    def remove(self) -> None:
        """Stops timing (a compiled UNet must not see the hooks: timing them would split its graph)."""
        for hook in self._hooks:
            hook.remove()

    def _before(self, module, args):
        synchronize(self.device)
        self._start = time.perf_counter()

    def _after(self, module, args, output):
        synchronize(self.device)
        self.seconds += time.perf_counter() - self._start
        self.calls += 1

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, 0


class TimedScorer:
    """A CLIP scorer that adds up the seconds spent in its calls (the device synchronised around each). Put in place
    of `DatasetAugmenter.scorer`, it times the scoring of the synthetic images alone: the real images are scored
    before, by `score_real_images`, through the pipeline's own scorer."""

    def __init__(self, scorer, device: torch.device):
        self.scorer, self.device, self.seconds = scorer, device, 0.0

    def __call__(self, images, labels, class_names) -> torch.Tensor:
        synchronize(self.device)
        start = time.perf_counter()
        scores = self.scorer(images, labels, class_names)
        synchronize(self.device)
        self.seconds += time.perf_counter() - start
        return scores


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB; the process's peak so far


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def write_source(folder: Path, classes: int, shots: int) -> list[str]:
    names = [f"class {index}" for index in range(classes)]
    rng = np.random.default_rng(0)
    images = [PIL.Image.fromarray(rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)) for _ in range(classes * shots)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    labels = [index % classes for index in range(len(images))]
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).save_to_disk(folder)
    return names


class DaldaRun(NamedTuple):
    """One run of `dalda augment`'s arm: its seconds, those spent scoring its synthetic images, and its synthetic
    rows (without their images)."""

    seconds: float
    scoring_seconds: float
    synthetic: list[dict]


def run_dalda(pipe, work: Path, output_dir: Path, args) -> DaldaRun:
    """`dalda augment`'s generation (CLIPScores, every synthetic image scored, shards built and written) into
    `output_dir`, which must not exist: a run into a folder with shards would skip them."""
    source = SourceArguments(dataset=str(work / "data"), num_shots=args.shots)
    augment = AugmentArguments(
        output_dir=str(output_dir),
        prompt_bank=str(work / "bank.json"),
        num_prompts=args.prompts,
        batch_size=args.batch_size,
        num_inference_steps=args.steps,
        real_images_per_shard=max(1, args.batch_size // args.prompts),
    )
    real = load_real_images(source)
    selected = list(range(len(real.dataset)))
    prompts = class_prompts(augment, real.class_names)
    shards = [selected[start : start + augment.real_images_per_shard] for start in
              range(0, len(selected), augment.real_images_per_shard)]
    start = time.perf_counter()
    scores = score_real_images(pipe, real, selected, source, augment)
    augmenter = DatasetAugmenter(
        pipe, real, prompts, source, augment, AdaptiveGuidanceScaling(), scores,
        tqdm(total=len(selected) * args.prompts, disable=True),
    )
    augmenter.scorer = scorer = TimedScorer(augmenter.scorer, pipe.device)
    augmenter.build_shards(list(enumerate(shards)), len(shards))
    synchronize(pipe.device)
    seconds = time.perf_counter() - start
    rows = datasets.load_dataset("parquet", data_dir=str(output_dir / "data"), split="train")
    synthetic = rows.filter(lambda row: row["is_synthetic"]).remove_columns("image").to_list()
    return DaldaRun(seconds, scorer.seconds, synthetic)


def same_images(synthetic: list[dict], other: list[dict]) -> bool:
    """Whether two runs of `dalda augment`'s arm made the same synthetic images: the same real images, prompts and
    seeds, and λ's within 1e-6 (a real image's CLIPScore, and so its λ, may differ in the last bits from one call on
    the CPU to the next)."""
    def key(row: dict) -> tuple:
        return row["source_index"], row["prompt"], row["seed"]

    return [key(row) for row in synthetic] == [key(row) for row in other] and np.allclose(
        [row["ip_adapter_scale"] for row in synthetic], [row["ip_adapter_scale"] for row in other], rtol=0, atol=1e-6
    )


def run_released_way(pipe, work: Path, folder: Path, args, synthetic: list[dict]) -> float:
    """The released code's way: per real image one CLIPScore, then per synthetic image one diffusers call that
    encodes the real image again, at that image's λ, each image saved as it comes into `folder` (made here)."""
    source = load_real_images(SourceArguments(dataset=str(work / "data"), num_shots=args.shots))
    scorer = pipe.clip_scorer()
    folder.mkdir()
    start = time.perf_counter()
    for source_index in sorted({row["source_index"] for row in synthetic}):
        real = load_image(source.dataset[source_index]["image"])
        scorer([real], [source.labels[source_index]], source.class_names)
        for row in (row for row in synthetic if row["source_index"] == source_index):
            pipe.set_ip_adapter_scale(row["ip_adapter_scale"])
            image = StableDiffusionPipeline.__call__(
                pipe,
                DEFAULT_PROMPT_PREFIX + row["prompt"],
                negative_prompt=DEFAULT_NEGATIVE_PROMPT,
                ip_adapter_image=real.resize((args.size, args.size), PIL.Image.BILINEAR),
                num_inference_steps=args.steps,
                guidance_scale=7.5,
                generator=noise_generator(row["seed"]),
            ).images[0]
            image.resize(real.size, PIL.Image.BILINEAR).save(folder / f"{source_index}-{row['seed']}.png")
    synchronize(pipe.device)
    return time.perf_counter() - start


def warm_up(pipe, args, class_names: list[str]) -> None:
    """One short call at `dalda augment`'s batch size (and one at 1, the released way's) and one CLIPScore over the
    dataset's classes, untimed: the first calls pay for allocations, kernel choices and, with `--compile`, the
    compile, and the scorer keeps the class prompts' embeddings, so that every round does the same work."""
    real = PIL.Image.new("RGB", (64, 64))
    for batch_size in sorted({1, args.batch_size}):
        pipe(["a photo"] * batch_size, ip_adapter_image=[real] * batch_size, ip_adapter_scale=0.5,
             num_inference_steps=1, output_type="latent")
    pipe.clip_scorer()([real], [0], class_names)


def interleaved_rounds(pipe, work: Path, args, timer: UNetTimer) -> tuple[list[dict], list[dict]]:
    """`args.rounds` rounds of the two arms, A B then B A, and so on (A: `dalda augment`, B: the released way), each
    arm on the same images, prompts, λ's and seeds every time, each run into a fresh folder. The first round runs A
    first, whose synthetic rows tell B what to make.

    Returns each round's figures — the two arms' seconds, the ratio released / `dalda augment`, and `dalda augment`'s
    shares of its time spent scoring synthetic images and outside the UNet — and the first run's synthetic rows.
    """
    rounds, synthetic = [], None
    for number in range(args.rounds):
        order = ("A", "B") if number % 2 == 0 else ("B", "A")
        figures = {"round": number + 1, "order": " ".join(order)}
        for arm in order:
            if arm == "A":
                timer.reset()
                run = run_dalda(pipe, work, work / f"dalda-{number}", args)
                if synthetic is None:
                    synthetic = run.synthetic
                elif not same_images(synthetic, run.synthetic):
                    raise RuntimeError(f"round {number + 1}: `dalda augment` made other images than in round 1")
                figures["dalda_augment_s"] = run.seconds
                figures["synthetic_scoring_share"] = run.scoring_seconds / run.seconds
                figures["share_outside_unet"] = 1 - timer.seconds / run.seconds
            else:
                figures["released_way_s"] = run_released_way(pipe, work, work / f"released-{number}", args, synthetic)
        figures["speed_up"] = figures["released_way_s"] / figures["dalda_augment_s"]
        rounds.append(figures)
        print(json.dumps(figures), file=sys.stderr, flush=True)
    return rounds, synthetic


def over_rounds(rounds: list[dict], name: str) -> list[float]:
    """One figure of every round."""
    return [figures[name] for figures in rounds]


def median_and_range(values: list[float]) -> dict:
    """The median of `values` and their spread, min and max."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def sweep(pipe, args, device: torch.device, timer: UNetTimer | None) -> list[dict]:
    """One pipeline call of B items per batch size (embeddings given, λ's per item): images/s, peak memory and, with
    a `timer`, the UNet's share."""
    real = PIL.Image.fromarray(np.random.default_rng(1).integers(0, 256, (360, 480, 3), dtype=np.uint8))
    embeds = pipe.encode_ip_adapter_images([real])
    results = []
    for batch_size in args.sweep:
        call = {
            "prompt": ["a photo of a class 0, side view, in the snow"] * batch_size,
            "ip_adapter_image_embeds": [embed.expand(batch_size, *embed.shape[1:]) for embed in embeds],
            "ip_adapter_scale": np.linspace(0.1, 0.9, batch_size).tolist(),
            "num_inference_steps": args.steps,
            "output_type": "pil",
        }
        pipe(**call, generator=[noise_generator(i) for i in range(batch_size)])  # warm-up (and compile)
        reset_peak_memory(device)
        if timer is not None:
            timer.reset()
        start = time.perf_counter()
        pipe(**call, generator=[noise_generator(i) for i in range(batch_size)])
        synchronize(device)
        seconds = time.perf_counter() - start
        row = {"batch_size": batch_size, "images_per_s": batch_size / seconds, "seconds": seconds}
        if timer is not None:
            row["unet_seconds"] = timer.seconds
        results.append({**row, "peak_memory_gib": peak_memory_gib(device)})
    return results


def unet_flops_per_image_step(pipe, size: int, device: torch.device) -> float:
    """FLOPs of one denoising step of one image: the UNet on its guided pair (unconditional + conditional)."""
    unet = getattr(pipe.unet, "_orig_mod", pipe.unet)
    latent = torch.randn(2, 4, size // 8, size // 8, device=device, dtype=unet.dtype)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, device=device, dtype=unet.dtype)
    image = [torch.randn(2, 1, embed.shape[-1], device=device, dtype=unet.dtype)
             for embed in pipe.encode_ip_adapter_images([PIL.Image.new("RGB", (64, 64))])]
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        unet(latent, 10, encoder_hidden_states=text, added_cond_kwargs={"image_embeds": image})
    return counter.get_total_flops()


def main():
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        models_dir = Path(args.models_dir) if args.models_dir else work / "models"
        architecture = architecture_at(args.architecture, args.size)
        if not (models_dir / "stable-diffusion" / "model_index.json").exists():
            print(f"building the {args.architecture} models in {models_dir} ...", file=sys.stderr, flush=True)
            save_tiny_models(models_dir, architecture=architecture)
        set_generation_size(models_dir, architecture)
        names = write_source(work / "data", args.classes, args.shots)
        generate_prompt_bank(PromptArguments(output=str(work / "bank.json"), num_prompts=args.prompts), names)
        models = ModelArguments(
            pretrained_model_name_or_path=str(models_dir / "stable-diffusion"),
            vae="",
            ip_adapter=str(models_dir / "ip-adapter"),
            ip_adapter_weight_name=IP_ADAPTER_WEIGHT_NAME,
            clip_score_model=str(models_dir / "clip-scorer"),
            device=str(device),
            dtype=args.dtype,
        )
        pipe = load_dalda_pipeline(models)
        pipe.set_progress_bar_config(disable=True)
        timer = UNetTimer(pipe.unet, device)

        warm_up(pipe, args, names)
        rounds, synthetic = interleaved_rounds(pipe, work, args, timer)
        images = len(synthetic)
        sweep_results = sweep(pipe, args, device, timer)
        compiled_results = None
        if args.compile:
            timer.remove()
            pipe.unet = torch.compile(pipe.unet)
            compiled_results = sweep(pipe, args, device, timer=None)

        report = {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch_threads": torch.get_num_threads(),
            "architecture": args.architecture,
            "size": pipe.generation_size,
            "steps": args.steps,
            "dtype": str(pipe.unet.dtype),
            "images": images,
            "rounds": rounds,
            "speed_up": median_and_range(over_rounds(rounds, "speed_up")),
            "dalda_augment": {
                "median_images_per_s": statistics.median(images / s for s in over_rounds(rounds, "dalda_augment_s")),
                "synthetic_scoring_share": median_and_range(over_rounds(rounds, "synthetic_scoring_share")),
                "median_share_outside_unet": statistics.median(over_rounds(rounds, "share_outside_unet")),
            },
            "released_way": {
                "median_images_per_s": statistics.median(images / s for s in over_rounds(rounds, "released_way_s")),
            },
            "sweep": sweep_results,
        }
        if compiled_results is not None:
            report["sweep_compiled_unet"] = [
                {**row, "speed_up_over_eager": row["images_per_s"] / eager["images_per_s"]}
                for row, eager in zip(compiled_results, sweep_results)
            ]
        if device.type == "cuda":
            name = torch.cuda.get_device_name(device)
            peak = args.peak_tflops or next((tflops for key, tflops in PEAK_TFLOPS.items() if key in name), None)
            flops = unet_flops_per_image_step(pipe, args.size, device)
            report["unet_gflops_per_image_step"] = flops / 1e9
            if peak:
                for row in sweep_results:
                    achieved = flops * row["batch_size"] * args.steps / row["unet_seconds"]
                    row["unet_mfu"] = achieved / (peak * 1e12)
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
