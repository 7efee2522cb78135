"""The options of `dalda textual-inversion` (and of the textual inversion `dalda augment --method da_fusion` runs
first), as `HfArgumentParser` dataclasses.

This module imports nothing heavy, so `dalda textual-inversion --help` answers at once; the trainer is
[`pipeline_dalda.textual_inversion`], the dataset-side stage `dataset_builders.textual_inversion`.
"""

import math
from dataclasses import dataclass, field
from typing import Literal, get_args

from .arguments import DType, ModelArguments


MixedPrecision = Literal["auto", "no", "fp16", "bf16"]


@dataclass
class TextualInversionArguments:
    """How each class's token is trained. The defaults are those of DA-Fusion's `fine_tune.py` as its
    `scripts/fine_tuning/*.sh` run it: one token per class. That this is the DALDA paper's DA-Fusion baseline is our
    reading: DALDA's released code has no DA-Fusion baseline, and `fine_tune.py` knows none of DALDA's datasets.
    DA-Fusion's `fine_tune_upstream.py`, which knows Caltech-101 and Flowers102, is a multi-vector variant
    (`--num_vectors`, used by `train_classifier.py --aug multi-token-inversion`, whose `--tokens-per-class` is 4 by
    default); it is not implemented here.

    The learning rate a step uses is `learning_rate · train_batch_size · gradient_accumulation_steps` with
    `scale_lr` (DA-Fusion's `--scale_lr`; its third factor, the processes training one token, is always 1 here,
    as it was there: processes share out the classes, never one token): 5e-4 · 4 · 1 = 2e-3 by default.
    """

    _argument_group_name = "textual inversion"

    resolution: int = field(default=512, metadata={"help": "Images are resized (bicubic, squashed) to this square."})
    center_crop: bool = field(
        default=False, metadata={"help": "Crop the central square before resizing (DA-Fusion: off)."}
    )
    train_batch_size: int = field(default=4, metadata={"help": "Images per step (DA-Fusion: 4)."})
    max_train_steps: int = field(default=1000, metadata={"help": "Optimiser steps per class (DA-Fusion: 1,000)."})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Batches whose gradients are summed into one optimiser step."}
    )
    learning_rate: float = field(
        default=5e-4, metadata={"help": "Base learning rate, constant, no warm-up (DA-Fusion: 5e-4)."}
    )
    scale_lr: bool = field(
        default=True,
        metadata={"help": "Multiply learning_rate by train_batch_size · gradient_accumulation_steps (DA-Fusion: on)."},
    )
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW's β1 (DA-Fusion: 0.9)."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW's β2 (DA-Fusion: 0.999)."})
    adam_weight_decay: float = field(
        default=1e-2, metadata={"help": "AdamW's decoupled weight decay (DA-Fusion: 1e-2)."}
    )
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW's ε (DA-Fusion: 1e-8)."})
    repeats: int = field(
        default=100,
        metadata={
            "help": "Each epoch shows every shot this many times, shuffled, in batches (DA-Fusion's dataset "
            "`repeats`); only the order of the images depends on it."
        },
    )
    initializer_token: str = field(
        default="the",
        metadata={"help": "The word (one token) whose embedding each new token starts from (DA-Fusion: 'the')."},
    )
    mixed_precision: MixedPrecision = field(
        default="auto",
        metadata={
            "help": "Autocast of the text encoder's forward pass ('fp16' scales the loss): 'auto' follows the UNet's "
            "dtype (float16 on CUDA by default, as DA-Fusion), 'no' on float32. The learned rows stay float32."
        },
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "Recompute the UNet's and text encoder's activations in the backward pass: less memory, about "
            "a third more time, the same result (DA-Fusion's scripts turn it on for their smaller GPUs)."
        },
    )

    def __post_init__(self):
        for name in ("resolution", "train_batch_size", "max_train_steps", "gradient_accumulation_steps", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        if not 0 < self.learning_rate < math.inf:
            raise ValueError(f"`learning_rate` must be > 0, got {self.learning_rate}.")
        # AdamW's own checks, made here so that a bad value is refused before anything is written.
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be in [0, 1), got {getattr(self, name)}.")
        for name in ("adam_weight_decay", "adam_epsilon"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        if self.mixed_precision not in get_args(MixedPrecision):
            raise ValueError(
                f"`mixed_precision` must be one of {get_args(MixedPrecision)}, got {self.mixed_precision!r}."
            )
        if not self.initializer_token.strip():
            raise ValueError("`initializer_token` must be a word, e.g. 'the'.")

    def step_learning_rate(self) -> float:
        """The learning rate of every step: `learning_rate`, times `train_batch_size · gradient_accumulation_steps`
        with `scale_lr`."""
        scale = self.train_batch_size * self.gradient_accumulation_steps if self.scale_lr else 1
        return self.learning_rate * scale


@dataclass
class TextualInversionModelArguments(ModelArguments):
    """The Stable Diffusion model the tokens are learned for. Only its tokenizer, text encoder, UNet, VAE (encoder)
    and scheduler config are used, so the IP-Adapter and CLIP-scorer options are left out."""

    vae: str = field(
        default="",
        metadata={
            "help": "A VAE to replace the pipeline's; '' keeps the pipeline's, as DA-Fusion's `fine_tune.py` does "
            "(only its encoder is used; `stabilityai/sd-vae-ft-mse` fine-tuned the decoder only)."
        },
    )
    dtype: DType = field(
        default="auto",
        metadata={
            "help": "The frozen UNet's and VAE's dtype: 'auto' is float16 on CUDA (DA-Fusion's fp16 weights), "
            "float32 elsewhere. The text encoder trains in float32."
        },
    )
    # Not options of this command: textual inversion loads no IP-Adapter, no CLIP scorer and no safety checker.
    ip_adapter: str = field(default="", init=False)
    ip_adapter_subfolder: str = field(default="", init=False)
    ip_adapter_weight_name: str = field(default="", init=False)
    clip_score_model: str = field(default="", init=False)
    safety_checker: bool = field(default=False, init=False)
    compile: bool = field(default=False, init=False)


@dataclass
class TextualInversionRunArguments:
    """Where `dalda textual-inversion` writes the tokens, and the seed of the few-shot selection and the training."""

    _argument_group_name = "output"

    output_dir: str = field(
        metadata={"help": "The folder of the learned tokens (one file per class and one for all); rerun to resume."}
    )
    seed: int = field(
        default=0,
        metadata={
            "help": "Seeds the few-shot selection (as `dalda augment --seed`, so both take the same shots) and each "
            "class's training draws."
        },
    )
