"""Known-harmless output of the libraries `dalda` drives, silenced where it is emitted, so that a command prints what
the user asked for and its own progress; `--verbose` leaves everything as the libraries print it.

Silenced:
- the progress bars of transformers (loading and writing weights) and of datasets (reading a folder, writing
  parquet), through their own switches (datasets' set only where the user has not set it); a download's bar stays;
- diffusers' "Loading pipeline components..." bar;
- these messages, and nothing else of their loggers: transformers' notice that an image processor falls back to its
  PIL variant without torchvision, and diffusers' "modules that should be kept in float32: []" (an empty list, said
  when diffusers itself moves a UNet after loading an IP-Adapter);
- torchvision's deprecation warnings about `pretrained=`, which the `lpips` package (the LPIPS metric) passes it.

Every other warning, of these libraries or any other, passes.
"""

import logging
import os
import warnings


DATASETS_PROGRESS_SWITCH = "HF_DATASETS_DISABLE_PROGRESS_BARS"
"""Read when datasets is imported: set before, it spares importing datasets for commands that never use it."""

KNOWN_MESSAGES = {
    "transformers.utils.import_utils": ("requires torchvision (not installed); falling back to",),
    "diffusers.models.modeling_utils": ("that should be kept in float32: [].",),
}
"""Logger name → fragments of the harmless messages it emits."""

TORCHVISION_DEPRECATIONS = (
    "The parameter 'pretrained' is deprecated",
    "Arguments other than a weight enum or `None` for 'weights' are deprecated",
)
"""The starts of torchvision's warnings when `lpips` builds its backbone the old way."""


class _DropMessages(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def silence_known_chatter(diffusers: bool = True) -> None:
    """Silences the output listed in the module docstring. Call it before datasets is imported (its switch is read
    then); `diffusers=False` leaves diffusers unimported, for commands that do not use it."""
    from huggingface_hub.utils import enable_progress_bars
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # which turns huggingface_hub's off too: downloads keep theirs
    enable_progress_bars()
    os.environ.setdefault(DATASETS_PROGRESS_SWITCH, "1")
    for name, fragments in KNOWN_MESSAGES.items():
        logging.getLogger(name).addFilter(_DropMessages(fragments))
    for message in TORCHVISION_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message, category=UserWarning, module="torchvision")
    if diffusers:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()


class ConsoleFormatter(logging.Formatter):
    """`dalda`'s own log lines as a user reads them: the message alone, and the level before a warning or error."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno < logging.WARNING else f"{record.levelname}: {message}"
