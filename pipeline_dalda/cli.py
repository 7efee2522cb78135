"""The `dalda` command line: one subcommand per job, options from dataclasses (`HfArgumentParser`).

Every subcommand also reads its options from a JSON or YAML file: `dalda generate config.yaml`. The option
dataclasses live in light modules (`arguments.py`), and a command imports torch, diffusers or datasets only once its
options are parsed, so `--help` answers at once.

An expected failure (a bad option, a missing dataset, a folder that cannot be written, a refused request) ends in one
line naming the input and what to do, and a non-zero exit; `--debug` (or `DALDA_DEBUG=1`) shows the traceback.

A command prints its own progress and results; the libraries' known-harmless chatter is silenced
([`pipeline_dalda.chatter`]), and `--verbose` brings it back with timestamped log lines.
"""

import argparse
import copy
import difflib
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Literal, Sequence, get_args, get_origin, get_type_hints

from transformers import HfArgumentParser

from .chatter import ConsoleFormatter, silence_known_chatter
from .arguments import (
    DEPRECATED_OPTIONS,
    AGSArguments,
    GenerateArguments,
    LLMSettings,
    MetricsRepoArguments,
    ModelArguments,
    PipelineRepoArguments,
    PromptArguments,
    TinyModelsArguments,
)


logger = logging.getLogger("dalda")

RESUMABLE = ("augment", "prompts", "textual-inversion")
"""The commands a rerun resumes."""
DEBUG_FLAG = "--debug"
DEBUG_VARIABLE = "DALDA_DEBUG"
VERBOSE_FLAG = "--verbose"


def tiny_models(args: TinyModelsArguments) -> None:
    """Writes the offline model kit (tiny random models in the real layouts) and prints where each part is."""
    from .testing import save_tiny_models

    paths = save_tiny_models(args.output_dir, seed=args.seed)
    print(json.dumps({name: str(path) for name, path in asdict(paths).items()}, indent=2))


def _generate_command():
    def generate(model_args: ModelArguments, args: GenerateArguments, ags: AGSArguments) -> None:
        from .generation import generate

        generate(model_args, args, ags.to_ags())

    return (ModelArguments, GenerateArguments, AGSArguments), generate


def _prompts_command():
    from dataset_builders.arguments import ClassListArguments

    def prompts(args: PromptArguments, class_list: ClassListArguments, llm: LLMSettings) -> None:
        from dataset_builders.source import load_class_names

        from .prompts import PromptRequestError, generate_prompt_bank

        try:
            generate_prompt_bank(args, load_class_names(class_list), llm)
        except PromptRequestError as error:
            raise ValueError(str(error)) from error  # an expected failure: one line, unless --debug

    return (PromptArguments, ClassListArguments, LLMSettings), prompts


def _augment_command():
    from dataset_builders.arguments import AugmentArguments, SourceArguments

    from .textual_inversion_arguments import TextualInversionArguments

    def augment(model_args: ModelArguments, source_args, args, ags: AGSArguments, textual_inversion) -> None:
        from dataset_builders.augment import augment_dataset

        augment_dataset(source_args, args, model_args, ags.to_ags(), textual_inversion=textual_inversion)

    return (ModelArguments, SourceArguments, AugmentArguments, AGSArguments, TextualInversionArguments), augment


def _textual_inversion_command():
    from dataset_builders.arguments import SourceArguments

    from .textual_inversion_arguments import (
        TextualInversionArguments,
        TextualInversionModelArguments,
        TextualInversionRunArguments,
    )

    def textual_inversion(model_args, source_args, run_args, args) -> None:
        from accelerate import PartialState

        from dataset_builders.textual_inversion import train_dataset_tokens

        tokens = train_dataset_tokens(model_args, source_args, run_args, args)
        if PartialState().is_main_process:
            print(json.dumps(tokens, indent=2, ensure_ascii=False))

    arguments = (
        TextualInversionModelArguments, SourceArguments, TextualInversionRunArguments, TextualInversionArguments
    )
    return arguments, textual_inversion


def _evaluate_command():
    from dataset_builders.evaluation.arguments import DiversityArguments, EvaluateArguments

    def evaluate(args: EvaluateArguments, diversity_args: DiversityArguments) -> None:
        from dataset_builders.evaluation.report import report_summary
        from dataset_builders.evaluation.run import evaluate_augmented_dataset

        evaluate_augmented_dataset(args, diversity_args)
        print(report_summary(args.output_dir))

    return (EvaluateArguments, DiversityArguments), evaluate


def _compare_command():
    from dataset_builders.evaluation.arguments import CompareArguments

    def compare(args: CompareArguments) -> None:
        from dataset_builders.evaluation.comparison import compare_runs

        print(compare_runs(args))

    return (CompareArguments,), compare


def _demo_command():
    from dataset_builders.arguments import DemoArguments

    def demo(args: DemoArguments) -> None:
        from dataset_builders.demo import run_demo

        run_demo(args)

    return (DemoArguments,), demo


def _pipeline_repo_command():
    from .publish import publish_pipeline

    return (PipelineRepoArguments,), publish_pipeline


def _metrics_repo_command():
    from .metrics_repo import publish_metric

    return (MetricsRepoArguments,), publish_metric


def _tiny_models_command():
    return (TinyModelsArguments,), tiny_models


@dataclass(frozen=True)
class Command:
    help: str
    load: Callable[[], tuple[tuple[type, ...], Callable[..., None]]]
    """Returns the command's option dataclasses and the function to run (which imports what it needs)."""
    uses_diffusers: bool = True
    """Whether the command imports diffusers (whose progress bar is then silenced)."""
    positional: str | None = None
    """The option a leading bare value gives (`dalda metrics-repo clip_i` for `--metric clip_i`)."""


COMMANDS = {
    "demo": Command(
        "Run the whole job offline on a small drawn dataset with tiny models (about a minute).", _demo_command
    ),
    "augment": Command(
        "Augment a few-shot dataset with DALDA into a Hub-layout dataset (resumable; runs under accelerate).",
        _augment_command,
    ),
    "textual-inversion": Command(
        "Learn DA-Fusion's token per class from its shots (textual inversion; resumable; runs under accelerate).",
        _textual_inversion_command,
    ),
    "evaluate": Command(
        "Train the paper's few-shot classifiers on an augmented dataset, real-only beside it, and report accuracy.",
        _evaluate_command,
    ),
    "compare": Command(
        "Put several `dalda evaluate` reports side by side (the paper's Tables 2 and 3, accuracy vs shots).",
        _compare_command,
        uses_diffusers=False,
    ),
    "prompts": Command(
        "Write M scene sentences per class (LLM, templates or a file) as a prompt bank.",
        _prompts_command,
        uses_diffusers=False,
    ),
    "generate": Command("Generate images from real images and prompts with DALDAPipeline.", _generate_command),
    "pipeline-repo": Command(
        "Write (and push) a Hub pipeline repository that loads with `custom_pipeline=`.", _pipeline_repo_command
    ),
    "metrics-repo": Command(
        "Write (and push) a metric (clip_i, lpips_diversity) as a Hub Space that `evaluate.load` loads.",
        _metrics_repo_command,
        uses_diffusers=False,
        positional="metric",
    ),
    "tiny-models": Command(
        "Write tiny random models in the real layouts, for offline tests and demos.", _tiny_models_command
    ),
}


GROUPS = {
    "data": "Where the images and the class names come from.",
    "test set": "What the classifiers are tested (and validated) on.",
    "prompts": "The text prompts, and how they are made.",
    "LLM": "The OpenAI-compatible chat server that writes the sentences (the 'openai' backend).",
    "AGS": "Adaptive Guidance Scaling: how each synthetic image's IP-Adapter weight λ is drawn from its real image's "
    "CLIPScore (the README's 'Which AGS mode' says which to use).",
    "sampling": "How each image is denoised.",
    "class fidelity": "Each synthetic image's own CLIPScore (the `synthetic_clip_score` column): regenerating "
    "(`augment`) or leaving out (`evaluate`) the images it finds far from their class.",
    "textual inversion": "How DA-Fusion learns each class's token (for `augment`, with --method da_fusion only); "
    "DA-Fusion's settings by default.",
    "classifier": "The frozen backbone and its input.",
    "training": "How the linear heads train, how often, and which epoch they report.",
    "cache": "The backbone's features, cached on disk, and the work around them.",
    "diversity": "CLIP-I and LPIPS of the synthetic images (the paper's Table 1).",
    "output": "Where the result goes.",
    "models": "Hub ids or local folders of the models.",
}
"""Option headings of `--help`, in the order shown (a command shows those it has), with what each holds."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option once (not also in its hyphenated spelling) and its default only where it says something:
    not for required options, nor `None`."""

    def _get_help_string(self, action: argparse.Action) -> str:
        negated = [option for option in action.option_strings if option.startswith("--no_")]
        if negated:  # the `--no_x` twin of a boolean option `--x`
            return f"Turn off --{negated[0][len('--no_'):]}."
        if action.required:
            return f"{action.help} (required)"
        if action.default in (None, "", []):
            return action.help or ""
        return super()._get_help_string(action)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        shown = copy.copy(action)
        shown.option_strings = [
            option for option in action.option_strings if not option.startswith("--") or "-" not in option[2:]
        ] or action.option_strings
        return super()._format_action_invocation(shown)


class DaldaArgumentParser(HfArgumentParser):
    """`HfArgumentParser`, with each option under the heading its dataclass's `_option_groups` (or, for all its
    options, `_argument_group_name`) names, in the order of [`GROUPS`], and defaults shown only where they say
    something."""

    def __init__(self, dataclass_types, **kwargs):
        self._groups: dict[str, argparse._ArgumentGroup] = {}
        # No prefix matching: `--class_names` must not be read as `--class_names_file`.
        super().__init__(dataclass_types, formatter_class=_HelpFormatter, allow_abbrev=False, **kwargs)
        # argparse has no public way to drop a heading: the groups this command left empty are removed here.
        empty = [group for group in self._groups.values() if not group._group_actions]
        self._action_groups = [group for group in self._action_groups if group not in empty]

    def _group(self, title: str | None) -> argparse.ArgumentParser | argparse._ArgumentGroup:
        if title is None:
            return self
        if not self._groups:  # every heading at once, so that they show in order
            self._groups = {name: self.add_argument_group(name, description) for name, description in GROUPS.items()}
        if title not in self._groups:
            raise ValueError(f"Unknown option group {title!r}; add it to `GROUPS`.")
        return self._groups[title]

    def _add_dataclass_arguments(self, dtype) -> None:
        group_of = {name: group for group, names in getattr(dtype, "_option_groups", {}).items() for name in names}
        default_group = getattr(dtype, "_argument_group_name", None)
        type_hints = get_type_hints(dtype)
        for field in fields(dtype):
            if not field.init:
                continue
            field = copy.copy(field)  # the dataclass's own field keeps its type
            field.type = type_hints[field.name]
            self._parse_dataclass_field(self._group(group_of.get(field.name, default_group)), field)


def _current_name(name: str, spelled: Callable[[str], str], where: str = "") -> str:
    """The option's current name; a deprecated one is replaced, with a warning that spells both names as the user
    wrote them (and says `where`)."""
    if name not in DEPRECATED_OPTIONS:
        return name
    logger.warning("%s%s is deprecated; use %s.", where, spelled(name), spelled(DEPRECATED_OPTIONS[name]))
    return DEPRECATED_OPTIONS[name]


def _renamed_options(options: list[str]) -> list[str]:
    """Command-line `options` with every deprecated AGS option name replaced by its current name."""
    renamed = []
    for option in options:
        name, equals, value = option.partition("=")
        if name.startswith("--"):
            option = f"--{_current_name(name[2:], lambda option: f'--{option}')}{equals}{value}"
        renamed.append(option)
    return renamed


def _renamed_keys(config: dict[str, Any], path: str) -> dict[str, Any]:
    """A config file's options with every deprecated AGS key replaced by its current name."""
    return {_current_name(key, lambda key: f"`{key}`", f"{path}: "): value for key, value in config.items()}


def _read_config(path: str) -> dict[str, Any]:
    """The options of a JSON or YAML config file."""
    import yaml

    try:
        with open(path, encoding="utf-8") as file:
            config = json.load(file) if path.endswith(".json") else yaml.safe_load(file)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"Cannot read the config file {path!r}: {error}") from error
    if not isinstance(config, dict):
        raise ValueError(f"{path!r} must hold a mapping of option names to values.")
    return config


def _check_choices(parsed: tuple[Any, ...]) -> None:
    """Refuses a value outside a closed set (a `Literal` field), as the command line does for its options; a config
    file's values reach the dataclasses without argparse's check."""
    for options in parsed:
        hints = get_type_hints(type(options))
        for field in fields(options):
            choices = get_args(hints[field.name]) if get_origin(hints[field.name]) is Literal else ()
            value = getattr(options, field.name)
            if choices and value not in choices:
                raise ValueError(f"`{field.name}` must be one of {', '.join(map(repr, choices))}; got {value!r}.")


def parse_options(name: str, options: list[str]) -> tuple[tuple[Any, ...], Callable[..., None]]:
    """The parsed option dataclasses of command `name`, and the function that runs it."""
    arguments, run = COMMANDS[name].load()
    positional = COMMANDS[name].positional
    parser = DaldaArgumentParser(
        arguments,
        prog=f"dalda {name}",
        usage=f"dalda {name} {f'{positional.upper()} ' if positional else ''}[options] | dalda {name} config.yaml",
        description=COMMANDS[name].help,
    )
    takes_ags = AGSArguments in arguments  # only then are the old AGS names read
    names = [field.name for dataclass in arguments for field in fields(dataclass) if field.init]
    if len(options) == 1 and options[0].endswith((".json", ".yaml", ".yml")):
        config = _read_config(options[0])
        config = _renamed_keys(config, options[0]) if takes_ags else config
        _refuse_unknown([key for key in config if key not in names], names, f"in {options[0]!r}", prefix="")
        parsed = parser.parse_dict(config)
        _check_choices(parsed)
        return parsed, run
    if positional and options and not options[0].startswith("-"):
        options = [f"--{positional}", *options]
    options = _renamed_options(options) if takes_ags else options
    moved = {name: where for dataclass in arguments for name, where in getattr(dataclass, "_moved_options", {}).items()}
    _refuse_unknown(parser.parse_known_args(options)[1], names, "", moved=moved)  # before the options' own checks
    return parser.parse_args_into_dataclasses(options), run


def _refuse_unknown(
    unknown: list[str], names: list[str], where: str, prefix: str = "--", moved: dict[str, str] | None = None
) -> None:
    """Refuses options the command does not have, naming the first and the nearest real one (or, for an option that
    is gone, where its job went)."""
    if not unknown:
        return
    first = unknown[0]
    if prefix and not first.startswith("-"):
        raise ValueError(f"unexpected value {first!r}: every value follows the option it belongs to.")
    name = first.lstrip("-").split("=")[0].replace("-", "_")
    if name in (moved or {}):
        raise ValueError(f"there is no option {prefix}{name} any more: {moved[name]}.")
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f"; did you mean {prefix}{close[0]}?" if close else "; `--help` lists them."
    where = f" {where}" if where else ""
    raise ValueError(f"unknown option {prefix}{name}{where}{hint}")


def _usage() -> str:
    lines = ["usage: dalda <command> [options | config.json | config.yaml] [--verbose] [--debug]", "", "commands:"]
    width = max(map(len, COMMANDS)) + 2
    lines += [f"  {name:<{width}}{command.help}" for name, command in COMMANDS.items()]
    return "\n".join(lines + ["", "`dalda <command> --help` lists a command's options."])


def _one_line(error: BaseException) -> str:
    """An expected failure as one line: the message, or an OS error's reason and the file it names."""
    if isinstance(error, OSError) and error.strerror and error.filename:
        return f"{error.strerror}: {str(error.filename)!r}"
    return str(error).strip().replace("\n", " ")


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")
    verbose = VERBOSE_FLAG in argv
    argv = [option for option in argv if option not in (DEBUG_FLAG, VERBOSE_FLAG)]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    name, options = argv[0], argv[1:]
    if name not in COMMANDS:
        raise SystemExit(f"dalda: unknown command {name!r}\n\n{_usage()}")
    handler = logging.StreamHandler()
    if verbose:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(ConsoleFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    try:
        parsed, run = parse_options(name, options)
        if not verbose:
            silence_known_chatter(diffusers=COMMANDS[name].uses_diffusers)
        run(*parsed)
    except (ValueError, OSError) as error:
        if debug:
            raise
        raise SystemExit(f"dalda {name}: {_one_line(error)} ({DEBUG_FLAG} shows the traceback)") from error
    except KeyboardInterrupt:
        resume = " What was finished is kept: run the same command to go on." if name in RESUMABLE else ""
        raise SystemExit(f"dalda {name}: interrupted.{resume}")


if __name__ == "__main__":
    main()
