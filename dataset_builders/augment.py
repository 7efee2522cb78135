"""`dalda augment`: a few-shot dataset in, a DALDA-augmented dataset in the Hub's layout out.

Work is cut into shards of a few real images. Each shard goes through `datasets.Dataset.map`, which turns its real
rows into real + synthetic rows, and is written as one parquet file the moment it is complete; a rerun skips the
shards that exist, and `accelerate launch` shares the missing shards out between processes. Every synthetic image
draws its λ and its seed from (run seed, source index, prompt index) only, so the result does not depend on the batch
size, the order, a resume or the number of processes.
"""

import hashlib
import json
import logging
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import datasets
import numpy as np
import PIL.Image
import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from pipeline_dalda import DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT_PREFIX, AdaptiveGuidanceScaling, DALDAPipeline
from pipeline_dalda.atomic import remove_stale_temporaries, write_json_atomically
from pipeline_dalda.loading import ModelArguments, load_dalda_pipeline
from pipeline_dalda.pipeline import CLASS_PROMPT_TEMPLATE, item_ip_adapter_scales
from pipeline_dalda.prompts import PromptBank
from pipeline_dalda.prompts.matching import display_name

from .hub_layout import WORK_DIR, output_features, push_to_hub, shard_path, write_shard
from .report import finalize_output
from .source import BadImage, RealImages, SourceArguments, decode_real_image, load_real_images, select_few_shot


logger = logging.getLogger(__name__)

_IMAGE_SEED_STREAM, _SCALE_STREAM = 1, 2  # keep the two random streams of a run apart


@dataclass
class AugmentArguments:
    """How `dalda augment` builds the augmented dataset."""

    output_dir: str = field(metadata={"help": "The dataset folder to write (Hub layout)."})
    prompt_bank: str | None = field(default=None, metadata={"help": "A prompt bank from `dalda prompts`."})
    base_prompt: bool = field(
        default=False, metadata={"help": "Use 'a photo of a {class}' instead of a prompt bank (ablation)."}
    )
    num_prompts: int = field(default=10, metadata={"help": "Synthetic images per real image (M)."})
    seed: int = field(default=0, metadata={"help": "Seeds the few-shot selection, λ and every image."})
    batch_size: int = field(default=8, metadata={"help": "Synthetic images denoised together in one pass."})
    real_images_per_shard: int = field(default=4, metadata={"help": "Real images per parquet shard (resume unit)."})
    num_inference_steps: int = 30
    guidance_scale: float = 7.5
    prompt_prefix: str = DEFAULT_PROMPT_PREFIX
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    clip_score_mode: str = field(default="probability", metadata={"help": "'probability' or 'cosine'."})
    contact_sheet_rows: int = field(default=8, metadata={"help": "Real images shown in contact_sheet.png."})
    push_to_hub: str | None = field(default=None, metadata={"help": "ORG/NAME of a Hub dataset repo to upload to."})
    private: bool = field(default=False, metadata={"help": "Create the Hub repo as private."})

    def __post_init__(self):
        if (self.prompt_bank is None) == (not self.base_prompt):
            raise ValueError("Give exactly one of `prompt_bank` and `base_prompt`.")
        for name in ("num_prompts", "batch_size", "real_images_per_shard", "num_inference_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")


def image_seed(run_seed: int, source_index: int, prompt_index: int) -> int:
    """The seed of one synthetic image's initial noise."""
    return int(np.random.SeedSequence([_IMAGE_SEED_STREAM, run_seed, source_index, prompt_index]).generate_state(1)[0])


def scale_generator(run_seed: int, source_index: int) -> np.random.Generator:
    """The random stream that draws the λ's of one real image's synthetic images."""
    return np.random.default_rng([_SCALE_STREAM, run_seed, source_index])


def class_prompts(args: AugmentArguments, class_names: list[str]) -> dict[str, list[str]]:
    """M prompts per class, from the bank or the base prompt."""
    if args.base_prompt:
        return {name: [CLASS_PROMPT_TEMPLATE.format(display_name(name))] * args.num_prompts for name in class_names}
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
        self.pipe, self.real, self.prompts, self.progress = pipe, real, prompts, progress
        self.clip_scores, self.process_index = clip_scores, process_index
        self.source_args, self.args, self.ags = source_args, args, ags
        self.features = output_features(real.class_names)
        self.generation_size = pipe.unet.config.sample_size * pipe.vae_scale_factor

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
        """Real rows in, real + synthetic rows out."""
        reals = []
        for source_index, value in zip(batch["source_index"], batch[self.source_args.image_column]):
            try:
                reals.append((source_index, value, decode_real_image(value)))
            except BadImage as error:
                logger.warning("Skipping source row %d: %s", source_index, error)
                skipped.append({"source_index": source_index, "reason": str(error)})
                self.progress.update(self.args.num_prompts)
        out: dict[str, list] = {name: [] for name in self.features}
        if not reals:
            return out

        labels = [self.real.labels[source_index] for source_index, _, _ in reals]
        images = [image for _, _, image in reals]
        scores = [self.clip_scores[source_index] for source_index, _, _ in reals]
        embeds = self.pipe.encode_ip_adapter_images(
            [image.resize((self.generation_size,) * 2, PIL.Image.BILINEAR) for image in images]
        )

        items = []  # (real, prompt index, λ, seed) for every synthetic image of the batch
        for real_index, ((source_index, value, image), label, score) in enumerate(zip(reals, labels, scores)):
            self._add_row(out, value, label, False, source_index, None, None, score, None)
            scales = item_ip_adapter_scales(
                self.args.num_prompts,
                None,
                None if score is None else np.full(self.args.num_prompts, score),
                self.ags,
                self.source_args.num_shots,
                scale_generator(self.args.seed, source_index),
            )
            for prompt_index, scale in enumerate(scales):
                items.append((real_index, prompt_index, float(scale), image_seed(self.args.seed, source_index, prompt_index)))

        for start in range(0, len(items), self.args.batch_size):
            batch_items = items[start : start + self.args.batch_size]
            rows = torch.tensor([real_index for real_index, _, _, _ in batch_items])
            class_names = [self.real.class_names[labels[real_index]] for real_index, _, _, _ in batch_items]
            prompts = [self.prompts[name][prompt_index] for name, (_, prompt_index, _, _) in zip(class_names, batch_items)]
            output = self.pipe(
                prompts,
                ip_adapter_image_embeds=[embed[rows.to(embed.device)] for embed in embeds],
                ip_adapter_scale=[scale for _, _, scale, _ in batch_items],
                prompt_prefix=self.args.prompt_prefix,
                negative_prompt=self.args.negative_prompt,
                num_inference_steps=self.args.num_inference_steps,
                guidance_scale=self.args.guidance_scale,
                generator=[torch.Generator().manual_seed(seed) for _, _, _, seed in batch_items],
            )
            for generated, prompt, (real_index, _, scale, seed) in zip(output.images, prompts, batch_items):
                source_index, _, image = reals[real_index]
                synthetic = generated.resize(image.size, PIL.Image.BILINEAR)
                self._add_row(out, synthetic, labels[real_index], True, source_index, prompt, scale, scores[real_index], seed)
            self.progress.update(len(batch_items))
        return out

    @staticmethod
    def _add_row(out, image, label, is_synthetic, source_index, prompt, scale, score, seed) -> None:
        if isinstance(image, dict) and image.get("bytes") is None:
            image = {"bytes": Path(image["path"]).read_bytes(), "path": None}
        values = (image, label, is_synthetic, source_index, prompt, scale, score, seed)
        for name, value in zip(out, values):
            out[name].append(value)


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
            image = decode_real_image(real.dataset[index][source_args.image_column])
        except BadImage:
            scores[index] = None
            continue
        scores[index] = scorer([image], [real.labels[index]], real.class_names).item()
    return scores


def run_settings(
    source_args: SourceArguments, args: AugmentArguments, model_args: ModelArguments, ags: AdaptiveGuidanceScaling
) -> dict[str, Any]:
    """What decides the output's content; a resumed run must match it. Batch size and devices do not."""
    generation = asdict(args)
    for name in ("output_dir", "batch_size", "contact_sheet_rows", "push_to_hub", "private"):
        generation.pop(name)
    if args.prompt_bank:
        generation["prompt_bank_sha256"] = hashlib.sha256(Path(args.prompt_bank).read_bytes()).hexdigest()
    models = asdict(model_args)
    for name in ("device", "dtype"):
        models.pop(name)
    return {"source": asdict(source_args), "generation": generation, "models": models, "ags": asdict(ags)}


def augment_dataset(
    source_args: SourceArguments, args: AugmentArguments, model_args: ModelArguments, ags: AdaptiveGuidanceScaling
) -> dict[str, Any] | None:
    """Runs the whole job in this process's share; the main process then writes the card (and pushes).

    Returns the run summary on the main process, None on the others.
    """
    # On the CPU, accelerate forms a process group only when told it runs on the CPU.
    state = PartialState(cpu=model_args.resolved_device().type == "cpu")
    real = load_real_images(source_args)
    selected = select_few_shot(
        real.labels, real.class_names, source_args.num_shots, args.seed, source_args.allow_fewer_shots
    )
    prompts = class_prompts(args, real.class_names)
    output_dir = Path(args.output_dir)
    settings = run_settings(source_args, args, model_args, ags)
    settings_file = output_dir / WORK_DIR / "run.json"
    if state.is_main_process:
        remove_stale_temporaries(output_dir / WORK_DIR / "tmp")
        if not settings_file.exists():
            write_json_atomically(settings_file, settings)
    state.wait_for_everyone()
    recorded = json.loads(settings_file.read_text(encoding="utf-8"))
    if recorded != settings:
        changed = sorted(key for key in settings if recorded.get(key) != settings[key])
        raise ValueError(
            f"{str(output_dir)!r} holds a run made with other settings ({', '.join(changed)}); "
            "use another output_dir, or the same settings to resume."
        )

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
            with tqdm(total=total, desc="synthetic images", unit="img", disable=not state.is_local_main_process) as bar:
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
