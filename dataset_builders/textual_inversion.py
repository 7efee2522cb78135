"""`dalda textual-inversion`: DA-Fusion's per-class tokens for a few-shot dataset, resumable and shared out between
processes — and [`train_class_tokens`], the same training for a caller that has its own shots and pipeline
(`dalda augment --method da_fusion` trains into `<its output>/textual_inversion/` before generating).

The shots are the ones `dalda augment` takes: the same source options and seed, the same selection ([`run_shots`]).
The trainer is [`pipeline_dalda.textual_inversion.TextualInversionTrainer`]; its docstring has the method.

The output folder:

    class_tokens.safetensors   every class's token, {token: embedding}: `load_class_tokens(pipe, path)`
    tokens/<name>.safetensors  one class's token in diffusers' format: `pipe.load_textual_inversion(path)`
    textual_inversion.json     how they were made: the settings, and each class's token, file, shots and losses
    .dalda/run.json            the settings a rerun must match (never published)

A class's file is written atomically the moment its training ends, so a killed run loses at most the classes being
trained; a rerun with the same settings trains only the classes without a file, and a rerun with other settings is
refused. Under `accelerate launch` each process trains its share of the unfinished classes; a class's token depends
only on its shots, the settings and (seed, class name), never on the order, the processes or a resume.
"""

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import PIL.Image
import torch
from accelerate import PartialState
from safetensors import SafetensorError
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import CLIPTokenizer

from pipeline_dalda.atomic import atomic_output, create_output_dir, remove_stale_temporaries, write_json_atomically
from pipeline_dalda.images import BadImage, load_image
from pipeline_dalda.loading import load_dalda_pipeline
from pipeline_dalda.resume import ensure_same_settings, record_settings
from pipeline_dalda.textual_inversion import (
    TOKEN_FILE_FORMAT,
    StableDiffusionComponents,
    TextualInversionTrainer,
    check_tokenizer,
    class_seed,
    class_token,
    images_fingerprint,
    read_token_file,
    save_learned_token,
    token_file_name,
)
from pipeline_dalda.textual_inversion_arguments import (
    TextualInversionArguments,
    TextualInversionModelArguments,
    TextualInversionRunArguments,
)

from .arguments import SourceArguments
from .hub_layout import ALL_TOKENS_FILE, WORK_DIR, image_settings, public_settings, resolved_settings
from .source import RealImages, load_real_images, run_shots


logger = logging.getLogger(__name__)

CLASS_TOKENS_DIR = "tokens"
"""The folder of the per-class token files (inside the output folder)."""
RECORD_FILE = "textual_inversion.json"
"""How the tokens were made (settings with local paths reduced to their names, each class's token and losses)."""
SETTINGS_FILE = f"{WORK_DIR}/run.json"


def token_path(output_dir: str | os.PathLike, class_name: str) -> Path:
    """Where one class's token file is."""
    return Path(output_dir, CLASS_TOKENS_DIR, token_file_name(class_name))


def training_settings(args: TextualInversionArguments) -> dict[str, Any]:
    """What decides the tokens, of `args`: the mixed precision and gradient checkpointing change speed and memory,
    not the method (as the batch size of `dalda augment`), so a rerun may change them."""
    settings = asdict(args)
    for name in ("mixed_precision", "gradient_checkpointing"):
        settings.pop(name)
    return settings


def _checked_tokens(class_names: Sequence[str]) -> dict[str, str]:
    """Each class's token; two classes whose tokens read alike (the tokenizer ignores case) are refused."""
    tokens = {name: class_token(name) for name in class_names}
    seen: dict[str, str] = {}
    for name, token in tokens.items():
        other = seen.setdefault(token.lower(), name)
        if other != name:
            raise ValueError(
                f"The classes {other!r} and {name!r} would share the token {token!r} (spaces become underscores and "
                "case is ignored); rename one."
            )
    return tokens


def check_token_inputs(
    pretrained_model_name_or_path: str, class_names: Sequence[str], args: TextualInversionArguments
) -> None:
    """Refuses, before anything is written, every input the training would refuse: two classes whose tokens read
    alike, and — with the model's tokenizer, loaded alone (small and quick; the model loads later, if at all) — an
    `initializer_token` that is not one token, or a class token the tokenizer already has. Run first, a refused run
    leaves no record that would make the corrected command look like another run."""
    tokens = _checked_tokens(class_names)
    try:
        tokenizer = CLIPTokenizer.from_pretrained(pretrained_model_name_or_path, subfolder="tokenizer")
    except OSError as error:
        raise ValueError(
            f"The tokenizer of `pretrained_model_name_or_path` {pretrained_model_name_or_path!r} cannot be loaded: "
            f"{error}"
        ) from error
    check_tokenizer(tokenizer, args.initializer_token, list(tokens.values()))


def _finished(path: Path) -> bool:
    """Whether a class's token file is there and whole; a damaged one is removed, saying so."""
    if not path.exists():
        return False
    try:
        read_token_file(path)
    except (OSError, SafetensorError) as error:
        logger.warning("%s is damaged (%s); training its class again.", path.name, error)
        path.unlink()
        return False
    return True


def token_run_settings(
    shots_by_class: Mapping[str, Sequence[PIL.Image.Image]],
    args: TextualInversionArguments,
    seed: int,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What decides a run's tokens: `settings`, the training settings and seed, and each class's token and a
    fingerprint of its shots. Refuses classes without shots, and two classes whose tokens read alike."""
    tokens = _checked_tokens(list(shots_by_class))
    empty = [name for name, images in shots_by_class.items() if not images]
    if empty:
        raise ValueError(f"No images for the classes {empty[:10]}; every class needs at least one shot.")
    return {
        **(settings or {}),
        "textual_inversion": {**training_settings(args), "seed": seed},
        "classes": {
            name: {"token": tokens[name], "shots_sha256": images_fingerprint(images)}
            for name, images in shots_by_class.items()
        },
    }


def start_token_run(output_dir: str | os.PathLike, run: Mapping[str, Any], state: PartialState) -> list[str]:
    """Starts or resumes the run `run` ([`token_run_settings`]) in `output_dir`, on every process at once: the
    settings are recorded on a first start and must match on a later one, and damaged class files are removed.

    Returns the classes still to train (on every process).
    """
    output_dir = create_output_dir(output_dir)
    settings_file = output_dir / SETTINGS_FILE
    # The main process records the settings on a first start; past the barrier, every process checks them (so that
    # a refusal stops all of them alike).
    if state.is_main_process:
        remove_stale_temporaries(output_dir / WORK_DIR / "tmp")
        record_settings(settings_file, run)
    state.wait_for_everyone()
    ensure_same_settings(settings_file, run, work=output_dir)
    classes = list(run["classes"])
    if state.is_main_process:
        done = [name for name in classes if _finished(token_path(output_dir, name))]
        if done:
            logger.info("Resuming: %d of %d classes already have their token.", len(done), len(classes))
    state.wait_for_everyone()
    return [name for name in classes if not token_path(output_dir, name).exists()]


def train_class_tokens(
    components: StableDiffusionComponents,
    shots_by_class: Mapping[str, Sequence[PIL.Image.Image]],
    args: TextualInversionArguments,
    output_dir: str | os.PathLike,
    seed: int = 0,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Learns one token per class ([`class_token`]: `persian cat` → `<persian_cat>`) and writes them to
    `output_dir`; resumes a run killed midway, and refuses one with other settings.

    Runs as `dalda augment` does under `accelerate launch`: every process calls it with the same arguments and trains
    its share of the unfinished classes; the main process then writes the file of all classes.

    Args:
        components: a Stable Diffusion 1.x pipeline (or its tokenizer, text encoder, UNet, VAE and scheduler), on
            the device to train on. It is left as it was: no token is added to it (load the result with
            `load_class_tokens(pipe, <output_dir>/class_tokens.safetensors)`).
        shots_by_class: each class's few-shot images, in class order.
        args: the training settings (DA-Fusion's by default).
        output_dir: where the token files go (created if needed).
        seed: seeds each class's draws, with its name ([`class_seed`]).
        settings: more of what decides the run (e.g. the source dataset and the model), recorded with the training
            settings, the seed and a fingerprint of each class's shots; a rerun must match all of them.

    Returns:
        `{class name: token}` for every class, on every process.
    """
    run = token_run_settings(shots_by_class, args, seed, settings)
    state = PartialState(cpu=components.unet.device.type == "cpu")
    output_dir = Path(output_dir)
    todo = start_token_run(output_dir, run, state)
    with state.split_between_processes(todo) as mine:
        if mine:
            trainer = TextualInversionTrainer(components, args)
            for name in tqdm(mine, desc="classes", unit="class", disable=not state.is_local_main_process):
                token = run["classes"][name]["token"]
                learned = trainer.train(
                    token, shots_by_class[name], class_seed(seed, name), show_progress=state.is_local_main_process
                )
                metadata = {
                    "format": TOKEN_FILE_FORMAT,
                    "class_name": name,
                    "token": token,
                    "seed": str(class_seed(seed, name)),
                    "steps": str(len(learned.losses)),
                    "losses": json.dumps([round(loss, 6) for loss in learned.losses]),
                }
                path = token_path(output_dir, name)
                save_learned_token(path, learned, metadata, temp_dir=output_dir / WORK_DIR / "tmp")
                logger.info("%s: learned %s (loss %.4f over its last 10%% of steps)", name, token,
                            _tail_mean(learned.losses))
    return finish_token_run(output_dir, run, state)


def finish_token_run(output_dir: str | os.PathLike, run: Mapping[str, Any], state: PartialState) -> dict[str, str]:
    """Once every process is done: the main process writes the file of all classes and the record. Returns
    `{class name: token}`."""
    state.wait_for_everyone()
    if state.is_main_process:
        write_all_tokens(Path(output_dir), list(run["classes"]), run)
    state.wait_for_everyone()
    return {name: entry["token"] for name, entry in run["classes"].items()}


def _tail_mean(losses: Sequence[float]) -> float:
    tail = losses[-max(1, len(losses) // 10) :]
    return sum(tail) / len(tail)


def write_all_tokens(output_dir: Path, class_names: Sequence[str], run: Mapping[str, Any]) -> None:
    """Writes [`ALL_TOKENS_FILE`] from the class files, in class order, and the record [`RECORD_FILE`]."""
    embeddings: dict[str, torch.Tensor] = {}
    classes = {}
    for name in class_names:
        path = token_path(output_dir, name)
        tensors, metadata = read_token_file(path)
        (token, embedding), = tensors.items()
        embeddings[token] = embedding
        losses = json.loads(metadata.get("losses", "[]"))
        classes[name] = {
            **run["classes"][name],
            "file": str(path.relative_to(output_dir)),
            "loss_first_10_percent": _head_mean(losses),
            "loss_last_10_percent": _tail_mean(losses) if losses else None,
        }
    with atomic_output(output_dir / ALL_TOKENS_FILE, temp_dir=output_dir / WORK_DIR / "tmp") as temporary:
        tokens = {name: run["classes"][name]["token"] for name in class_names}
        save_file(embeddings, str(temporary), metadata={"format": TOKEN_FILE_FORMAT, "classes": json.dumps(tokens)})
    record = public_settings({key: value for key, value in run.items() if key != "classes"})
    write_json_atomically(output_dir / RECORD_FILE, {**record, "classes": classes})


def _head_mean(losses: Sequence[float]) -> float | None:
    if not losses:
        return None
    head = losses[: max(1, len(losses) // 10)]
    return sum(head) / len(head)


def decoded_shots(real: RealImages, selected: Sequence[int], image_column: str) -> dict[str, list[PIL.Image.Image]]:
    """The selected rows' images, decoded, by class (in class order). An image that cannot be decoded is skipped and
    reported; a class left with none is left out, with a warning."""
    shots: dict[str, list[PIL.Image.Image]] = {name: [] for name in real.class_names}
    for index, value in zip(selected, real.dataset.select(selected)[image_column]):
        try:
            image = load_image(value)
        except BadImage as error:
            logger.warning("Skipping source row %d: %s", index, error)
            continue
        shots[real.class_names[real.labels[index]]].append(image)
    missing = [name for name, images in shots.items() if not images]
    if missing:
        logger.warning("No usable shot for %d classes, which get no token: %s", len(missing), missing[:10])
    return {name: images for name, images in shots.items() if images}


def class_shots(source_args: SourceArguments, seed: int) -> dict[str, list[PIL.Image.Image]]:
    """Each class's few-shot images, decoded ([`decoded_shots`]): the rows `dalda augment` takes with the same source
    options and seed ([`run_shots`])."""
    real = load_real_images(source_args)
    selected = run_shots(real, source_args, seed)
    return decoded_shots(real, selected, source_args.image_column)


def train_dataset_tokens(
    model_args: TextualInversionModelArguments,
    source_args: SourceArguments,
    run_args: TextualInversionRunArguments,
    args: TextualInversionArguments,
) -> dict[str, str]:
    """`dalda textual-inversion`: the shots of every class (as `dalda augment` takes them), one token each, in
    `run_args.output_dir`. Returns `{class name: token}`."""
    state = PartialState(cpu=model_args.resolved_device().type == "cpu")
    shots = class_shots(source_args, run_args.seed)
    check_token_inputs(model_args.pretrained_model_name_or_path, list(shots), args)
    models = {
        "pretrained_model_name_or_path": model_args.pretrained_model_name_or_path,
        "vae": model_args.vae,
        **image_settings(model_args),
    }
    settings = resolved_settings({"source": asdict(source_args), "models": models})
    # Settings checked before the model loads: a changed one, or a bad folder, is refused at once; and a finished
    # run loads no model.
    run = token_run_settings(shots, args, run_args.seed, settings)
    if not start_token_run(run_args.output_dir, run, state):
        return finish_token_run(run_args.output_dir, run, state)
    if model_args.device == "auto":
        model_args.device = str(state.device)
    pipe = load_dalda_pipeline(model_args)
    pipe.set_progress_bar_config(disable=True)
    return train_class_tokens(pipe, shots, args, run_args.output_dir, seed=run_args.seed, settings=settings)
