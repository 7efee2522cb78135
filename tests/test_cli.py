"""The `dalda` command, run as users run it: an installed console script in a subprocess."""

import dataclasses
import json
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import get_args, get_origin

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from transformers import HfArgumentParser

from dataset_builders.arguments import CLIPScoreMode
from pipeline_dalda import DEFAULT_CLIP_SCORE_MODEL, AdaptiveGuidanceScaling, CLIPScorer
from pipeline_dalda.arguments import AGSArguments, AGSMode, ModelArguments
from pipeline_dalda.cli import COMMANDS, DaldaArgumentParser, parse_options
from pipeline_dalda.images import load_image
from pipeline_dalda.loading import load_dalda_pipeline
from pipeline_dalda.dalda_scoring import AGS_MODES, CLASS_PROMPT_TEMPLATE, CLIP_SCORE_MODES, class_prompt
from pipeline_dalda.prompts.matching import display_name
from pipeline_dalda.seeding import item_seed, scale_generator

from .helpers import CLIP_SCORE_TOLERANCE, generate_two_items, kit_model_args, model_options, random_images, run_dalda


def test_help_lists_commands():
    result = run_dalda("--help")
    assert result.returncode == 0
    assert "generate" in result.stdout and "tiny-models" in result.stdout
    unknown = run_dalda("paint")
    assert unknown.returncode != 0 and "unknown command 'paint'" in unknown.stderr


def test_tiny_models_writes_a_loadable_kit(tiny_models, tmp_path):
    result = run_dalda("tiny-models", "--output_dir", tmp_path / "kit")
    assert result.returncode == 0, result.stderr
    paths = json.loads(result.stdout)
    assert Path(paths["stable_diffusion"], "model_index.json").is_file()
    assert Path(paths["ip_adapter"], "models", "ip-adapter_sd15.safetensors").is_file()
    assert Path(paths["ip_adapter"], "models", "image_encoder", "config.json").is_file()
    assert Path(paths["clip_scorer"], "config.json").is_file()

    # It loads as users load models, and generates: the same images as the kit the tests build in-process.
    written = load_dalda_pipeline(kit_model_args(types.SimpleNamespace(**paths), device="cpu"))
    built = load_dalda_pipeline(kit_model_args(tiny_models, device="cpu"))
    output = written(
        ["a dog"], ip_adapter_image=random_images(1, seed=2), class_names=["dog", "cat"], class_labels=[0],
        num_inference_steps=1, output_type="np", generator=torch.Generator().manual_seed(0),
    )
    assert output.images.shape == (1, written.generation_size, written.generation_size, 3)
    assert 0 < output.clip_scores[0] < 1 and 0.1 <= output.ip_adapter_scales[0] <= 0.9
    np.testing.assert_allclose(generate_two_items(written), generate_two_items(built), atol=1e-6)


@pytest.fixture
def real_image_files(tmp_path):
    paths = []
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # the third photo is shown rotated by 90°: upright it is 48 × 64
    for index, (image, size) in enumerate(zip(random_images(3, seed=30), [(50, 30), (20, 20), (64, 48)])):
        path = tmp_path / f"real_{index}.{'jpg' if index == 2 else 'png'}"
        image.resize(size).convert("L" if index == 1 else "RGB").save(path, exif=exif if index == 2 else None)
        paths.append(path)
    return paths


def test_generate_writes_images_and_metadata(tiny_models, real_image_files, tmp_path):
    options = {
        **model_options(tiny_models),
        "images": [str(p) for p in real_image_files],
        "prompts": ["a dog running on a beach"],
        "class_names": ["dog", "cat"],
        "labels": ["dog", "cat", "dog"],
        "num_shots": 2,
        "num_inference_steps": 2,
        "seed": 4,
        "batch_size": 2,
        "output_dir": str(tmp_path / "from-yaml"),
    }
    config = tmp_path / "generate.yaml"
    config.write_text(json.dumps(options))  # JSON is YAML
    result = run_dalda("generate", config)
    assert result.returncode == 0, result.stderr

    rows = [json.loads(line) for line in (tmp_path / "from-yaml" / "metadata.jsonl").read_text().splitlines()]
    assert [row["file_name"] for row in rows] == ["00000.png", "00001.png", "00002.png"]
    assert [row["seed"] for row in rows] == [item_seed(4, i, 0) for i in range(3)]
    sizes = [PIL.Image.open(tmp_path / "from-yaml" / row["file_name"]).size for row in rows]
    assert sizes == [(50, 30), (20, 20), (48, 64)]  # each real image's upright size
    # Each image's CLIPScore is the scorer's on its real image (upright), and its λ the AGS draw from its own stream.
    scorer = CLIPScorer.from_pretrained(tiny_models.clip_scorer)
    scores = scorer([load_image(path) for path in real_image_files], [0, 1, 0], ["dog", "cat"]).tolist()
    for index, row in enumerate(rows):
        assert row["clip_score"] == pytest.approx(scores[index], abs=CLIP_SCORE_TOLERANCE)
        stream = scale_generator(4, index, 0)
        draw = AdaptiveGuidanceScaling().sample([row["clip_score"]], num_shots=2, generator=stream)[0]
        assert row["ip_adapter_scale"] == pytest.approx(draw, abs=1e-6)

    # The folder loads as the README says, one row per image: the image as written, and its metadata as written.
    loaded = datasets.load_dataset(
        "imagefolder", data_dir=str(tmp_path / "from-yaml"), cache_dir=str(tmp_path / "datasets-cache")
    )["train"]
    assert len(loaded) == len(rows)
    assert sorted(loaded.column_names) == sorted(["image", *rows[0].keys() - {"file_name"}])
    for row, record in zip(rows, loaded):
        assert {name: record[name] for name in row if name != "file_name"} == {
            name: value for name, value in row.items() if name != "file_name"
        }
        written = PIL.Image.open(tmp_path / "from-yaml" / row["file_name"])
        assert record["image"].size == written.size  # the sizes differ, so a row paired with another image shows
        assert np.array_equal(np.asarray(record["image"]), np.asarray(written))

    # The same run from command-line options, with another batch size, gives the same λ's and images.
    flags = [f"--{key}={value}" for key, value in options.items() if not isinstance(value, list)]
    flags[flags.index(f"--output_dir={tmp_path / 'from-yaml'}")] = f"--output_dir={tmp_path / 'from-flags'}"
    flags[flags.index("--batch_size=2")] = "--batch_size=3"
    lists = [arg for key in ("images", "prompts", "class_names", "labels") for arg in (f"--{key}", *options[key])]
    result = run_dalda("generate", *flags, *lists)
    assert result.returncode == 0, result.stderr
    again = [json.loads(line) for line in (tmp_path / "from-flags" / "metadata.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(
        [row["ip_adapter_scale"] for row in again], [row["ip_adapter_scale"] for row in rows],
        atol=CLIP_SCORE_TOLERANCE,
    )
    for row in rows:
        first = np.asarray(PIL.Image.open(tmp_path / "from-yaml" / row["file_name"]), dtype=float)
        second = np.asarray(PIL.Image.open(tmp_path / "from-flags" / row["file_name"]), dtype=float)
        assert np.abs(first - second).max() <= 1


def test_generate_names_bad_inputs(tiny_models, real_image_files, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    common = [f"--{key}={value}" for key, value in model_options(tiny_models).items()]
    common += ["--output_dir", tmp_path / "out", "--prompts", "a cat"]

    result = run_dalda("generate", *common, "--images", broken, "--ip_adapter_scale", "0.5")
    assert result.returncode != 0 and f"cannot read image {str(broken)!r}" in result.stderr

    images = ["--images", *real_image_files]
    result = run_dalda("generate", *common, *images, "--class_names", "dog", "cat", "--labels", "dog", "fox", "dog")
    assert result.returncode != 0 and "`class_labels[1]` is 'fox'" in result.stderr


def option_actions(command):
    """The parser of `dalda <command>` and its options, as the command line builds them."""
    arguments, _ = COMMANDS[command].load()
    parser = DaldaArgumentParser(arguments)
    return parser, [action for action in parser._actions if action.option_strings and action.dest != "help"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_says_what_it_does(command):
    parser, actions = option_actions(command)
    assert actions
    for action in actions:
        assert action.help and len(action.help) > 10, f"dalda {command} {action.option_strings[0]} has no help"
    help_text = parser.format_help()
    assert "(default: None)" not in help_text
    hyphenated = [f"--{action.dest.replace('_', '-')}" for action in actions if "_" in action.dest]
    assert not [option for option in hyphenated if option in help_text]  # each option shown once, by its field name


LEFT_AT_DEFAULT = {"prompt_bank", "base_prompt", "class_names_file", "AugmentArguments.min_synthetic_score"}
"""Options (by name, or by dataclass and name) that another option's value forbids: the baselines have their own
prompt and no λ to raise; one of dataset and class names."""
VALID_VALUES = {"rotation_step": 5.0, "num_inference_steps": 8, "adam_beta2": 0.99}
"""Values a rule restricts (the rotation step divides 30°; DA-Fusion's smallest strength runs a quarter of the steps,
at least one; AdamW's β's are below 1)."""


def other_value(field: dataclasses.Field):
    """A value of `field`'s type that is not its default, as parsed and as written on a command line."""
    if field.name in VALID_VALUES:
        return VALID_VALUES[field.name], [str(VALID_VALUES[field.name])]
    default = field.default if field.default is not dataclasses.MISSING else None
    kind = field.type
    if get_origin(kind) in (typing.Union, types.UnionType):  # `X | None`
        kind = next(arg for arg in get_args(kind) if arg is not type(None))
    if get_origin(kind) is typing.Literal:
        value = next(choice for choice in reversed(get_args(kind)) if choice != default)
        return value, [value]
    if kind is bool:
        return not default, [str(not default)]
    if kind is int:
        return (default or 0) + 3, [str((default or 0) + 3)]
    if kind is float:
        value = round((default or 0.2) + 0.05, 4)
        return value, [str(value)]
    if get_origin(kind) is list:
        values = {int: [3, 4], float: [0.25, 0.5]}.get(get_args(kind)[0], ["first value", "second value"])
        return values, [str(v) for v in values]
    return f"Value of {field.name}", [f"Value of {field.name}"]


def real_argv(arguments) -> tuple[dict[tuple[str, str], object], list[str]]:
    """Every option of the dataclasses `arguments` at another value than its default: the values by (dataclass,
    option), and the command line that gives them."""
    expected, argv = {}, []
    for dataclass in arguments:
        for field in dataclasses.fields(dataclass):
            if not field.init:
                continue
            if LEFT_AT_DEFAULT & {field.name, f"{dataclass.__name__}.{field.name}"}:
                expected[dataclass.__name__, field.name] = field.default
                continue
            value, words = other_value(field)
            expected[dataclass.__name__, field.name] = value
            argv += [f"--{field.name}", *words]
    return expected, argv


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_parses_to_its_value(command, tmp_path):
    """Every option of the command set to a value other than its default, on a command line (for `dalda` and for a
    plain `HfArgumentParser` over the same dataclasses) and in a config file: each value arrives as given."""
    arguments, _ = COMMANDS[command].load()
    expected, argv = real_argv(arguments)
    config = tmp_path / "options.json"
    config.write_text(json.dumps({name: value for (_, name), value in expected.items()}))
    for source, parsed in (
        ("dalda", parse_options(command, argv)[0]),
        ("config file", parse_options(command, [str(config)])[0]),
        ("HfArgumentParser", HfArgumentParser(arguments).parse_args_into_dataclasses(args=argv)),
    ):
        actual = {
            (type(options).__name__, field.name): getattr(options, field.name)
            for options in parsed for field in dataclasses.fields(options) if field.init
        }
        assert actual == expected, source


def test_closed_sets_are_choices_and_augment_groups_its_options():
    parser, actions = option_actions("augment")
    choices = {action.dest: tuple(action.choices) for action in actions if action.choices}
    assert choices["ags_mode"] == ("truncnorm", "reference", "random", "fixed")
    assert choices["clip_score_mode"] == ("probability", "cosine")
    assert choices["method"] == ("dalda", "real_guidance", "da_fusion")
    assert choices["shot_selection"] == ("random", "paper") and "dtype" in choices
    headings = [line[:-1] for line in parser.format_help().splitlines() if line and line[0] != " " and line[-1] == ":"]
    assert headings == [
        "options", "data", "prompts", "AGS", "sampling", "class fidelity", "textual inversion", "output", "models"
    ]
    # Help that is right for the command: the augment split holds the real images, the prompts split the classes.
    split_help = {command: next(a.help for a in option_actions(command)[1] if a.dest == "split")
                  for command in ("augment", "prompts")}
    assert "real images" in split_help["augment"] and "classes" in split_help["prompts"]


@pytest.mark.parametrize(
    "command, expected",
    [
        (
            "evaluate",
            [
                "options", "data", "test set", "class fidelity", "classifier", "training", "cache", "diversity",
                "output",
            ],
        ),
        ("compare", ["options", "data", "output"]),
    ],
)
def test_the_evaluation_groups_its_options(command, expected):
    parser, actions = option_actions(command)
    headings = [line[:-1] for line in parser.format_help().splitlines() if line and line[0] != " " and line[-1] == ":"]
    assert headings == expected
    # Every option but --help sits under a heading of its own kind.
    assert all(group.title != "options" or action.dest == "help"
               for group in parser._action_groups for action in group._group_actions)


def test_abbreviations_are_refused_and_unknown_options_named_with_the_nearest(tmp_path):
    prefix = run_dalda("prompts", "--class_names", "a", "b", "--output", tmp_path / "bank.json")
    assert prefix.returncode != 0 and not (tmp_path / "bank.json").exists()
    assert "unknown option --class_names; did you mean --class_names_file?" in prefix.stderr
    assert "HfArgumentParser" not in prefix.stderr
    typo = run_dalda("augment", "--dataset", "x", "--output_dir", tmp_path / "out", "--num_shot", "3")
    assert "unknown option --num_shot; did you mean --num_shots?" in typo.stderr and not (tmp_path / "out").exists()
    moved = run_dalda("evaluate", "--dataset", "x", "--output_dir", tmp_path / "out", "--seeds", "0", "1")
    gone = "there is no option --seeds any more: the paper's trials are now made by `dalda augment --seeds"
    assert gone in moved.stderr
    stray = run_dalda("augment", "--dataset", "x", "y", "--output_dir", tmp_path / "out")
    assert "unexpected value 'y'" in stray.stderr
    config = tmp_path / "augment.json"
    config.write_text(json.dumps({"dataset": "x", "output_dirr": "y"}))
    misspelt = run_dalda("augment", config).stderr
    assert f"unknown option output_dirr in {str(config)!r}; did you mean output_dir?" in misspelt


def test_help_imports_no_heavy_library():
    """`--help` answers at once: no command imports torch, diffusers or datasets to list its options."""
    script = (
        "import sys\n"
        "from pipeline_dalda.cli import COMMANDS, main\n"
        "for name in COMMANDS:\n"
        "    try:\n"
        "        main([name, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'datasets', 'openai', 'accelerate') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_options_match_the_pipelines_defaults_and_choices():
    """The option modules stay light by not importing the pipeline file, which must stay self-contained: the values
    both spell out are kept in step here."""
    assert AGSArguments().to_ags() == AdaptiveGuidanceScaling()
    assert ModelArguments().clip_score_model == DEFAULT_CLIP_SCORE_MODEL
    assert get_args(AGSMode) == AGS_MODES and get_args(CLIPScoreMode) == CLIP_SCORE_MODES
    for name in ("golden_retriever", "tabby__cat", "Great-Dane", "pug"):
        assert class_prompt(name) == CLASS_PROMPT_TEMPLATE.format(display_name(name))


def test_old_mode_option_still_works_with_a_warning(tmp_path, caplog):
    options = ["--output_dir", str(tmp_path / "out"), "--dataset", "pets", "--base_prompt"]
    (_, _, _, ags, _), _ = parse_options("augment", [*options, "--mode", "reference"])
    assert ags.ags_mode == "reference" and "--mode is deprecated; use --ags_mode" in caplog.text
    (_, _, _, ags, _), _ = parse_options("augment", [*options, "--mode=random"])
    assert ags.ags_mode == "random"
    config = tmp_path / "augment.yaml"
    options = {"output_dir": str(tmp_path / "out"), "dataset": "pets", "base_prompt": True, "mode": "fixed"}
    config.write_text(json.dumps({**options, "fixed_scale": 0.5}))  # JSON is YAML
    (_, _, args, ags, _), _ = parse_options("augment", [str(config)])
    assert ags.to_ags().mode == "fixed" and args.base_prompt and "`mode` is deprecated" in caplog.text


def test_expected_failures_end_in_one_line(tiny_models, pets, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    augment = ["augment", *(f"--{key}={value}" for key, value in model_options(tiny_models).items()), "--base_prompt"]
    dataset = pets / "dataset"  # the inputs are checked first: the output folder's errors need good ones
    cases = {
        "missing dataset": [*augment, "--dataset", "/no/such", "--output_dir", tmp_path / "out"],
        "output is a file": [*augment, "--dataset", dataset, "--output_dir", tmp_path / "a-file"],
        "output under a file": [*augment, "--dataset", dataset, "--output_dir", tmp_path / "a-file" / "out"],
        "unwritable output": [*augment, "--dataset", dataset, "--output_dir", "/sys/dalda-out"],
        "prompts, missing dataset": ["prompts", "--dataset", "/no/such", "--output", tmp_path / "bank.json"],
        "bad choice": [*augment, "--dataset", "/no/such", "--output_dir", tmp_path / "out", "--ags_mode", "normal"],
    }
    expected = {
        "missing dataset": "The dataset '/no/such' is not there",
        "output is a file": f"`output_dir` '{tmp_path / 'a-file'}' is a file",
        "output under a file": f"Cannot write to `output_dir` '{tmp_path / 'a-file' / 'out'}' (Not a directory",
        "unwritable output": "Cannot write to `output_dir` '/sys/dalda-out'",
        "prompts, missing dataset": "The dataset '/no/such' is not there",
        "bad choice": "invalid choice: 'normal'",
    }
    for case, arguments in cases.items():
        result = run_dalda(*arguments)
        assert result.returncode != 0, case
        assert "Traceback" not in result.stderr, f"{case}: {result.stderr}"
        assert expected[case] in result.stderr.strip().splitlines()[-1], f"{case}: {result.stderr}"
    # A config file's values are checked as the options are, and a malformed file is named.
    (tmp_path / "bad-choice.yaml").write_text("dataset: pets\noutput_dir: out\nbase_prompt: true\nags_mode: normal\n")
    (tmp_path / "malformed.yaml").write_text("dataset: [pets\n")
    configs = (("bad-choice.yaml", "`ags_mode` must be one of 'truncnorm'"), ("malformed.yaml", "Cannot read"))
    for config, message in configs:
        result = run_dalda("augment", tmp_path / config)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        assert message in result.stderr.strip().splitlines()[-1], result.stderr
    debug = run_dalda(*cases["missing dataset"], "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "The dataset '/no/such'" in debug.stderr
