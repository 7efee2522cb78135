"""Publishing the metrics: each `evaluate` module of `scripts/metrics/` as a Hub Space that
`evaluate.load("<org>/<name>")` loads.

A module's folder already holds a whole Space: the script, `app.py` (the Gradio widget), `requirements.txt` and the
card (`README.md`, whose YAML front matter is the Space's settings and the tags `evaluate` lists modules by). The
Space is that folder with one change: `evaluate.load("<org>/<name>")` fetches `<name>.py` from the Space repository
(`evaluate.loading.HubEvaluationModuleFactory`), so the script is named as the repository. Every other file goes
unchanged, so each text has one place: its module folder.
"""

import logging
import os
import shutil
from pathlib import Path

from huggingface_hub import SpaceCard
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from .arguments import MetricsRepoArguments
from .atomic import create_output_dir
from .data_files import data_file
from .publish import CARD_FILE, push_folder


logger = logging.getLogger(__name__)

SPACE_FILES = (CARD_FILE, "app.py", "requirements.txt")
"""The files of a module folder that go to its Space as they are; the script goes renamed."""


def metric_names() -> list[str]:
    """The `evaluate` modules dalda ships: the folders `<name>/` of `scripts/metrics/` (in an installed dalda, of
    `<prefix>/share/dalda/metrics/`) that hold a script `<name>.py`."""
    return sorted(path.parent.name for path in _metrics_folder().glob("*/*.py") if path.stem == path.parent.name)


def _metrics_folder() -> Path:
    return data_file("scripts/metrics", "metrics", "evaluate modules")


def space_script_name(metric: str, repo_id: str | None = None) -> str:
    """The script's file name in the Space: `<name>.py` for the repository `<org>/<name>` (what `evaluate.load`
    fetches), the module's own `<metric>.py` while no repository is named."""
    return f"{repo_id.split('/')[1] if repo_id else metric}.py"


def check_space_repo_id(repo_id: str) -> None:
    """Refuses a repository id that `evaluate.load` could not load a module from: it must be `<org>/<name>` (a
    community module; `evaluate` reads an id without a namespace as one of its own) and `<name>.py` must be a Python
    module name, which `evaluate` imports (its own `evaluate-cli create` refuses hyphens for the same reason)."""
    namespace, _, name = repo_id.partition("/")
    if not namespace or not name.isidentifier():
        raise ValueError(
            f"`push_to_hub` must be ORG/NAME with NAME a Python module name (letters, digits and underscores, e.g. "
            f"my-org/clip_i): evaluate.load('ORG/NAME') imports the Space's NAME.py; got {repo_id!r}."
        )
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"`push_to_hub` {repo_id!r} is not a Hub repository id: {error}") from error


def check_metrics_repo_args(args: MetricsRepoArguments) -> None:
    """Refuses, before anything is written, an unknown module, a repository id `evaluate` cannot load, or `private`
    without a repository to create."""
    names = metric_names()
    if args.metric not in names:
        raise ValueError(f"`metric` {args.metric!r} is not an evaluate module of dalda; give one of {names}.")
    if args.push_to_hub is not None:
        check_space_repo_id(args.push_to_hub)
    elif args.private:
        raise ValueError("`private` applies to the Hub repository `push_to_hub` creates; give `push_to_hub` too.")


def write_metrics_repo(metric: str, output_dir: str | os.PathLike, repo_id: str | None = None) -> Path:
    """Writes the Space of the `evaluate` module `metric` into `output_dir`: its folder's files, the script named for
    the repository `repo_id` ([`space_script_name`]).

    A folder holding anything else (another module's files, a script named for another repository) is refused:
    pushing it would upload that too, and the Space's `app.py` loads the one script beside it.
    """
    source = _metrics_folder() / metric
    script = space_script_name(metric, repo_id)
    folder = create_output_dir(output_dir)
    others = sorted(path.name for path in folder.iterdir() if path.name not in (*SPACE_FILES, script))
    if others:
        raise ValueError(
            f"`output_dir` {str(folder)!r} holds {others}; give a new folder, or one holding only "
            f"{', '.join(sorted((*SPACE_FILES, script)))}."
        )
    for name in SPACE_FILES:
        shutil.copyfile(source / name, folder / name)
    shutil.copyfile(source / f"{metric}.py", folder / script)
    return folder


def publish_metric(args: MetricsRepoArguments) -> None:
    """`dalda metrics-repo`: writes the module's Space and, with `push_to_hub`, uploads it as a Space repository."""
    check_metrics_repo_args(args)
    folder = write_metrics_repo(args.metric, args.output_dir, repo_id=args.push_to_hub)
    logger.info("Wrote the evaluate Space of %s to %s", args.metric, folder)
    if args.push_to_hub:
        sdk = SpaceCard.load(folder / CARD_FILE).data.sdk  # the Hub creates a Space with its SDK named
        url = push_folder(folder, args.push_to_hub, repo_type="space", private=args.private, space_sdk=sdk)
        logger.info("Pushed to %s; load it with evaluate.load(%r)", url, args.push_to_hub)
