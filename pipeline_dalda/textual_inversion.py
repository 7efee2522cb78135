"""Textual inversion per class, as DA-Fusion's released code does it: the first half of DA-Fusion (Trabucco et al.,
2023, "Effective Data Augmentation With Diffusion Models"; `fine_tune.py` of `brandontrabucco/da-fusion`, run with its
`scripts/fine_tuning` settings; itself adapted from diffusers' `examples/textual_inversion/textual_inversion.py`).
That this is the DALDA paper's DA-Fusion baseline is our reading (DALDA's released code has none); DA-Fusion's
multi-vector variant, `fine_tune_upstream.py` (`--num_vectors`), is not implemented.

Each class gets one new token, `<class_name>` ([`class_token`]), whose input-embedding row starts as the row of
"the" and is the only thing that learns; the text encoder, UNet and VAE stay frozen. One step, on a batch of the
class's shots x (resized, randomly flipped) with prompts drawn from [`IMAGENET_TEMPLATES_SMALL`]:

    z₀ = s · (μ(x) + σ(x) · η)                      the VAE's posterior sampled, s = vae.config.scaling_factor
    z_t = √ᾱ_t · z₀ + √(1 − ᾱ_t) · ε,               t ~ U{0, …, T − 1}, ε, η ~ N(0, I)   (DDPM `add_noise`)
    loss = mean ‖ε_θ(z_t, t, τ(prompt)) − ε‖²       (the velocity instead of ε for v-prediction models)

then AdamW on the input-embedding matrix, after which every row but the new token's is put back, as DA-Fusion does
(so AdamW's weight decay reaches the new row only). The learning rate is constant, with no warm-up
([`TextualInversionArguments`] has the defaults: 1,000 steps of batch 4 at 512 px, lr 5e-4 · 4).

Two things are arranged differently from `fine_tune.py` without changing what a step computes:

- The VAE encodes each shot once per flip (μ and σ kept), and each step samples its posterior afresh, where
  `fine_tune.py` encodes every batch again: at 512 px that encoding is 4.3 TFLOP a batch of 4, against 5.4 TFLOP
  for the rest of the step (`scripts/benchmark_textual_inversion.py`).
- The frozen models are used as they are (a pipeline's own, on its device and in its dtype: shared, not copied);
  the trainer works on a float32 copy of the text encoder and of the tokenizer, so the pipeline is left exactly as
  it was — no token added, no weight changed ([`TextualInversionTrainer`]).

Every random draw of a class — the shuffle, templates, flips, posterior samples, noise and timesteps — comes from the
class's own seed ([`class_seed`]), so a class learns the same token whatever the other classes, the order, the
number of processes or a resume; DA-Fusion seeds every class of a trial with the trial's seed, through the global
generators.

Each learned token is saved in diffusers' format ([`save_learned_token`]: `{token: embedding}`, safetensors), which
`pipe.load_textual_inversion(path)` loads; [`load_class_tokens`] loads a file of many classes at once.
"""

import copy
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .atomic import atomic_output
from .dalda_scoring import to_rgb
from .seeding import STREAMS
from .textual_inversion_arguments import TextualInversionArguments


logger = logging.getLogger(__name__)


# Copied from DA-Fusion's `fine_tune.py` (`imagenet_templates_small`), which has it from diffusers' example.
IMAGENET_TEMPLATES_SMALL = (
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
)
"""The prompts a training image is shown with, `{}` the class's token; one drawn per image."""

FLIP_PROBABILITY = 0.5
"""The chance that a training image is flipped left to right (DA-Fusion's `flip_p`)."""

TOKEN_FILE_FORMAT = "diffusers textual inversion"
"""The `format` of a token file's header: `{token: embedding}`, each embedding one input-embedding row."""

LATENT_SCALING_FACTOR = 0.18215
"""Stable Diffusion 1.x's latent scale, which DA-Fusion writes out; a VAE's `config.scaling_factor` is used, and
this is only the fallback for a VAE config without one."""


def class_token(class_name: str) -> str:
    """The token learned for a class: its name in angle brackets, spaces as underscores (`persian cat` →
    `<persian_cat>`), as DA-Fusion's `format_name` writes it for training and generation alike."""
    return f"<{class_name.replace(' ', '_')}>"


def class_seed(run_seed: int, class_name: str) -> int:
    """The seed of every random draw of one class's training: from (run seed, class name) only."""
    name_key = np.frombuffer(hashlib.sha256(class_name.encode("utf-8")).digest(), dtype=np.uint32)
    sequence = np.random.SeedSequence([STREAMS["textual_inversion"], run_seed, *name_key.tolist()])
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> 1)  # < 2**63: a valid torch seed


def initializer_token_id(tokenizer, initializer_token: str) -> int:
    """The id of `initializer_token`, the word each new token's row starts from; refused unless it is one token for
    `tokenizer`."""
    ids = tokenizer.encode(initializer_token, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(
            f"`initializer_token` {initializer_token!r} is {len(ids)} tokens for this tokenizer; give a word that is "
            "one token (DA-Fusion: 'the')."
        )
    return ids[0]


def check_tokenizer(tokenizer, initializer_token: str, tokens: Sequence[str]) -> None:
    """Refuses, with `tokenizer` alone (no model), what training would refuse about the tokens: an
    `initializer_token` that is not one token, or a class's new token that the tokenizer already has. A caller checks
    this before it writes anything, so that a refused run leaves nothing behind."""
    initializer_token_id(tokenizer, initializer_token)
    vocabulary = tokenizer.get_vocab()
    known = [token for token in tokens if token in vocabulary]
    if known:
        raise ValueError(
            f"The tokenizer already has the tokens {known[:10]}; a class's token must be new (rename the class)."
        )


class StableDiffusionComponents(Protocol):
    """What textual inversion needs: a Stable Diffusion pipeline, or anything with the same attributes."""

    tokenizer: Any
    text_encoder: torch.nn.Module
    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler: Any


@dataclass
class LearnedToken:
    """One class's token after training."""

    token: str
    embedding: torch.Tensor
    """The token's input-embedding row (float32, on the CPU)."""
    losses: list[float]
    """The loss of every optimiser step (the mean over its accumulated batches)."""


def autocast_dtype(mixed_precision: str, weight_dtype: torch.dtype) -> torch.dtype | None:
    """The dtype the text encoder's forward pass is autocast to; None for none. 'auto' follows the frozen UNet's
    weights, as DA-Fusion's `weight_dtype` follows its `--mixed_precision`."""
    if mixed_precision == "auto":
        return weight_dtype if weight_dtype in (torch.float16, torch.bfloat16) else None
    return {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]


@contextmanager
def frozen_for_training(unet: torch.nn.Module, vae: torch.nn.Module, gradient_checkpointing: bool) -> Iterator[None]:
    """The shared UNet and VAE frozen (no weight gradient is computed or kept) and, if asked, the UNet checkpointing
    its activations; each put back as it was on exit, even when training fails."""
    flags = [(parameter, parameter.requires_grad) for module in (unet, vae) for parameter in module.parameters()]
    was_checkpointing = getattr(unet, "is_gradient_checkpointing", False)
    try:
        unet.requires_grad_(False)
        vae.requires_grad_(False)
        if gradient_checkpointing and not was_checkpointing:
            unet.enable_gradient_checkpointing()
        yield
    finally:
        if gradient_checkpointing and not was_checkpointing:
            unet.disable_gradient_checkpointing()
        for parameter, requires_grad in flags:
            parameter.requires_grad_(requires_grad)


def _batches(rng: np.random.Generator, num_images: int, repeats: int, batch_size: int) -> Iterator[np.ndarray]:
    """Shot indices, batch after batch, as DA-Fusion's shuffled `DataLoader` gives them: each epoch a permutation of
    `num_images · repeats` items (item i is shot i mod num_images), cut into batches, the last one possibly short."""
    while True:
        order = rng.permutation(num_images * repeats) % num_images
        for start in range(0, len(order), batch_size):
            yield order[start : start + batch_size]


class TextualInversionTrainer:
    """Learns one token at a time, each from scratch, for frozen Stable Diffusion components.

    The UNet and VAE are used in place (on their device and in their dtype) and left as they were; every
    [`train`] works on fresh copies of the tokenizer and of the text encoder (float32), which it keeps in
    `self.tokenizer` and `self.text_encoder` until the next call, for inspection.

    Args:
        components: a Stable Diffusion 1.x pipeline, or anything with its `tokenizer`, `text_encoder`, `unet`, `vae`
            and `scheduler`. The noise schedule is DDPM's, from the scheduler's config (DA-Fusion reads the model's
            `scheduler/` folder; a DDIM config of the same model gives the same ᾱ_t).
        args: the training settings.
    """

    def __init__(self, components: StableDiffusionComponents, args: TextualInversionArguments):
        self.components, self.args = components, args
        self.unet, self.vae = components.unet, components.vae
        if getattr(self.unet.config, "encoder_hid_dim_type", None) == "ip_image_proj":
            # Its attention processors, given no image embeddings, would read text tokens as image tokens.
            raise ValueError(
                "The UNet carries an IP-Adapter; textual inversion trains on text alone: unload it first "
                "(`pipe.unload_ip_adapter()`) or load the pipeline without one."
            )
        self.device = self.unet.device
        self.weight_dtype = self.unet.dtype
        self.autocast_dtype = autocast_dtype(args.mixed_precision, self.weight_dtype)
        self.noise_scheduler = DDPMScheduler.from_config(components.scheduler.config)
        self.scaling_factor = getattr(self.vae.config, "scaling_factor", None) or LATENT_SCALING_FACTOR
        self.tokenizer = None
        self.text_encoder = None
        initializer_token_id(components.tokenizer, args.initializer_token)

    def _working_copies(self, token: str) -> int:
        """Fresh copies of the tokenizer (with `token` added) and of the text encoder (float32, one row more, that
        row the initializer's, only the input embeddings trainable); returns the token's id."""
        check_tokenizer(self.components.tokenizer, self.args.initializer_token, [token])
        tokenizer = copy.deepcopy(self.components.tokenizer)
        tokenizer.add_tokens(token)
        token_id = tokenizer.convert_tokens_to_ids(token)
        initializer_id = initializer_token_id(tokenizer, self.args.initializer_token)
        text_encoder = copy.deepcopy(self.components.text_encoder).to(self.device, torch.float32)
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        embeddings = text_encoder.get_input_embeddings().weight
        with torch.no_grad():
            embeddings[token_id] = embeddings[initializer_id]
        text_encoder.requires_grad_(False)
        text_encoder.get_input_embeddings().requires_grad_(True)
        if self.args.gradient_checkpointing:
            text_encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        text_encoder.train()  # as DA-Fusion; CLIP's text encoder has no dropout, and checkpointing needs it
        self.tokenizer, self.text_encoder = tokenizer, text_encoder
        return token_id

    def _pixels(self, image: PIL.Image.Image) -> torch.Tensor:
        """An image as DA-Fusion's dataset gives it: RGB, optionally centre-cropped, resized (bicubic) to the
        training square, in [-1, 1]; unflipped."""
        image = to_rgb(image)
        if self.args.center_crop:
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            image = image.crop((left, top, left + side, top + side))
        image = image.resize((self.args.resolution,) * 2, resample=PIL.Image.BICUBIC)
        array = np.asarray(image, dtype=np.uint8).astype(np.float32) / 127.5 - 1.0
        return torch.from_numpy(array).permute(2, 0, 1)

    @torch.no_grad()
    def _posteriors(self, images: Sequence[PIL.Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE posterior's mean and standard deviation of every shot, unflipped (row 2i) and flipped (2i + 1),
        encoded in batches of `train_batch_size`."""
        pixels = []
        for image in images:
            unflipped = self._pixels(image)
            pixels += [unflipped, unflipped.flip(-1)]
        means, stds = [], []
        for start in range(0, len(pixels), self.args.train_batch_size):
            batch = torch.stack(pixels[start : start + self.args.train_batch_size])
            posterior = self.vae.encode(batch.to(self.device, self.vae.dtype)).latent_dist
            means.append(posterior.mean)
            stds.append(posterior.std)
        return torch.cat(means), torch.cat(stds)

    def train(
        self, token: str, images: Sequence[PIL.Image.Image], seed: int, show_progress: bool = True
    ) -> LearnedToken:
        """Learns `token`'s embedding from a class's shots.

        Args:
            token: the new token (see [`class_token`]); it must not be in the tokenizer yet.
            images: the class's shots, any size or mode.
            seed: seeds every random draw (see [`class_seed`]).
            show_progress: a progress bar of the steps, showing the loss.
        """
        if not images:
            raise ValueError(f"No images to learn {token!r} from.")
        args = self.args
        token_id = self._working_copies(token)
        embeddings = self.text_encoder.get_input_embeddings()
        original = embeddings.weight.detach().clone()
        keep = torch.arange(len(original), device=self.device) != token_id  # every row but the new token's
        prompt_ids = self.tokenizer(
            [template.format(token) for template in IMAGENET_TEMPLATES_SMALL],
            padding="max_length",
            truncation=True,
            max_length=self.tokenizer.model_max_length,
            return_tensors="pt",
        ).input_ids.to(self.device)
        optimizer = torch.optim.AdamW(
            embeddings.parameters(),  # the whole matrix, as DA-Fusion; every row but the token's is put back
            lr=args.step_learning_rate(),
            betas=(args.adam_beta1, args.adam_beta2),
            weight_decay=args.adam_weight_decay,
            eps=args.adam_epsilon,
        )
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.autocast_dtype == torch.float16)
        rng = np.random.default_rng(seed)
        generator = torch.Generator().manual_seed(seed)  # on the CPU: the same draws on every device
        batches = _batches(rng, len(images), args.repeats, args.train_batch_size)
        losses = []
        with frozen_for_training(self.unet, self.vae, args.gradient_checkpointing):
            means, stds = self._posteriors(images)
            progress = tqdm(range(args.max_train_steps), desc=token, unit="step", leave=False,
                            disable=not show_progress)
            for _ in progress:
                step_loss = 0.0
                for _ in range(args.gradient_accumulation_steps):
                    loss = self._loss(next(batches), means, stds, prompt_ids, rng, generator)
                    scaler.scale(loss / args.gradient_accumulation_steps).backward()
                    step_loss += loss.item() / args.gradient_accumulation_steps
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                with torch.no_grad():  # only the new token's row learns
                    embeddings.weight[keep] = original[keep]
                losses.append(step_loss)
                progress.set_postfix(loss=f"{step_loss:.4f}")
            progress.close()
        embedding = embeddings.weight[token_id].detach().to("cpu", torch.float32).clone()
        return LearnedToken(token=token, embedding=embedding, losses=losses)

    def _loss(
        self,
        shots: np.ndarray,
        means: torch.Tensor,
        stds: torch.Tensor,
        prompt_ids: torch.Tensor,
        rng: np.random.Generator,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """The noise-prediction loss of one batch of shots (see the module docstring)."""
        size = len(shots)
        templates = rng.integers(len(IMAGENET_TEMPLATES_SMALL), size=size)
        flipped = rng.random(size) < FLIP_PROBABILITY
        rows = torch.from_numpy(2 * shots + flipped).to(self.device)
        shape = (size, *means.shape[1:])
        posterior_noise = torch.randn(shape, generator=generator).to(self.device, means.dtype)
        latents = (means[rows] + stds[rows] * posterior_noise) * self.scaling_factor
        noise = torch.randn(shape, generator=generator).to(self.device, latents.dtype)
        num_timesteps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, num_timesteps, (size,), generator=generator).to(self.device)
        noisy_latents = self.noise_scheduler.add_noise(latents, noise, timesteps).to(self.weight_dtype)

        input_ids = prompt_ids[torch.from_numpy(templates).to(self.device)]
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            encoder_hidden_states = self.text_encoder(input_ids)[0]
        model_pred = self.unet(noisy_latents, timesteps, encoder_hidden_states.to(self.weight_dtype)).sample

        prediction_type = self.noise_scheduler.config.prediction_type
        if prediction_type == "epsilon":
            target = noise
        elif prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            raise ValueError(f"Unknown prediction type {prediction_type!r} of the scheduler.")
        return F.mse_loss(model_pred.float(), target.float(), reduction="mean")


def save_learned_token(
    path: str | os.PathLike,
    learned: LearnedToken,
    metadata: Mapping[str, str] | None = None,
    temp_dir: str | os.PathLike | None = None,
) -> None:
    """Writes one token in diffusers' textual-inversion format, atomically: a safetensors file of `{token:
    embedding}`, which `pipe.load_textual_inversion(path)` loads; `metadata` goes in the file's header."""
    with atomic_output(path, temp_dir=temp_dir) as temporary:
        save_file({learned.token: learned.embedding.contiguous()}, str(temporary), metadata=dict(metadata or {}))


def read_token_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tokens and header metadata of a token file; raises `OSError` or `SafetensorError` when it is damaged."""
    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata() or {}
    return load_file(str(path)), metadata


def load_class_tokens(pipe, path: str | os.PathLike) -> list[str]:
    """Loads every token of a file of many classes (`{token: embedding}`, as `dalda textual-inversion` writes
    `class_tokens.safetensors`) into `pipe` with diffusers' `load_textual_inversion`; returns the tokens, in class
    order where the file's header gives it (its `classes`: `{class name: token}`).

    diffusers reads a file of one token only, so the embeddings are given to it as a list, each with its token.
    """
    embeddings, metadata = read_token_file(path)
    if not embeddings:
        raise ValueError(f"{str(path)!r} holds no token.")
    order = list(json.loads(metadata["classes"]).values()) if "classes" in metadata else list(embeddings)
    pipe.load_textual_inversion([embeddings[token] for token in order], token=order)
    return order


def token_file_name(class_name: str) -> str:
    """The file of one class's token: the token without its brackets, with characters unsafe in a file name
    replaced, and then a hash of the class name so that two classes never share a file."""
    name = class_token(class_name)[1:-1]
    safe = re.sub(r"[^\w.-]", "_", name)
    if safe != name or safe.startswith("."):
        safe = f"{safe.lstrip('.')}-{hashlib.sha256(class_name.encode('utf-8')).hexdigest()[:8]}"
    return f"{safe}.safetensors"


def images_fingerprint(images: Sequence[PIL.Image.Image]) -> str:
    """A SHA-256 of images' pixels (mode, size and bytes, in order): what a resumed run checks its shots by."""
    digest = hashlib.sha256()
    for image in images:
        digest.update(f"{image.mode}:{image.width}x{image.height};".encode())
        digest.update(image.tobytes())
    return digest.hexdigest()

