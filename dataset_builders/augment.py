"""`dalda augment`: a few-shot dataset in, a DALDA-augmented dataset in the Hub's layout out.

Work is cut into shards of a few real images. Each shard goes through `datasets.Dataset.map`, which turns its real
rows into real + synthetic rows, and is written as one parquet file the moment it is complete; a rerun skips the
shards that exist, and `accelerate launch` shares the missing shards out between processes. Every synthetic image
draws its λ and its seed from (run seed, source index, prompt index) only ([`pipeline_dalda.seeding`]), and the
CLIPScores are computed once per run and saved, so the result does not depend on the batch size, the order, a resume
or the number of processes.

CLIPScore and AGS are the pipeline's own: the run scores each real image with [`DALDAPipeline.clip_scorer`] as it is
stored (before any resize), and every batch goes through [`DALDAPipeline.__call__`] with those scores and one λ
generator per item, which draws λ as it would for a Python user.

`method="real_guidance"` makes the paper's first baseline, Real Guidance, in the same rows and layout: the two methods
differ only in how a batch of synthetic images is generated ([`DALDAGeneration`], [`RealGuidanceGeneration`]).
"""

import hashlib
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Protocol

import datasets
import PIL.Image
import torch
from accelerate import PartialState
from diffusers import StableDiffusionImg2ImgPipeline
from tqdm.auto import tqdm

from pipeline_dalda import AdaptiveGuidanceScaling, DALDAPipeline
from pipeline_dalda.arguments import ModelArguments
from pipeline_dalda.atomic import create_output_dir, remove_stale_temporaries, write_json_atomically
from pipeline_dalda.images import BadImage, load_image
from pipeline_dalda.loading import load_dalda_pipeline
from pipeline_dalda.pipeline import class_prompt
from pipeline_dalda.prompts import PromptBank
from pipeline_dalda.resume import ensure_same_settings
from pipeline_dalda.seeding import item_seed, noise_generator, scale_generator

from .arguments import AugmentArguments, SourceArguments
from .hub_layout import WORK_DIR, output_features, push_to_hub, shard_path, write_shard
from .report import finalize_output
from .source import RealImages, load_real_images, select_few_shot


logger = logging.getLogger(__name__)

def class_prompts(args: AugmentArguments, class_names: list[str]) -> dict[str, list[str]]:
    """M prompts per class: from the bank, or "a photo of a {class}" (`base_prompt`, and always for Real Guidance)."""
    if args.base_prompt or args.method == "real_guidance":
        return {name: [class_prompt(name)] * args.num_prompts for name in class_names}
    bank = PromptBank.load(args.prompt_bank)
    short = {name: len(bank.prompts.get(name, [])) for name in class_names}
    short = {name: count for name, count in short.items() if count < args.num_prompts}
    if short:
        raise ValueError(
            f"The prompt bank {args.prompt_bank!r} has fewer than {args.num_prompts} prompts for {len(short)} classes "
            f"(prompts per class: {dict(list(short.items())[:10])}); make it with `dalda prompts --num_prompts "
            f"{args.num_prompts}`."
        )
    return {name: bank.prompts[name][: args.num_prompts] for name in class_names}


@contextmanager
def _datasets_progress_bars_hidden() -> Iterator[None]:
    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


@dataclass(frozen=True)
class SyntheticItem:
    """One synthetic image to generate."""

    real_index: int
    """Its real image's position in the batch of real images."""
    source_index: int
    """Its real image's row in the source split."""
    prompt_index: int
    prompt: str
    clip_score: float | None
    """Its real image's CLIPScore; None where no CLIP model is loaded."""
    seed: int
    """The seed of its initial noise, from [`item_seed`]."""


class Generation(Protocol):
    """How a method turns real images and [`SyntheticItem`]s into synthetic images."""

    def prepare(self, images: list[PIL.Image.Image]) -> Any:
        """What the method needs from a batch of real images, once for all their items."""

    def __call__(self, prepared: Any, items: list[SyntheticItem]) -> tuple[list[PIL.Image.Image], list[float | None]]:
        """One synthetic image per item, at the generation size, and the λ it was made with (None where the method
        has no image prompt)."""


class DALDAGeneration:
    """DALDA: each item's prompt with its real image as the IP-Adapter image prompt, at a λ drawn by the pipeline's
    AGS from the real image's CLIPScore, with the item's own λ stream."""

    def __init__(self, pipe: DALDAPipeline, args: AugmentArguments, ags: AdaptiveGuidanceScaling, num_shots: int):
        self.pipe, self.args, self.ags, self.num_shots = pipe, args, ags, num_shots

    def prepare(self, images: list[PIL.Image.Image]) -> list[torch.Tensor]:
        """The real images' IP-Adapter embeddings, encoded once for all their synthetic images."""
        return self.pipe.encode_ip_adapter_images(images)

    def __call__(
        self, prepared: list[torch.Tensor], items: list[SyntheticItem]
    ) -> tuple[list[PIL.Image.Image], list[float | None]]:
        rows = torch.tensor([item.real_index for item in items])
        scores = [item.clip_score for item in items]
        output = self.pipe(
            [item.prompt for item in items],
            ip_adapter_image_embeds=[embeds[rows.to(embeds.device)] for embeds in prepared],
            clip_scores=None if None in scores else scores,
            ags=self.ags,
            num_shots=self.num_shots,
            ags_generator=[scale_generator(self.args.seed, item.source_index, item.prompt_index) for item in items],
            prompt_prefix=self.args.prompt_prefix,
            negative_prompt=self.args.negative_prompt,
            num_inference_steps=self.args.num_inference_steps,
            guidance_scale=self.args.guidance_scale,
            generator=[noise_generator(item.seed) for item in items],
        )
        return output.images, output.ip_adapter_scales


class RealGuidanceGeneration:
    """Real Guidance, the paper's baseline from DA-Fusion (Trabucco et al., 2023): Stable Diffusion img2img from the
    real image, noised to `real_guidance_strength`, with the item's prompt; no image prompt, so no λ.

    The img2img pipeline shares the loaded pipeline's modules, which must carry no IP-Adapter (see
    [`load_dalda_pipeline`]). It is built with its constructor rather than `from_pipe`, which casts the shared modules
    to its `dtype` argument (float32 unless given, and spelled differently across diffusers versions).
    """

    def __init__(self, pipe: DALDAPipeline, args: AugmentArguments):
        self.pipe, self.args = pipe, args
        self.img2img = StableDiffusionImg2ImgPipeline(
            vae=pipe.vae,
            text_encoder=pipe.text_encoder,
            tokenizer=pipe.tokenizer,
            unet=pipe.unet,
            scheduler=pipe.scheduler,
            safety_checker=pipe.safety_checker,
            feature_extractor=pipe.feature_extractor,
            requires_safety_checker=pipe.config.requires_safety_checker,
        )
        self.img2img.set_progress_bar_config(disable=True)  # the run's own bar counts images

    def prepare(self, images: list[PIL.Image.Image]) -> list[PIL.Image.Image]:
        """The real images at the generation size: img2img starts from them."""
        return [self.pipe.resize_to_generation_size(image) for image in images]

    def __call__(
        self, prepared: list[PIL.Image.Image], items: list[SyntheticItem]
    ) -> tuple[list[PIL.Image.Image], list[float | None]]:
        images = self.img2img(
            prompt=[self.args.prompt_prefix + item.prompt for item in items],
            image=[prepared[item.real_index] for item in items],
            strength=self.args.real_guidance_strength,
            num_inference_steps=self.args.num_inference_steps,
            guidance_scale=self.args.guidance_scale,
            negative_prompt=[self.args.negative_prompt] * len(items),
            generator=[noise_generator(item.seed) for item in items],
        ).images
        return images, [None] * len(items)


@dataclass
class OutputRow:
    """One row of the augmented dataset, by column ([`output_features`]); a real image has no prompt, λ or seed."""

    image: PIL.Image.Image | dict
    label: int
    is_synthetic: bool
    source_index: int
    prompt: str | None = None
    ip_adapter_scale: float | None = None
    clip_score: float | None = None
    seed: int | None = None


class DatasetAugmenter:
    """Builds one shard after another on the pipeline it is given; see the module docstring."""

    def __init__(
        self,
        pipe: DALDAPipeline,
        real: RealImages,
        prompts: dict[str, list[str]],
        source_args: SourceArguments,
        args: AugmentArguments,
        ags: AdaptiveGuidanceScaling,
        clip_scores: dict[int, float | None],
        progress: tqdm,
        process_index: int = 0,
    ):
        self.real, self.prompts, self.progress = real, prompts, progress
        self.clip_scores, self.process_index = clip_scores, process_index
        self.source_args, self.args = source_args, args
        self.features = output_features(real.class_names)
        self.generation: Generation = (
            RealGuidanceGeneration(pipe, args)
            if args.method == "real_guidance"
            else DALDAGeneration(pipe, args, ags, source_args.num_shots)
        )

    def build_shard(self, index: int, count: int, source_indices: list[int]) -> None:
        """Generates a shard's rows with `datasets.map` and writes them; its report is saved first, so a shard's
        parquet file existing means the shard is finished."""
        skipped: list[dict[str, Any]] = []
        rows = self.real.dataset.select(source_indices).add_column("source_index", source_indices)
        with _datasets_progress_bars_hidden():  # the run's own bar counts images across shards
            shard = rows.map(
                partial(self._augment_batch, skipped=skipped),
                batched=True,
                batch_size=len(source_indices),
                remove_columns=rows.column_names,
                features=self.features,
                keep_in_memory=True,
            )
            output_dir = Path(self.args.output_dir)
            report = {"skipped": skipped, "process": self.process_index}
            write_json_atomically(output_dir / WORK_DIR / "reports" / f"shard-{index:05d}.json", report)
            write_shard(shard, shard_path(output_dir, index, count), output_dir)

    def _augment_batch(self, batch: dict[str, list], skipped: list[dict[str, Any]]) -> dict[str, list]:
        """Real rows in, real + synthetic rows out (each real row followed by its synthetic rows)."""
        reals = []  # (source_index, stored image, decoded image) of every usable real row
        for source_index, value in zip(batch["source_index"], batch[self.source_args.image_column]):
            try:
                reals.append((source_index, value, load_image(value)))
            except BadImage as error:
                logger.warning("Skipping source row %d: %s", source_index, error)
                skipped.append({"source_index": source_index, "reason": str(error)})
                self.progress.update(self.args.num_prompts)

        rows_by_real: list[list[OutputRow]] = []
        items = []  # every synthetic image of the batch
        for real_index, (source_index, value, _) in enumerate(reals):
            label, score = self.real.labels[source_index], self.clip_scores[source_index]
            rows_by_real.append([OutputRow(embedded(value), label, False, source_index, clip_score=score)])
            prompts = self.prompts[self.real.class_names[label]]
            for prompt_index in range(self.args.num_prompts):
                seed = item_seed(self.args.seed, source_index, prompt_index)
                items.append(
                    SyntheticItem(real_index, source_index, prompt_index, prompts[prompt_index], score, seed)
                )

        prepared = self.generation.prepare([image for _, _, image in reals]) if reals else None
        for start in range(0, len(items), self.args.batch_size):
            batch_items = items[start : start + self.args.batch_size]
            images, scales = self.generation(prepared, batch_items)
            for item, generated, scale in zip(batch_items, images, scales):
                real_size = reals[item.real_index][2].size
                rows_by_real[item.real_index].append(
                    OutputRow(
                        image=generated.resize(real_size, PIL.Image.BILINEAR),
                        label=self.real.labels[item.source_index],
                        is_synthetic=True,
                        source_index=item.source_index,
                        prompt=item.prompt,
                        ip_adapter_scale=scale,
                        clip_score=item.clip_score,
                        seed=item.seed,
                    )
                )
            self.progress.update(len(batch_items))
        rows = [row for real_rows in rows_by_real for row in real_rows]
        return {name: [getattr(row, name) for row in rows] for name in self.features}


def embedded(image: dict) -> dict:
    """A stored real image with its bytes: one stored as a file path is read, so the dataset holds every image."""
    if image.get("bytes") is None:
        return {"bytes": Path(image["path"]).read_bytes(), "path": None}
    return image


def score_real_images(
    pipe: DALDAPipeline, real: RealImages, selected: list[int], source_args: SourceArguments, args: AugmentArguments
) -> dict[int, float | None]:
    """The CLIPScore of every selected real image (None where it cannot be decoded or no CLIP model is loaded).

    Computed once per run and saved, so that λ's are the same whatever the shards, batches, processes or resumes:
    CLIP on the CPU can differ in the last bits from one call to the next.
    """
    if pipe.clip_model is None:
        return {index: None for index in selected}
    scorer = pipe.clip_scorer(args.clip_score_mode)
    scores = {}
    for index in tqdm(selected, desc="CLIPScore", unit="img"):
        try:
            image = load_image(real.dataset[index][source_args.image_column])
        except BadImage:
            scores[index] = None
            continue
        scores[index] = scorer([image], [real.labels[index]], real.class_names).item()
    return scores


def method_models(args: AugmentArguments, model_args: ModelArguments) -> ModelArguments:
    """The models `args.method` generates with: DALDA needs the IP-Adapter; Real Guidance runs without one, since
    IP-Adapter attention processors given no image embeddings read text tokens as image tokens."""
    if args.method == "real_guidance":
        return replace(model_args, ip_adapter="", ip_adapter_subfolder="", ip_adapter_weight_name="")
    if not model_args.ip_adapter:
        raise ValueError("`method='dalda'` generates with an IP-Adapter, but `ip_adapter` is empty; name one.")
    return model_args


def run_settings(
    source_args: SourceArguments, args: AugmentArguments, model_args: ModelArguments, ags: AdaptiveGuidanceScaling
) -> dict[str, Any]:
    """What decides the output's content; a resumed run must match it. Batch size and devices do not."""
    generation = asdict(args)
    for name in ("output_dir", "batch_size", "contact_sheet_rows", "push_to_hub", "private"):
        generation.pop(name)
    if args.prompt_bank:
        generation["prompt_bank_sha256"] = hashlib.sha256(Path(args.prompt_bank).read_bytes()).hexdigest()
    source = asdict(source_args)
    if os.path.isdir(source["dataset"]):  # so that a record read from elsewhere still finds it
        source["dataset"] = os.path.abspath(source["dataset"])
    models = asdict(model_args)
    for name in ("device", "dtype"):
        models.pop(name)
    return {"source": source, "generation": generation, "models": models, "ags": asdict(ags)}


def augment_dataset(
    source_args: SourceArguments, args: AugmentArguments, model_args: ModelArguments, ags: AdaptiveGuidanceScaling
) -> dict[str, Any] | None:
    """Runs the whole job in this process's share; the main process then writes the card (and pushes).

    Returns the run summary on the main process, None on the others.
    """
    output_dir = create_output_dir(args.output_dir)
    model_args = method_models(args, model_args)
    # On the CPU, accelerate forms a process group only when told it runs on the CPU.
    state = PartialState(cpu=model_args.resolved_device().type == "cpu")
    real = load_real_images(source_args)
    selected = select_few_shot(
        real.labels,
        real.class_names,
        source_args.num_shots,
        args.seed,
        source_args.allow_fewer_shots,
        protocol=source_args.shot_selection,
    )
    prompts = class_prompts(args, real.class_names)
    settings = run_settings(source_args, args, model_args, ags)
    settings_file = output_dir / WORK_DIR / "run.json"
    # The main process records the settings on a first start; then every process checks them.
    if state.is_main_process:
        remove_stale_temporaries(output_dir / WORK_DIR / "tmp")
        ensure_same_settings(settings_file, settings, work=output_dir)
    state.wait_for_everyone()
    if not state.is_main_process:
        ensure_same_settings(settings_file, settings, work=output_dir)

    size = args.real_images_per_shard
    shards = [selected[start : start + size] for start in range(0, len(selected), size)]
    todo = [index for index in range(len(shards)) if not shard_path(output_dir, index, len(shards)).exists()]
    if len(todo) < len(shards) and state.is_main_process:
        logger.info("Resuming: %d of %d shards are already written.", len(shards) - len(todo), len(shards))
    scores_file = output_dir / WORK_DIR / "clip_scores.json"
    with state.split_between_processes(todo) as mine:
        pipe = None
        if mine or (state.is_main_process and not scores_file.exists()):
            if model_args.device == "auto":
                model_args.device = str(state.device)
            pipe = load_dalda_pipeline(model_args)
            pipe.set_progress_bar_config(disable=True)
        if state.is_main_process and not scores_file.exists():
            write_json_atomically(scores_file, score_real_images(pipe, real, selected, source_args, args))
        state.wait_for_everyone()
        clip_scores = {int(index): score for index, score in json.loads(scores_file.read_text()).items()}
        if mine:
            total = sum(len(shards[index]) for index in mine) * args.num_prompts
            with tqdm(
                total=total, desc="synthetic images", unit="img", disable=not state.is_local_main_process
            ) as bar:
                augmenter = DatasetAugmenter(
                    pipe, real, prompts, source_args, args, ags, clip_scores, bar, state.process_index
                )
                for index in mine:
                    augmenter.build_shard(index, len(shards), shards[index])
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    summary = finalize_output(output_dir, real, selected, settings, args.contact_sheet_rows, len(shards))
    if args.push_to_hub:
        try:
            logger.info("Pushed to %s", push_to_hub(output_dir, args.push_to_hub, private=args.private))
        except Exception as error:
            raise ValueError(
                f"Uploading to {args.push_to_hub!r} failed ({type(error).__name__}: {error}). The dataset is complete "
                f"in {str(output_dir)!r}; run the same command again to retry the upload."
            ) from error
    return summary
