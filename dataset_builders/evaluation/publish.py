"""The evaluation published with the data: `dalda evaluate --push_to_hub` and `dalda compare --push_to_hub`.

`dalda evaluate --push_to_hub ORG/NAME` uploads the public copy of its report ([`public_results`]: no local path)
into the evaluated dataset's Hub repository, under `evaluation/<backbone>-<method>-<shots>shot/` (results.json,
results.md, the plots), and rewrites one section of the dataset card, "## Evaluation": a table with one row per
evaluation folder of the repository. Everything else in the card (its YAML metadata, which `load_dataset` reads,
and every other section) is left as it is, and so are the data files. A run evaluated again with other settings
replaces its folder and its row; the same report pushed again changes nothing and makes no commit.

`dalda compare --push_to_hub ORG/NAME` uploads comparison.md and accuracy_vs_shots.png under `evaluation/compare/`
(one comparison per repository: a new one replaces it), and the card's section links to it.
"""

import dataclasses
import json
import logging
import os
import re
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError
from huggingface_hub.utils import HFValidationError, validate_repo_id

from ..hub_layout import RUN_RECORD
from .arguments import EvaluateArguments
from .public import public_path, public_results
from .report import results_markdown
from .summary import OPTIMISTIC, REAL_ONLY, format_figure, format_interval, format_sample

if TYPE_CHECKING:
    from .comparison import Comparison
    from .data import TrialLocation  # reads datasets, which `dalda compare` does not need


logger = logging.getLogger(__name__)

EVALUATION_DIR = "evaluation"
"""Where the repository keeps its evaluations: one folder per evaluation, and `compare/`."""
COMPARISON_DIR = f"{EVALUATION_DIR}/compare"
CARD_FILE = "README.md"
SECTION = "## Evaluation"
"""The card's section this module writes; the card's other sections are never touched."""
SECTION_INTRO = (
    "Few-shot balanced accuracy of the paper's classifier (a linear head on a frozen backbone) trained on "
    "this dataset (augmented) and on its real images only, side by side, written by `dalda evaluate "
    "--push_to_hub`: mean ± sample standard deviation over the repeats, and the paired difference augmented − "
    "real only with its 95% t interval, n pairs and degrees of freedom. Trials each redraw the shots, the "
    "synthetic images and the classifier; classifier repeats redraw only the classifier on one draw of shots "
    "(optimiser noise, not trials). Each row's folder holds its full report."
)
"""What the section's table holds, above it."""
PLOTS = ("accuracy_per_epoch.png", "clip_score_lambda.png", "accuracy_vs_min_synthetic_score.png")
"""The plots `dalda evaluate` writes (the last one with `min_synthetic_score_sweep` only)."""
_EPOCH_RULES = {
    "last_epoch": "last",
    "best_validation_epoch": "best on validation",
    "best_test_epoch": f"best on test (**{OPTIMISTIC}**)",
}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._]+", "-", text.lower()).strip("-.")


def evaluation_folder(results: dict) -> str:
    """The repository folder of one evaluation, `evaluation/<backbone>-<method>-<shots>shot`: the backbone's public
    id (`openai--clip-vit-base-patch16`, a local backbone by its folder's name), the method's name in the tables
    (`dalda-llm-ags`, with its synthetic-score threshold where one was set) and the shots per class."""
    backbone = public_path(results["backbone"]["id"]).removeprefix("./").replace("/", "--")
    method = _slug(results["method"]) or _slug(results["trials"][0]["generation"]["method"])
    return f"{EVALUATION_DIR}/{backbone}-{method}-{results['num_shots']}shot"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def _synthetic_images(results: dict) -> str:
    """The rule that chose the augmented classifier's synthetic images: all of them, or those whose own CLIPScore
    reaches `min_synthetic_score`; with a sweep, its thresholds and those chosen on validation images."""
    settings = results["settings"]
    threshold = settings.get("min_synthetic_score")
    text = "all" if threshold is None else f"synthetic score ≥ {threshold}"
    sweep = settings.get("min_synthetic_score_sweep")
    if sweep:
        text += f"; swept {', '.join(map(str, sorted(sweep)))}"
        choice = results.get("min_synthetic_score_sweep_choice")
        if choice:
            chosen = sorted({entry["min_synthetic_score"] for entry in choice["per_classifier"]})
            text += f", chosen on validation: {', '.join(map(str, chosen))}"
    return text


def _repeats(results: dict) -> str:
    units = [(r["trial"], r["classifier_seed"]) for r in results["per_classifier"] if r["arm"] == "augmented"]
    if results["repeats"] == "trials":
        return f"{len({trial for trial, _ in units})} trials"
    if results["repeats"] == "classifier repeats":
        return f"{len({seed for _, seed in units})} classifier repeats"
    return "one trial"


def card_row(folder: str, results: dict) -> list[str]:
    """One evaluation's row of the card's table, from its published results.json."""
    figures = results["aggregate"]
    real_only = format_figure(figures["real_only"]["balanced_accuracy"]) if "real_only" in figures else "–"
    difference = "–"
    if "difference" in figures:
        paired = figures["difference"]["balanced_accuracy"]
        difference = f"{format_interval(paired)} ({format_sample(paired)})"
    cells = [
        f"`{results['backbone']['id']}`",
        results["method"],
        results["num_shots"],
        _repeats(results),
        real_only,
        format_figure(figures["augmented"]["balanced_accuracy"]),
        difference,
        _synthetic_images(results),
        _EPOCH_RULES[results["settings"]["select"]],
        f"[results.md]({folder}/results.md)",
    ]
    return [_cell(cell) for cell in cells]


def evaluation_section(evaluations: dict[str, dict], comparison: bool = False) -> str:
    """The card's "## Evaluation" section: one row per evaluation folder (`folder` → its published results.json), in
    order of backbone, method and shots, and a link to `evaluation/compare/comparison.md` where `comparison`."""
    rows = sorted(
        (card_row(folder, results) for folder, results in evaluations.items()), key=lambda row: (*row[:2], row[2])
    )
    header = [
        "backbone",
        "method",
        "shots",
        "repeats",
        REAL_ONLY.lower(),
        "augmented",
        "augmented − real only",
        "synthetic images",
        "reported epoch",
        "report",
    ]
    lines = [
        SECTION,
        "",
        SECTION_INTRO,
        "",
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    if comparison:
        lines += ["", f"Methods side by side (`dalda compare`): [comparison.md]({COMPARISON_DIR}/comparison.md)."]
    return "\n".join(lines) + "\n"


_FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n", re.DOTALL)


def _headings(body: str) -> list[tuple[int, str]]:
    """The offset and text of each heading of level 1 or 2 in a card's body, outside fenced code blocks (whose
    comments start with `# ` too)."""
    headings, fenced, offset = [], False, 0
    for line in body.splitlines(keepends=True):
        if line.startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,2} ", line):
            headings.append((offset, line.rstrip()))
        offset += len(line)
    return headings


def with_evaluation_section(card: str, section: str) -> str:
    """`card` (a dataset card's text) with its "## Evaluation" section replaced by `section` — from its heading to
    the next heading of level 1 or 2, or the end — or, where it has none, with `section` inserted before the
    "## License" section (else at the end). The YAML front matter and every other line are kept byte for byte."""
    front = _FRONT_MATTER.match(card)
    head, body = (card[: front.end()], card[front.end() :]) if front else ("", card)
    section = section.rstrip("\n") + "\n"
    headings = _headings(body)
    titles = [title for _, title in headings]
    if SECTION in titles:
        index = titles.index(SECTION)
        if index + 1 < len(headings):
            return head + body[: headings[index][0]] + section + "\n" + body[headings[index + 1][0] :]
        return head + body[: headings[index][0]] + section
    if "## License" in titles:
        at = headings[titles.index("## License")][0]
        return head + body[:at] + section + "\n" + body[at:]
    return head + body.rstrip("\n") + "\n\n" + section


def check_repo_id(repo_id: str, option: str = "push_to_hub") -> None:
    """Refuses a Hub repository id that is not `ORG/NAME` as the Hub spells them, before anything runs."""
    try:
        validate_repo_id(repo_id)
        valid = repo_id.count("/") == 1
    except HFValidationError:
        valid = False
    if not valid:
        raise ValueError(
            f"`{option}` must be a Hub repo id ORG/NAME (letters, digits, '-', '_' and '.', no '--' or '..'), got "
            f"{repo_id!r}."
        )


def check_hub_dataset(repo_id: str, option: str = "push_to_hub") -> HfApi:
    """Refuses, before anything is computed or written, a repository that is not a Hub dataset with a card (it must
    hold the dataset the report is about), or an id that is not `ORG/NAME`; returns the client that will push."""
    check_repo_id(repo_id, option)
    api = HfApi()
    try:
        files = api.list_repo_files(repo_id, repo_type="dataset")
    except RepositoryNotFoundError as error:
        raise ValueError(
            f"`{option}` {repo_id!r} is no Hub dataset repository this token can see; push the augmented dataset "
            f"first (`dalda augment --push_to_hub {repo_id}`)."
        ) from error
    if CARD_FILE not in files:
        raise ValueError(
            f"`{option}` {repo_id!r} has no dataset card ({CARD_FILE}); is it a dataset `dalda augment` pushed?"
        )
    return api


def _record_path(location: "TrialLocation", dataset: str) -> str:
    """Where a trial's run record lies in its repository: `dalda.json`, or `seed_<s>/dalda.json` for a trial."""
    if not os.path.isdir(dataset):
        return f"{location.config}/{RUN_RECORD}" if location.config else RUN_RECORD
    relative = Path(location.path).resolve().relative_to(Path(dataset).resolve())
    return str(PurePosixPath(*relative.parts, RUN_RECORD))


def check_evaluation_repo(args: EvaluateArguments, locations: list["TrialLocation"]) -> None:
    """Refuses, before anything is computed or written, a `push_to_hub` repository that does not hold the dataset
    being evaluated: each trial's run record (`dalda.json`) must be in it, equal to the evaluated one."""
    repo_id = args.push_to_hub
    api = check_hub_dataset(repo_id)
    if args.dataset == repo_id:
        return
    for location in locations:
        path = _record_path(location, args.dataset)
        if os.path.isdir(args.dataset):
            evaluated = Path(location.path, RUN_RECORD).read_bytes()
        else:
            evaluated = Path(
                api.hf_hub_download(args.dataset, path, repo_type="dataset", revision=args.dataset_revision)
            ).read_bytes()
        try:
            published = Path(api.hf_hub_download(repo_id, path, repo_type="dataset")).read_bytes()
        except EntryNotFoundError:
            published = None
        if published is None or json.loads(published) != json.loads(evaluated):
            raise ValueError(
                f"`push_to_hub` {repo_id!r} does not hold the evaluated dataset {args.dataset!r}: its {path} is "
                f"{'missing' if published is None else 'another run record'}; push the report to the repository of "
                "the dataset it evaluates."
            )


def commit_evaluation(api: HfApi, repo_id: str, folder: str, files: dict[str, bytes], message: str) -> str | None:
    """Makes `folder` of the repository hold exactly `files` (name → content) and rewrites the card's evaluation
    section from every evaluation folder's results.json, in one commit; returns its URL, or None when nothing
    changed (no commit)."""
    info = api.dataset_info(repo_id)
    listing = [sibling.rfilename for sibling in info.siblings]

    def remote(path: str) -> bytes:
        return Path(api.hf_hub_download(repo_id, path, repo_type="dataset", revision=info.sha)).read_bytes()

    wanted = {f"{folder}/{name}": content for name, content in files.items()}
    evaluations = {}
    for path in sorted(listing):
        parts = PurePosixPath(path).parts
        if len(parts) == 3 and parts[0] == EVALUATION_DIR and parts[2] == "results.json" and path not in wanted:
            evaluations[str(PurePosixPath(*parts[:2]))] = json.loads(remote(path))
    for path, content in wanted.items():
        if path.endswith("/results.json") and not path.startswith(f"{COMPARISON_DIR}/"):
            evaluations[path.rsplit("/", 1)[0]] = json.loads(content)
    compared = f"{COMPARISON_DIR}/comparison.md" in {*listing, *wanted}
    card = remote(CARD_FILE).decode("utf-8")
    wanted[CARD_FILE] = with_evaluation_section(card, evaluation_section(evaluations, compared)).encode("utf-8")

    operations: list = [
        CommitOperationAdd(path, content)
        for path, content in wanted.items()
        if path not in listing or remote(path) != content
    ]
    operations += [
        CommitOperationDelete(path) for path in listing if path.startswith(f"{folder}/") and path not in wanted
    ]
    if not operations:
        logger.info("%s already holds this report; nothing to push.", repo_id)
        return None
    commit = api.create_commit(
        repo_id, operations, commit_message=message, repo_type="dataset", parent_commit=info.sha
    )
    return commit.commit_url


def _uploading(repo_id: str, output_dir: str, push):
    try:
        url = push()
    except Exception as error:
        raise ValueError(
            f"Uploading to `push_to_hub` {repo_id!r} failed ({type(error).__name__}: {error}). The report is complete "
            f"in {output_dir!r}; run the same command again to retry (the backbone's features are cached)."
        ) from error
    if url:
        logger.info("Pushed the report to %s", url)


def push_report(args: EvaluateArguments, results: dict) -> None:
    """`dalda evaluate --push_to_hub`: the report's public copy into its folder of the dataset's repository, and the
    card's evaluation section rewritten."""
    public = public_results(results, dataset_id=args.push_to_hub)  # the dataset evaluated is the repo's
    folder = evaluation_folder(public)
    files = {
        "results.json": (json.dumps(public, indent=2, ensure_ascii=False) + "\n").encode("utf-8"),
        "results.md": results_markdown(public).encode("utf-8"),
    }
    files.update(
        {name: Path(args.output_dir, name).read_bytes() for name in PLOTS if Path(args.output_dir, name).is_file()}
    )
    message = f"Evaluation: {public['method']}, {public['num_shots']}-shot, {public['backbone']['id']}"
    _uploading(
        args.push_to_hub, args.output_dir, lambda: commit_evaluation(HfApi(), args.push_to_hub, folder, files, message)
    )


def push_comparison(comparison: "Comparison", output_dir: Path, repo_id: str) -> None:
    """`dalda compare --push_to_hub`: comparison.md (its backbones named by their public ids) and
    accuracy_vs_shots.png into `evaluation/compare/`, and the card's section linking to them."""
    from .comparison import comparison_markdown  # comparison.py imports this module

    backbones = {
        column: {**key, "backbone": public_path(key["backbone"])} for column, key in comparison.backbones.items()
    }
    files = {
        "comparison.md": comparison_markdown(dataclasses.replace(comparison, backbones=backbones)).encode("utf-8"),
        "accuracy_vs_shots.png": Path(output_dir, "accuracy_vs_shots.png").read_bytes(),
    }
    _uploading(
        repo_id,
        str(output_dir),
        lambda: commit_evaluation(HfApi(), repo_id, COMPARISON_DIR, files, "Evaluation: methods compared"),
    )
