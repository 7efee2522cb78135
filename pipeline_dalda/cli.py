"""The `dalda` command line: one subcommand per job, options from dataclasses (`HfArgumentParser`).

Every subcommand also reads its options from a JSON or YAML file: `dalda generate config.yaml`.
"""

import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from transformers import HfArgumentParser


@dataclass
class TinyModelsArguments:
    """Where `dalda tiny-models` writes the offline model kit."""

    output_dir: str = field(metadata={"help": "The kit's folder."})
    seed: int = 0


def tiny_models(args: TinyModelsArguments) -> None:
    """Writes the offline model kit (tiny random models in the real layouts) and prints where each part is."""
    from .testing import save_tiny_models

    paths = save_tiny_models(args.output_dir, seed=args.seed)
    print(json.dumps({name: str(path) for name, path in asdict(paths).items()}, indent=2))


def _generate_command():
    from .generation import GenerateArguments, generate
    from .loading import ModelArguments
    from .pipeline import AdaptiveGuidanceScaling

    return (ModelArguments, GenerateArguments, AdaptiveGuidanceScaling), generate


def _prompts_command():
    from dataset_builders.source import ClassListArguments, load_class_names

    from .prompts import LLMSettings, PromptArguments, PromptRequestError, generate_prompt_bank

    def prompts(args: PromptArguments, class_list: ClassListArguments, llm: LLMSettings) -> None:
        try:
            generate_prompt_bank(args, load_class_names(class_list), llm)
        except PromptRequestError as error:
            raise SystemExit(f"dalda prompts: {error}") from error

    return (PromptArguments, ClassListArguments, LLMSettings), prompts


def _augment_command():
    from dataset_builders.augment import AugmentArguments, augment_dataset
    from dataset_builders.source import SourceArguments

    from .loading import ModelArguments
    from .pipeline import AdaptiveGuidanceScaling

    def augment(model_args, source_args, args, ags) -> None:
        augment_dataset(source_args, args, model_args, ags)

    return (ModelArguments, SourceArguments, AugmentArguments, AdaptiveGuidanceScaling), augment


def _evaluate_command():
    from dataset_builders.evaluation.diversity import DiversityArguments
    from dataset_builders.evaluation.report import report_summary
    from dataset_builders.evaluation.run import EvaluateArguments, evaluate_augmented_dataset

    def evaluate(args: EvaluateArguments, diversity_args: DiversityArguments) -> None:
        evaluate_augmented_dataset(args, diversity_args)
        print(report_summary(args.output_dir))

    return (EvaluateArguments, DiversityArguments), evaluate


def _compare_command():
    from dataset_builders.evaluation.report import CompareArguments, compare_runs

    return (CompareArguments,), lambda args: print(compare_runs(args))


def _demo_command():
    from dataset_builders.demo import DemoArguments, run_demo

    return (DemoArguments,), run_demo


def _tiny_models_command():
    return (TinyModelsArguments,), tiny_models


@dataclass(frozen=True)
class Command:
    help: str
    load: Callable[[], tuple[tuple[type, ...], Callable[..., None]]]
    """Imports what the command needs (only then), returning its option dataclasses and the function to run."""


COMMANDS = {
    "demo": Command("Run the whole job offline on a small drawn dataset with tiny models (about a minute).", _demo_command),
    "augment": Command(
        "Augment a few-shot dataset with DALDA into a Hub-layout dataset (resumable; runs under accelerate).",
        _augment_command,
    ),
    "evaluate": Command(
        "Train the paper's few-shot classifiers on an augmented dataset, real-only beside it, and report accuracy.",
        _evaluate_command,
    ),
    "compare": Command(
        "Put several `dalda evaluate` reports side by side (the paper's Table 2 and accuracy vs shots).",
        _compare_command,
    ),
    "prompts": Command("Write M scene sentences per class (LLM, templates or a file) as a prompt bank.", _prompts_command),
    "generate": Command("Generate images from real images and prompts with DALDAPipeline.", _generate_command),
    "tiny-models": Command(
        "Write tiny random models in the real layouts, for offline tests and demos.", _tiny_models_command
    ),
}


def _usage() -> str:
    lines = ["usage: dalda <command> [options | config.json | config.yaml]", "", "commands:"]
    lines += [f"  {name:<14}{command.help}" for name, command in COMMANDS.items()]
    return "\n".join(lines + ["", "`dalda <command> --help` lists a command's options."])


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    name, options = argv[0], argv[1:]
    if name not in COMMANDS:
        raise SystemExit(f"dalda: unknown command {name!r}\n\n{_usage()}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    arguments, run = COMMANDS[name].load()
    parser = HfArgumentParser(arguments, prog=f"dalda {name}", description=COMMANDS[name].help)
    try:
        if len(options) == 1 and options[0].endswith(".json"):
            parsed = parser.parse_json_file(options[0])
        elif len(options) == 1 and options[0].endswith((".yaml", ".yml")):
            parsed = parser.parse_yaml_file(options[0])
        else:
            parsed = parser.parse_args_into_dataclasses(options)
        run(*parsed)
    except ValueError as error:
        raise SystemExit(f"dalda {name}: {error}") from error


if __name__ == "__main__":
    main()
