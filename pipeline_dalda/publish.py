"""Publishing the pipeline: a Hub pipeline repository that `custom_pipeline="<org>/<name>"` loads, and the one
function that uploads a folder to the Hub.

diffusers loads a custom pipeline given as a repository id or a folder from that repository's `pipeline.py`, and
fetches the modules it imports relatively beside it, so the repository holds this package's `pipeline.py` and the
DALDA modules it imports, unchanged, and a model card (`README.md`) saying how to load it.
"""

import logging
import os
import shutil
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, ModelCardData

from .arguments import ModelArguments, PipelineRepoArguments
from .atomic import create_output_dir
from .data_files import data_file


logger = logging.getLogger(__name__)

PIPELINE_FILE = "pipeline.py"
"""The file diffusers loads from a pipeline repository or folder (its `CUSTOM_PIPELINE_FILE_NAME`)."""
CARD_FILE = "README.md"
CARD_TEMPLATE = "model_card.md"
"""The card's Jinja template: the repository's top-level `model_card.md` (in an installed dalda, its copy under
`<sys.prefix>/share/dalda/`)."""
CARD_TAGS = ["diffusers", "stable-diffusion", "ip-adapter", "data-augmentation", "few-shot", "synthetic-data"]
FOLDER_PLACEHOLDER = "path/to/this/folder"
"""What the card's `custom_pipeline=` shows when the repository id is not known yet."""


def render_model_card(repo_id: str | None = None) -> ModelCard:
    """The pipeline repository's card: Hub metadata, and how to load the pipeline from `repo_id` (a placeholder
    folder path when `None`) with the models, scheduler and IP-Adapter that `dalda`'s own loader uses."""
    # Imported here, not above: the scheduler settings live beside torch and diffusers, which pushing does not need.
    from .dalda_per_item import DALDA_SCHEDULER_CONFIG

    models = ModelArguments()
    card_data = ModelCardData(
        library_name="diffusers",
        license="apache-2.0",
        base_model=models.pretrained_model_name_or_path,
        pipeline_tag="text-to-image",
        tags=CARD_TAGS,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(data_file(CARD_TEMPLATE, CARD_TEMPLATE, "model card template")),
        repo_id=repo_id or FOLDER_PLACEHOLDER,
        models=models,
        scheduler_config=DALDA_SCHEDULER_CONFIG,
    )


def write_pipeline_repo(output_dir: str | os.PathLike, repo_id: str | None = None) -> Path:
    """Writes the pipeline repository into `output_dir`: `pipeline.py` and the DALDA modules it imports (byte copies
    of this package's) and its card.

    A folder holding anything else is refused: pushing it would upload that too.
    """
    from .dalda_per_item import SHARED_MODULES

    repo_files = (PIPELINE_FILE, *SHARED_MODULES, CARD_FILE)
    folder = create_output_dir(output_dir)
    if folder.exists():
        others = sorted(path.name for path in folder.iterdir() if path.name not in repo_files)
        if others:
            raise ValueError(
                f"`output_dir` {str(folder)!r} holds {others}; give a new folder, or one holding only "
                f"{', '.join(repo_files)}."
            )
    package = Path(__file__).parent
    shutil.copyfile(package / "pipeline.py", folder / PIPELINE_FILE)
    for module in SHARED_MODULES:
        shutil.copyfile(package / module, folder / module)
    render_model_card(repo_id).save(folder / CARD_FILE)
    return folder


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    repo_type: str,
    private: bool = False,
    ignore_patterns: list[str] | None = None,
    space_sdk: str | None = None,
) -> str:
    """Creates the Hub repository (kept if it exists; a Space with its `space_sdk`, e.g. "gradio") and uploads
    `folder` to it in one commit; returns the commit's URL. The token comes from the environment (`HF_TOKEN`) or the
    local login, never from an argument that could be logged."""
    api = HfApi()
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, space_sdk=space_sdk)
    commit = api.upload_folder(
        repo_id=repo_id, repo_type=repo_type, folder_path=str(folder), ignore_patterns=ignore_patterns
    )
    return commit.commit_url


def publish_pipeline(args: PipelineRepoArguments) -> None:
    """`dalda pipeline-repo`: writes the pipeline repository and, with `push_to_hub`, uploads it as a model repo."""
    folder = write_pipeline_repo(args.output_dir, repo_id=args.push_to_hub)
    logger.info("Wrote the pipeline repository to %s", folder)
    if args.push_to_hub:
        logger.info("Pushed to %s", push_folder(folder, args.push_to_hub, repo_type="model", private=args.private))
