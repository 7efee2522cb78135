"""`dalda augment`: a few-shot dataset in, a DALDA-augmented dataset in the Hub's layout out.

Work is cut into shards of a few real images. Each shard goes through `datasets.Dataset.map`, which turns its real
rows into real + synthetic rows, and is written as one parquet file the moment it is complete; a rerun skips the
shards that exist, and `accelerate launch` shares the missing shards out between processes. Every synthetic image
draws its λ and its seed from (run seed, source index, prompt index) only ([`pipeline_dalda.seeding`]), and the
CLIPScores are computed once per run and saved, so the result does not depend on the batch size, the order, a resume
or the number of processes.

CLIPScore and AGS are the pipeline's own: the run scores each real image with [`DALDAPipeline.clip_scorer`] as it is
stored (before any resize), and every batch goes through [`DALDAPipeline.__call__`] with those scores and one λ
generator per item, which draws λ as it would for a Python user. The same scorer then scores each synthetic image as
it is stored, in the batch that made it: its class fidelity, the column `synthetic_clip_score`. With
`min_synthetic_score`, an image below it is made again ([`SyntheticItem.next_attempt`]: a new seed from its own
stream, λ moved toward the real image) in later rounds of the same shard, up to `max_attempts`; its row keeps the
best-scoring attempt and records them all.

`method="real_guidance"` and `method="da_fusion"` make the paper's two baselines in the same rows and layout: the
methods differ only in their prompts, models and generation step ([`dataset_builders.methods`]). DA-Fusion first
learns each class's token from the run's shots, into the folder [`TOKENS_DIR`] of its output.

Keeping the accelerator busy: the CLIPScores are computed first, in batches. Then each process builds its shards as
a pipeline of four stages, so that denoising waits for nothing but denoising ([`DatasetAugmenter.build_shards`]):

1. decode — a background thread decodes the next shard's real images (EXIF, any mode) while this shard denoises;
2. generate — this thread encodes the shard's real images for the IP-Adapter (once, batched) and denoises its
   synthetic images in batches of `batch_size`, across real images;
3. encode — a thread pool resizes each finished batch back to its real images' sizes and PNG-encodes it while the
   next batch denoises;
4. write — a background thread writes the finished shard (its report, then its parquet file, each atomically)
   while the next shard starts.

The threads only move work in time, never change it: a shard holds the same rows however it was built. A shard is on
disk only once complete, so a crash loses at most the shards being built or waiting to be written; the rerun makes
them again, exactly.
"""

import hashlib
import json
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import datasets
import PIL.Image
from datasets.features.image import encode_pil_image
from accelerate import PartialState
from tqdm.auto import tqdm

from pipeline_dalda import AdaptiveGuidanceScaling, DALDAPipeline
from pipeline_dalda.arguments import ModelArguments
from pipeline_dalda.atomic import create_output_dir, remove_stale_temporaries, write_json_atomically
from pipeline_dalda.images import BadImage, load_image
from pipeline_dalda.loading import load_dalda_pipeline
from pipeline_dalda.resume import ensure_same_settings, record_settings
from pipeline_dalda.seeding import item_seed
from pipeline_dalda.textual_inversion_arguments import TextualInversionArguments

from .arguments import AugmentArguments, SourceArguments
from .hub_layout import (
    ALL_TOKENS_FILE,
    TOKENS_DIR,
    WORK_DIR,
    image_settings,
    output_features,
    push_to_hub,
    resolved_settings,
    shard_path,
    shard_problem,
    trial_name,
    write_shard,
)
from .methods import SyntheticItem, class_prompts, class_tokens_loaded, method_generation, method_models
from .report import finalize_output, write_trials_card
from .source import RealImages, load_real_images, run_shots
from .textual_inversion import check_token_inputs, decoded_shots, train_class_tokens, training_settings


logger = logging.getLogger(__name__)

ENCODER_THREADS = 2
"""Threads that PNG-encode finished images while the next batch denoises."""
SCORING_BATCH_SIZE = 32
"""Real images per CLIPScore call; fixed, so that the scores do not depend on `batch_size`."""


@contextmanager
def _datasets_progress_bars_hidden() -> Iterator[None]:
    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


class RealRow(NamedTuple):
    """A usable real row of a shard: its source row, its image as stored, and decoded."""

    source_index: int
    stored: dict
    image: PIL.Image.Image


@dataclass
class OutputRow:
    """One row of the augmented dataset, by column ([`output_features`]). A synthetic row holds the attempt it kept
    (its best-scoring one) and every attempt's λ and score; a real row has none of these (its `clip_score` is its
    own)."""

    image: dict | Future
    """The stored image (`{"bytes": ..., "path": None}`), or the encoding that will give it."""
    label: int
    is_synthetic: bool
    source_index: int
    prompt: str | None = None
    ip_adapter_scale: float | None = None
    clip_score: float | None = None
    seed: int | None = None
    strength: float | None = None
    synthetic_clip_score: float | None = None
    attempts: int | None = None
    attempt_ip_adapter_scales: list[float | None] | None = None
    attempt_synthetic_clip_scores: list[float | None] | None = None


class Attempt(NamedTuple):
    """One generation of a synthetic image: its item, the image at its real image's size, its λ and strength (None
    where the method has none) and its own CLIPScore (None where no CLIP model is loaded)."""

    item: SyntheticItem
    image: PIL.Image.Image
    ip_adapter_scale: float | None
    strength: float | None
    score: float | None


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
        compiled: bool = False,
    ):
        self.real, self.prompts, self.progress = real, prompts, progress
        self.clip_scores, self.process_index = clip_scores, process_index
        # What made this process's shards, in each shard's report: the device and dtype (which a rerun must match by
        # type and value, [`image_settings`]) and whether the UNet was compiled (which it need not).
        self.made_with = {"device": str(pipe.device), "dtype": str(pipe.dtype).removeprefix("torch."),
                          "compile": compiled}
        self.source_args, self.args = source_args, args
        self.features = output_features(real.class_names)
        self.generation = method_generation(pipe, args, ags, source_args.num_shots)
        self.scorer = pipe.clip_scorer(args.clip_score_mode) if pipe.clip_model is not None else None

    def build_shards(self, shards: list[tuple[int, list[int]]], count: int) -> None:
        """Builds `shards` — (shard index, source rows) each — one after another, decoding the next shard's real
        images and writing finished shards in the background (see the module docstring)."""
        with (
            _datasets_progress_bars_hidden(),  # the run's own bar counts images across shards
            ThreadPoolExecutor(1, thread_name_prefix="dalda-decode") as decoder,
            ThreadPoolExecutor(ENCODER_THREADS, thread_name_prefix="dalda-encode") as encoder,
            ThreadPoolExecutor(1, thread_name_prefix="dalda-write") as writer,
        ):
            decoded = decoder.submit(self._decode, shards[0][1]) if shards else None
            written: Future | None = None
            for position, (index, source_indices) in enumerate(shards):
                images = decoded.result()
                if position + 1 < len(shards):
                    decoded = decoder.submit(self._decode, shards[position + 1][1])
                shard, report = self._generate_shard(source_indices, images, encoder)
                if written is not None:
                    written.result()  # a failed write stops the run here; at most one shard waits in memory
                written = writer.submit(self._write_shard, index, count, shard, report)
            if written is not None:
                written.result()

    def _decode(self, source_indices: list[int]) -> dict[int, PIL.Image.Image | BadImage]:
        """Each source row's real image, decoded, or why it cannot be."""
        values = self.real.dataset.select(source_indices)[self.source_args.image_column]
        decoded: dict[int, PIL.Image.Image | BadImage] = {}
        for source_index, value in zip(source_indices, values):
            try:
                decoded[source_index] = load_image(value)
            except BadImage as error:
                decoded[source_index] = error
        return decoded

    def _generate_shard(
        self, source_indices: list[int], decoded: dict[int, PIL.Image.Image | BadImage], encoder: ThreadPoolExecutor
    ) -> tuple[datasets.Dataset, dict[str, Any]]:
        """A shard's rows, made by `datasets.map` from its real rows, and its report."""
        skipped: list[dict[str, Any]] = []
        rows = self.real.dataset.select(source_indices).add_column("source_index", source_indices)
        shard = rows.map(
            partial(self._augment_batch, decoded=decoded, encoder=encoder, skipped=skipped),
            batched=True,
            batch_size=len(source_indices),
            remove_columns=rows.column_names,
            features=self.features,
            keep_in_memory=True,
            # Nothing is cached (the shard is kept in memory): name the result instead of hashing the transform.
            new_fingerprint=hashlib.sha256(json.dumps(source_indices).encode()).hexdigest()[:32],
        )
        return shard, {"skipped": skipped, "process": self.process_index, "made_with": self.made_with}

    def _write_shard(self, index: int, count: int, shard: datasets.Dataset, report: dict[str, Any]) -> None:
        """Writes a shard's report, then its parquet file: the parquet file existing means the shard is finished."""
        output_dir = Path(self.args.output_dir)
        write_json_atomically(output_dir / WORK_DIR / "reports" / f"shard-{index:05d}.json", report)
        write_shard(shard, shard_path(output_dir, index, count), output_dir)

    def _generate(self, prepared: Any, items: list[SyntheticItem], reals: list[RealRow]) -> list[Attempt]:
        """One batch of synthetic images, each resized back to its real image's size (as the dataset stores it) and
        scored there by the CLIPScore its real image got."""
        generated = self.generation(prepared, items)
        images = [
            image.resize(reals[item.real_index].image.size, PIL.Image.BILINEAR)
            for item, image in zip(items, generated.images)
        ]
        scores: list[float | None] = [None] * len(items)
        if self.scorer is not None:
            labels = [self.real.labels[item.source_index] for item in items]
            scores = self.scorer(images, labels, self.real.class_names).tolist()
        made = zip(items, images, generated.ip_adapter_scales, generated.strengths, scores)
        return [Attempt(*values) for values in made]

    def _regenerates(self, attempt: Attempt) -> bool:
        """Whether an attempt's image is below `min_synthetic_score` with attempts left to make it again."""
        threshold, attempts_left = self.args.min_synthetic_score, self.args.max_attempts - attempt.item.attempt - 1
        return threshold is not None and attempt.score < threshold and attempts_left > 0

    def _augment_batch(
        self,
        batch: dict[str, list],
        decoded: dict[int, PIL.Image.Image | BadImage],
        encoder: ThreadPoolExecutor,
        skipped: list[dict[str, Any]],
    ) -> dict[str, list]:
        """Real rows in, real + synthetic rows out (each real row followed by its synthetic rows)."""
        reals: list[RealRow] = []  # every usable real row
        for source_index, value in zip(batch["source_index"], batch[self.source_args.image_column]):
            image = decoded[source_index]
            if isinstance(image, BadImage):
                logger.warning("Skipping source row %d: %s", source_index, image)
                skipped.append({"source_index": source_index, "reason": str(image)})
                self.progress.update(self.args.num_prompts)
            else:
                reals.append(RealRow(source_index, stored=value, image=image))

        rows_by_real: list[list[OutputRow]] = []
        items = []  # every synthetic image of the batch
        for real_index, real_row in enumerate(reals):
            source_index = real_row.source_index
            label, score = self.real.labels[source_index], self.clip_scores[source_index]
            real_output = OutputRow(
                image=embedded(real_row.stored), label=label, is_synthetic=False, source_index=source_index,
                clip_score=score,
            )
            rows_by_real.append([real_output])
            prompts = self.prompts[self.real.class_names[label]]
            for prompt_index in range(self.args.num_prompts):
                seed = item_seed(self.args.seed, source_index, prompt_index)
                items.append(
                    SyntheticItem(
                        real_index=real_index,
                        source_index=source_index,
                        prompt_index=prompt_index,
                        prompt=prompts[prompt_index],
                        clip_score=score,
                        seed=seed,
                    )
                )

        prepared = self.generation.prepare([real_row.image for real_row in reals]) if reals else None
        made: dict[tuple[int, int], list[Attempt]] = {}  # (real image, prompt) → its attempts so far
        kept: dict[tuple[int, int], tuple[Attempt, Future]] = {}  # → the attempt kept, its image being PNG-encoded
        pending = items
        while pending:  # the first attempts, then each round of regenerations
            regenerations = []
            for start in range(0, len(pending), self.args.batch_size):
                batch_items = pending[start : start + self.args.batch_size]
                for attempt in self._generate(prepared, batch_items, reals):
                    item = attempt.item
                    attempts = made.setdefault((item.real_index, item.prompt_index), [])
                    attempts.append(attempt)
                    if self._regenerates(attempt):
                        regenerations.append(
                            item.next_attempt(self.args.seed, attempt.ip_adapter_scale, self.args.retry_scale_step)
                        )
                    else:
                        best = kept_attempt(attempts)
                        kept[item.real_index, item.prompt_index] = best, encoder.submit(encode_pil_image, best.image)
                self.progress.update(len(batch_items))
            if regenerations and self.progress.total is not None:
                self.progress.total += len(regenerations)  # the bar counts every image made
            pending = regenerations
        for item in items:
            attempts = made[item.real_index, item.prompt_index]
            best, image = kept[item.real_index, item.prompt_index]
            rows_by_real[item.real_index].append(
                OutputRow(
                    image=image,
                    label=self.real.labels[item.source_index],
                    is_synthetic=True,
                    source_index=item.source_index,
                    prompt=item.prompt,
                    ip_adapter_scale=best.ip_adapter_scale,
                    clip_score=item.clip_score,
                    seed=best.item.seed,
                    strength=best.strength,
                    synthetic_clip_score=best.score,
                    attempts=len(attempts),
                    attempt_ip_adapter_scales=[attempt.ip_adapter_scale for attempt in attempts],
                    attempt_synthetic_clip_scores=[attempt.score for attempt in attempts],
                )
            )
        rows = [row for real_rows in rows_by_real for row in real_rows]
        for row in rows:
            if isinstance(row.image, Future):
                row.image = row.image.result()
        return {name: [getattr(row, name) for row in rows] for name in self.features}


def kept_attempt(attempts: list[Attempt]) -> Attempt:
    """The attempt a synthetic row keeps: its best-scoring one, which is the one that reached `min_synthetic_score`
    where one did (regeneration stops there)."""
    return attempts[0] if len(attempts) == 1 else max(attempts, key=lambda attempt: attempt.score)


def embedded(image: dict) -> dict:
    """A stored real image with its bytes: one stored as a file path is read, so the dataset holds every image."""
    if image.get("bytes") is None:
        return {"bytes": Path(image["path"]).read_bytes(), "path": None}
    return image


def score_real_images(
    pipe: DALDAPipeline, real: RealImages, selected: list[int], source_args: SourceArguments, args: AugmentArguments
) -> dict[int, float | None]:
    """The CLIPScore of every selected real image (None where it cannot be decoded or no CLIP model is loaded),
    scored as stored, in batches of [`SCORING_BATCH_SIZE`].

    Computed once per run and saved, so that λ's are the same whatever the shards, batches, processes or resumes:
    CLIP on the CPU can differ in the last bits from one call to the next.
    """
    scores: dict[int, float | None] = dict.fromkeys(selected)
    if pipe.clip_model is None:
        return scores
    scorer = pipe.clip_scorer(args.clip_score_mode)
    with tqdm(total=len(selected), desc="CLIPScore", unit="img") as bar:
        for start in range(0, len(selected), SCORING_BATCH_SIZE):
            batch = selected[start : start + SCORING_BATCH_SIZE]
            images = {}
            for index, value in zip(batch, real.dataset.select(batch)[source_args.image_column]):
                try:
                    images[index] = load_image(value)
                except BadImage:
                    continue
            labels = [real.labels[index] for index in images]
            batch_scores = scorer(list(images.values()), labels, real.class_names) if images else []
            scores.update(zip(images, (float(score) for score in batch_scores)))
            bar.update(len(batch))
    return scores


def run_settings(
    source_args: SourceArguments,
    args: AugmentArguments,
    model_args: ModelArguments,
    ags: AdaptiveGuidanceScaling,
    textual_inversion: TextualInversionArguments | None = None,
) -> dict[str, Any]:
    """What decides the output's content; a resumed run must match it. The batch size, the GPU index and `compile`
    do not; the dtype and the device type do ([`image_settings`]). DA-Fusion's adds how its tokens are learned
    (`textual_inversion`, DA-Fusion's settings when None)."""
    generation = asdict(args)
    for name in ("output_dir", "seeds", "batch_size", "contact_sheet_rows", "push_to_hub", "private"):
        generation.pop(name)
    if args.prompt_bank:
        generation["prompt_bank_sha256"] = hashlib.sha256(Path(args.prompt_bank).read_bytes()).hexdigest()
    models = asdict(model_args)
    for name in ("device", "dtype", "compile"):
        models.pop(name)
    models.update(image_settings(model_args))
    # Local paths resolved: the same folders given from elsewhere are the same run, and a record read from elsewhere
    # still finds them.
    settings = {"source": asdict(source_args), "generation": generation, "models": models, "ags": asdict(ags)}
    if args.method == "da_fusion":
        settings["textual_inversion"] = training_settings(textual_inversion or TextualInversionArguments())
    return resolved_settings(settings)


def check_run_inputs(
    args: AugmentArguments,
    model_args: ModelArguments,
    class_names: list[str],
    textual_inversion: TextualInversionArguments | None,
) -> None:
    """Refuses, before anything is written, the inputs a run would otherwise refuse only once it had started: a
    refused run must leave nothing that makes the corrected command look like another run.

    - `min_synthetic_score` without a CLIP model to score with;
    - DA-Fusion's textual-inversion inputs ([`check_token_inputs`], with the model's tokenizer);
    - a textual-inversion option given to another method, which would be ignored.
    """
    if args.min_synthetic_score is not None and not model_args.clip_score_model:
        raise ValueError("`min_synthetic_score` scores each synthetic image with CLIP; name a `clip_score_model`.")
    training = textual_inversion or TextualInversionArguments()
    if args.method == "da_fusion":
        check_token_inputs(model_args.pretrained_model_name_or_path, class_names, training)
        return
    defaults = TextualInversionArguments()
    given = [name for name in (option.name for option in fields(training))
             if getattr(training, name) != getattr(defaults, name)]
    if given:
        raise ValueError(
            f"`{given[0]}` is a textual-inversion option, which `method={args.method!r}` does not use (only "
            "'da_fusion' learns tokens); leave it out."
        )


PipelineLoader = Callable[[ModelArguments], DALDAPipeline]


def augment_dataset(
    source_args: SourceArguments,
    args: AugmentArguments,
    model_args: ModelArguments,
    ags: AdaptiveGuidanceScaling,
    load_pipeline: PipelineLoader = load_dalda_pipeline,
    textual_inversion: TextualInversionArguments | None = None,
) -> dict[str, Any] | None:
    """Runs the whole job in this process's share; the main process then writes the card (and pushes). With
    `args.seeds`, runs one trial per seed ([`augment_trials`]).

    Args:
        load_pipeline: loads the pipeline, when this process has work for it.
        textual_inversion: how DA-Fusion learns its tokens (DA-Fusion's settings when None); other methods ignore it.

    Returns the run summary on the main process, None on the others.
    """
    if args.seeds is not None:
        return augment_trials(source_args, args, model_args, ags, textual_inversion)
    model_args = method_models(args, model_args)
    # On the CPU, accelerate forms a process group only when told it runs on the CPU.
    state = PartialState(cpu=model_args.resolved_device().type == "cpu")
    real = load_real_images(source_args)
    check_run_inputs(args, model_args, real.class_names, textual_inversion)
    selected = run_shots(real, source_args, args.seed)
    prompts = class_prompts(args, real.class_names)
    settings = run_settings(source_args, args, model_args, ags, textual_inversion)
    output_dir = create_output_dir(args.output_dir)  # once the inputs are known to be good: a bad one leaves nothing
    settings_file = output_dir / WORK_DIR / "run.json"
    # The main process records the settings on a first start; past the barrier, every process checks them (so that
    # a refusal stops all of them alike, none left waiting).
    if state.is_main_process:
        remove_stale_temporaries(output_dir / WORK_DIR / "tmp")
        record_settings(settings_file, settings)
    state.wait_for_everyone()
    ensure_same_settings(settings_file, settings, work=output_dir)

    size = args.real_images_per_shard
    shards = [selected[start : start + size] for start in range(0, len(selected), size)]
    if state.is_main_process:
        remove_damaged_shards(output_dir, shards, args.num_prompts)
    state.wait_for_everyone()
    todo = [index for index in range(len(shards)) if not shard_path(output_dir, index, len(shards)).exists()]
    if len(todo) < len(shards) and state.is_main_process:
        logger.info("Resuming: %d of %d shards are already written.", len(shards) - len(todo), len(shards))
    scores_file = output_dir / WORK_DIR / "clip_scores.json"
    tokens_file = output_dir / TOKENS_DIR / ALL_TOKENS_FILE
    pipe = None

    def loaded() -> DALDAPipeline:
        nonlocal pipe
        if pipe is None:
            if model_args.device == "auto":
                model_args.device = str(state.device)
            pipe = load_pipeline(model_args)
            pipe.set_progress_bar_config(disable=True)
        return pipe

    if args.method == "da_fusion" and not tokens_file.exists():  # every process trains its share of the classes
        shots = decoded_shots(real, selected, source_args.image_column)
        train_class_tokens(loaded(), shots, textual_inversion or TextualInversionArguments(), tokens_file.parent,
                           seed=args.seed, settings=settings)
    with state.split_between_processes(todo) as mine:
        if state.is_main_process and not scores_file.exists():
            write_json_atomically(scores_file, score_real_images(loaded(), real, selected, source_args, args))
        state.wait_for_everyone()
        clip_scores = {int(index): score for index, score in json.loads(scores_file.read_text()).items()}
        if mine:
            total = sum(len(shards[index]) for index in mine) * args.num_prompts
            with (
                class_tokens_loaded(loaded(), tokens_file) if args.method == "da_fusion" else nullcontext(),
                tqdm(total=total, desc="synthetic images", unit="img", disable=not state.is_local_main_process) as bar,
            ):
                augmenter = DatasetAugmenter(
                    loaded(), real, prompts, source_args, args, ags, clip_scores, bar, state.process_index,
                    compiled=model_args.compile,
                )
                augmenter.build_shards([(index, shards[index]) for index in mine], len(shards))
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    summary = finalize_output(output_dir, real, selected, settings, args.contact_sheet_rows, len(shards))
    if args.push_to_hub:
        push_finished(output_dir, args)
    return summary


def remove_damaged_shards(output_dir: Path, shards: list[list[int]], num_prompts: int) -> None:
    """Removes every written shard that cannot be trusted ([`shard_problem`]: a truncated or partial copy, another
    row count than its real images make), saying so, so that the run makes it again; generation is deterministic, so
    it comes back with the same rows."""
    for index, sources in enumerate(shards):
        path = shard_path(output_dir, index, len(shards))
        if not path.exists():
            continue
        report = output_dir / WORK_DIR / "reports" / f"shard-{index:05d}.json"
        expected = None
        if report.exists():
            skipped = json.loads(report.read_text(encoding="utf-8"))["skipped"]
            expected = (len(sources) - len(skipped)) * (1 + num_prompts)
        problem = shard_problem(path, expected)
        if problem:
            logger.warning("%s is damaged (%s); making it again.", path.relative_to(output_dir), problem)
            path.unlink()


def push_finished(output_dir: Path, args: AugmentArguments) -> None:
    """Uploads a finished output folder; a failed upload says how to retry it."""
    try:
        logger.info("Pushed to %s", push_to_hub(output_dir, args.push_to_hub, private=args.private))
    except Exception as error:
        raise ValueError(
            f"Uploading to {args.push_to_hub!r} failed ({type(error).__name__}: {error}). The dataset is complete "
            f"in {str(output_dir)!r}; run the same command again to retry the upload."
        ) from error


def loaded_once(load: PipelineLoader) -> PipelineLoader:
    """`load`, run by the first call only: every later call returns the pipeline it loaded."""
    loaded: list[DALDAPipeline] = []

    def load_once(model_args: ModelArguments) -> DALDAPipeline:
        if not loaded:
            loaded.append(load(model_args))
        return loaded[0]

    return load_once


def augment_trials(
    source_args: SourceArguments,
    args: AugmentArguments,
    model_args: ModelArguments,
    ags: AdaptiveGuidanceScaling,
    textual_inversion: TextualInversionArguments | None = None,
) -> dict[str, Any] | None:
    """The paper's trials: one complete run per seed of `args.seeds`, each in the folder `seed_<s>` of the output
    (resumable, shared between processes and guarded by its own settings, as any run), then one card that makes
    each trial a configuration of one dataset.

    The trials of one output folder differ by their seed only: a rerun that adds seeds adds trials, and a rerun with
    other settings is refused.

    Returns `{seed: run summary}` on the main process, None on the others.
    """
    models = method_models(args, model_args)
    state = PartialState(cpu=models.resolved_device().type == "cpu")
    class_names = load_real_images(source_args).class_names
    # Bad inputs are refused before anything is made.
    check_run_inputs(args, models, class_names, textual_inversion)
    class_prompts(args, class_names)
    shared = run_settings(source_args, replace(args, seeds=None), model_args, ags, textual_inversion)
    root = create_output_dir(args.output_dir)
    shared["generation"].pop("seed")
    if state.is_main_process:
        record_settings(root / WORK_DIR / "run.json", shared)
    state.wait_for_everyone()
    ensure_same_settings(root / WORK_DIR / "run.json", shared, work=root)
    summaries = {}
    load_pipeline = loaded_once(load_dalda_pipeline)  # the trials share one model: loaded once, by the first
    for seed in args.seeds:
        logger.info("Trial %d of %d: seed %d", len(summaries) + 1, len(args.seeds), seed)
        trial = replace(args, seed=seed, seeds=None, output_dir=str(root / trial_name(seed)), push_to_hub=None)
        summaries[seed] = augment_dataset(source_args, trial, model_args, ags, load_pipeline, textual_inversion)
    if not state.is_main_process:
        return None
    write_trials_card(root, summaries)
    if args.push_to_hub:
        push_finished(root, args)
    return summaries
