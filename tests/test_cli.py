"""The `dalda` command, run as users run it: an installed console script in a subprocess."""

import json
import subprocess
import sys
from pathlib import Path
from typing import get_args

import numpy as np
import PIL.Image
import pytest
from transformers import HfArgumentParser

from dataset_builders.arguments import CLIPScoreMode
from pipeline_dalda import DEFAULT_CLIP_SCORE_MODEL, AdaptiveGuidanceScaling
from pipeline_dalda.arguments import AGSArguments, AGSMode, ModelArguments
from pipeline_dalda.cli import COMMANDS, DaldaArgumentParser, parse_options
from pipeline_dalda.pipeline import AGS_MODES, CLASS_PROMPT_TEMPLATE, CLIP_SCORE_MODES, class_prompt
from pipeline_dalda.prompts.matching import display_name
from pipeline_dalda.seeding import item_seed

from .helpers import model_options, random_images, run_dalda


def test_help_lists_commands():
    result = run_dalda("--help")
    assert result.returncode == 0
    assert "generate" in result.stdout and "tiny-models" in result.stdout
    unknown = run_dalda("paint")
    assert unknown.returncode != 0 and "unknown command 'paint'" in unknown.stderr


def test_tiny_models_writes_a_loadable_kit(tmp_path):
    result = run_dalda("tiny-models", "--output_dir", tmp_path / "kit")
    assert result.returncode == 0, result.stderr
    paths = json.loads(result.stdout)
    assert Path(paths["stable_diffusion"], "model_index.json").is_file()
    assert Path(paths["ip_adapter"], "models", "ip-adapter_sd15.safetensors").is_file()
    assert Path(paths["ip_adapter"], "models", "image_encoder", "config.json").is_file()
    assert Path(paths["clip_scorer"], "config.json").is_file()


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
    for row in rows:
        assert 0 < row["clip_score"] < 1 and 0.1 <= row["ip_adapter_scale"] <= 0.9

    # The same run from command-line options, with another batch size, gives the same λ's and images.
    flags = [f"--{key}={value}" for key, value in options.items() if not isinstance(value, list)]
    flags[flags.index(f"--output_dir={tmp_path / 'from-yaml'}")] = f"--output_dir={tmp_path / 'from-flags'}"
    flags[flags.index("--batch_size=2")] = "--batch_size=3"
    lists = [arg for key in ("images", "prompts", "class_names", "labels") for arg in (f"--{key}", *options[key])]
    result = run_dalda("generate", *flags, *lists)
    assert result.returncode == 0, result.stderr
    again = [json.loads(line) for line in (tmp_path / "from-flags" / "metadata.jsonl").read_text().splitlines()]
    assert [row["ip_adapter_scale"] for row in again] == [row["ip_adapter_scale"] for row in rows]
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


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_option_dataclasses_work_with_a_plain_hf_argument_parser(command):
    arguments, _ = COMMANDS[command].load()
    assert HfArgumentParser(arguments).format_help() != ""


def test_closed_sets_are_choices_and_augment_groups_its_options():
    parser, actions = option_actions("augment")
    choices = {action.dest: tuple(action.choices) for action in actions if action.choices}
    assert choices["ags_mode"] == ("truncnorm", "reference", "random", "fixed")
    assert choices["clip_score_mode"] == ("probability", "cosine")
    assert choices["method"] == ("dalda", "real_guidance")
    assert choices["shot_selection"] == ("random", "paper") and "dtype" in choices
    headings = [line[:-1] for line in parser.format_help().splitlines() if line and line[0] != " " and line[-1] == ":"]
    assert headings == ["options", "data", "prompts", "AGS", "sampling", "output", "models"]
    # Help that is right for the command: the augment split holds the real images, the prompts split the classes.
    split_help = {command: next(a.help for a in option_actions(command)[1] if a.dest == "split")
                  for command in ("augment", "prompts")}
    assert "real images" in split_help["augment"] and "classes" in split_help["prompts"]


@pytest.mark.parametrize(
    "command, expected",
    [
        ("evaluate", ["options", "data", "test set", "classifier", "training", "cache", "diversity", "output"]),
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
    assert "there is no option --seeds any more: the paper's trials are now made by `dalda augment --seeds" in moved.stderr
    stray = run_dalda("augment", "--dataset", "x", "y", "--output_dir", tmp_path / "out")
    assert "unexpected value 'y'" in stray.stderr
    config = tmp_path / "augment.json"
    config.write_text(json.dumps({"dataset": "x", "output_dirr": "y"}))
    assert f"unknown option output_dirr in {str(config)!r}; did you mean output_dir?" in run_dalda("augment", config).stderr


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
    (_, _, _, ags), _ = parse_options("augment", [*options, "--mode", "reference"])
    assert ags.ags_mode == "reference" and "--mode is deprecated; use --ags_mode" in caplog.text
    (_, _, _, ags), _ = parse_options("augment", [*options, "--mode=random"])
    assert ags.ags_mode == "random"
    config = tmp_path / "augment.yaml"
    options = {"output_dir": str(tmp_path / "out"), "dataset": "pets", "base_prompt": True, "mode": "fixed"}
    config.write_text(json.dumps({**options, "fixed_scale": 0.5}))  # JSON is YAML
    (_, _, args, ags), _ = parse_options("augment", [str(config)])
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
    for config, message in (("bad-choice.yaml", "`ags_mode` must be one of 'truncnorm'"), ("malformed.yaml", "Cannot read")):
        result = run_dalda("augment", tmp_path / config)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        assert message in result.stderr.strip().splitlines()[-1], result.stderr
    debug = run_dalda(*cases["missing dataset"], "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "The dataset '/no/such'" in debug.stderr
