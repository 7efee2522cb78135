"""Builds a prompt bank for a whole dataset: chunked, concurrent, resumable, and never billed twice for a chunk."""

import hashlib
import logging
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol, Sequence

from tqdm.auto import tqdm

from ..arguments import LLMSettings, PromptArguments
from ..atomic import remove_stale_temporaries
from .bank import ChunkCheckpoints, PromptBank, UsageLedger
from .llm import RESUME_HINT, ChunkResult, OpenAIPromptWriter, PromptRequestError
from .matching import ClassNameMatcher
from .template import TemplatePromptWriter


logger = logging.getLogger(__name__)


class ChunkWriter(Protocol):
    def write_chunk(self, classes: Sequence[str], usage: UsageLedger) -> ChunkResult: ...


class TemplateChunkWriter:
    """The template backend as a chunk writer."""

    def __init__(self, template: TemplatePromptWriter, num_prompts: int):
        self.template = template
        self.num_prompts = num_prompts

    def write_chunk(self, classes: Sequence[str], usage: UsageLedger) -> ChunkResult:
        """The template sentences of `classes`; they cost no requests, so `usage` is left as it is."""
        return ChunkResult({name: self.template.sentences(name, self.num_prompts) for name in classes}, {})


def _check_class_names(class_names: Sequence[str]) -> list[str]:
    class_names = list(class_names)
    if not class_names:
        raise ValueError("The class list is empty.")
    for index, name in enumerate(class_names):
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"Class {index} has an empty or non-text name: {name!r}.")
    duplicates = sorted({name for name in class_names if class_names.count(name) > 1})
    if duplicates:
        raise ValueError(f"Class names appear more than once: {duplicates}.")
    return class_names


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _run_chunks(writer: ChunkWriter, chunks: list[list[str]], checkpoints: ChunkCheckpoints, concurrency: int) -> None:
    """Runs the chunks with bounded concurrency, saving each as it finishes; on a failure, stops sending new ones,
    saves those in flight that finish, then raises."""
    failure: BaseException | None = None
    progress = tqdm(total=sum(map(len, chunks)), desc="classes", unit="class")
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        queue = iter(chunks)
        running: dict[Future, list[str]] = {}
        while True:
            while failure is None and len(running) < concurrency and (chunk := next(queue, None)) is not None:
                running[pool.submit(writer.write_chunk, chunk, checkpoints.usage)] = chunk
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                chunk = running.pop(future)
                try:
                    result = future.result()
                except Exception as error:  # noqa: BLE001 - the first failure is re-raised below
                    failure = failure or error
                    continue
                checkpoints.save_chunk(
                    {
                        "classes": {
                            name: {"sentences": result.sentences[name], "template_fallbacks": result.template_fallbacks.get(name, 0)}
                            for name in chunk
                        },
                    }
                )
                progress.update(len(chunk))
    progress.close()
    if failure is not None:
        raise failure


def generate_prompt_bank(
    args: PromptArguments, class_names: Sequence[str], llm: LLMSettings | None = None
) -> PromptBank:
    """Writes `args.output`: M sentences per class from the chosen backend, with a metadata block.

    Finished chunks are kept beside the output (`<output>.chunks/`) as they arrive, so running the same command
    again after a crash or a kill resumes without asking for finished classes again. The folder's usage ledger counts
    each request as it is sent, so the metadata's request and token counts cover every run that made the bank,
    killed ones included. A failure that outlasts the retries stops the run with an error after saving what it has,
    saying what to do before running again.
    """
    class_names = _check_class_names(class_names)
    description = args.description()
    template = TemplatePromptWriter(class_names, seed=args.seed)
    if args.backend == "file":
        return import_prompt_bank(args, class_names, template)

    if args.backend == "openai":
        if not description:
            raise ValueError("The openai backend needs `dataset_description` (or `dataset_description_file`).")
        llm = llm or LLMSettings()
        writer: ChunkWriter = OpenAIPromptWriter(llm, class_names, description, args.num_prompts, template)
        backend_metadata = writer.metadata()
    else:
        writer = TemplateChunkWriter(template, args.num_prompts)
        backend_metadata = {}
    settings = {
        "backend": args.backend,
        **backend_metadata,
        "num_prompts": args.num_prompts,
        "seed": args.seed,
        "dataset_description_sha256": _sha256(description),
        "class_names_sha256": _sha256("\n".join(class_names)),
    }

    output = Path(args.output)
    if output.exists():
        existing = PromptBank.load(output)
        if existing.metadata.get("settings") == settings:
            logger.info("%s is already complete; nothing to do.", output)
            return existing
        raise ValueError(f"{str(output)!r} exists and was made with other settings; choose another output.")

    checkpoints = ChunkCheckpoints(output.with_name(output.name + ".chunks"), settings)
    remove_stale_temporaries(output.parent, output.name)
    remove_stale_temporaries(checkpoints.directory)
    finished = checkpoints.open()
    done = {name for record in finished for name in record["classes"]}
    todo = [name for name in class_names if name not in done]
    if done:
        logger.info("Resuming: %d of %d classes already done.", len(done), len(class_names))
    chunks = [todo[start : start + args.chunk_size] for start in range(0, len(todo), args.chunk_size)]
    try:
        _run_chunks(writer, chunks, checkpoints, args.max_concurrency)
    except Exception as error:
        saved = sum(len(record["classes"]) for record in checkpoints.open())
        next_step = error.next_step if isinstance(error, PromptRequestError) else RESUME_HINT
        raise PromptRequestError(
            f"Prompt generation stopped: {error} {saved} of {len(class_names)} classes are saved in "
            f"{str(checkpoints.directory)!r}; {next_step}.",
            next_step=next_step,
        ) from error

    records = checkpoints.open()
    per_class = {name: value for record in records for name, value in record["classes"].items()}
    fallbacks = {name: per_class[name]["template_fallbacks"] for name in class_names if per_class[name]["template_fallbacks"]}
    usage = checkpoints.usage.totals()
    metadata = {
        "settings": settings,
        "num_classes": len(class_names),
        "chunk_size": args.chunk_size,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "requests": usage["requests"],
        "token_usage": {"prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"]},
        "template_fallbacks": {"total": sum(fallbacks.values()), "by_class": fallbacks},
    }
    bank = PromptBank({name: per_class[name]["sentences"] for name in class_names}, metadata)
    bank.save(output)
    checkpoints.remove()
    logger.info(
        "Wrote %d classes × %d sentences to %s (%d requests, %d prompt + %d completion tokens, %d template fallbacks).",
        len(class_names), args.num_prompts, output, metadata["requests"], metadata["token_usage"]["prompt_tokens"],
        metadata["token_usage"]["completion_tokens"], metadata["template_fallbacks"]["total"],
    )
    return bank


def import_prompt_bank(args: PromptArguments, class_names: list[str], template: TemplatePromptWriter) -> PromptBank:
    """The 'file' backend: an existing bank checked against the class list; failing or missing sentences are
    replaced with template sentences and counted."""
    source = PromptBank.load(args.input_bank)
    missing = [name for name in class_names if name not in source.prompts]
    if missing:
        raise ValueError(f"The prompt bank {args.input_bank!r} has no sentences for the classes {missing}.")
    ignored = sorted(set(source.prompts) - set(class_names))
    if ignored:
        logger.warning("Ignoring %d classes of the bank that the dataset does not have: %s", len(ignored), ignored)
    matcher = ClassNameMatcher(class_names)
    prompts, fallbacks = {}, {}
    for name in class_names:
        valid = [s for s in dict.fromkeys(source.prompts[name]) if not matcher.problems(s, name)][: args.num_prompts]
        missing_count = args.num_prompts - len(valid)
        if missing_count:
            valid += [s for s in template.sentences(name, args.num_prompts + len(valid)) if s not in valid][:missing_count]
            fallbacks[name] = missing_count
        prompts[name] = valid
    metadata = {
        "settings": {
            "backend": "file",
            "source_sha256": _sha256(Path(args.input_bank).read_text(encoding="utf-8")),
            "source_metadata": source.metadata,
            "num_prompts": args.num_prompts,
            "seed": args.seed,
            "class_names_sha256": _sha256("\n".join(class_names)),
        },
        "num_classes": len(class_names),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "ignored_classes": ignored,
        "template_fallbacks": {"total": sum(fallbacks.values()), "by_class": fallbacks},
    }
    bank = PromptBank(prompts, metadata)
    bank.save(args.output)
    return bank
