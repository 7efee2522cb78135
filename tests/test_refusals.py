"""A refused run leaves nothing behind: every hostile value of an option added to `dalda augment` and `dalda
evaluate` since their first release (and of `dalda textual-inversion`'s, which `augment --method da_fusion` takes)
ends in one line naming the option, before any folder or file is written, so that the corrected command starts
afresh instead of being refused as "a run made with other settings". Each case runs the real command line in this
process; each refusal comes before any model work (the tokenizer checks use the kit's tokenizer alone)."""

import pytest

from dataset_builders.testing import COLOURS, augment_run_settings, save_colour_dataset, write_augmented_dataset
from pipeline_dalda.cli import main
from pipeline_dalda.resume import ABSENT, changed_settings, describe_changes

from .helpers import model_options


def refusal(argv: list, capsys) -> str:
    """Runs `dalda <argv>`, which must fail in one line (its own or argparse's), and returns that line."""
    with pytest.raises(SystemExit) as exit_:
        main([str(value) for value in argv])
    error = capsys.readouterr().err
    assert "Traceback" not in error
    code = exit_.value.code
    line = code if isinstance(code, str) else error.strip().splitlines()[-1]  # argparse prints usage, then the error
    assert code not in (0, None) and "\n" not in line.strip(), line
    return line


def assert_nothing_written(tmp_path):
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.rglob(".dalda")), list(tmp_path.rglob(".dalda"))


def augment_argv(tiny_models, pets, tmp_path, method: str = "dalda") -> list:
    """`dalda augment` on the `pets` fixture with the kit's models and tiny settings, each option good."""
    argv = ["augment", *(f"--{key}={value}" for key, value in model_options(tiny_models).items()),
            "--dataset", pets / "dataset", "--method", method, "--num_prompts", 1, "--num_inference_steps", 4,
            "--output_dir", tmp_path / "out"]
    return argv + (["--prompt_bank", pets / "bank.json"] if method == "dalda" else [])


NOT_A_BOOLEAN = "Truthy value expected"
# (method, the hostile options, the option the one line must name, what it must say)
AUGMENT_CASES = {
    "method": ("dalda", ["--method", "dall_e"], "--method", "invalid choice"),
    "shot_selection": ("dalda", ["--shot_selection", "papers"], "--shot_selection", "invalid choice"),
    "seeds repeated": ("dalda", ["--seeds", 0, 0], "`seeds`", "must be distinct"),
    "compile": ("dalda", ["--compile", "maybe"], "--compile", NOT_A_BOOLEAN),
    "ags_mode": ("dalda", ["--ags_mode", "normal"], "--ags_mode", "invalid choice"),
    "real_guidance_strength 0": ("real_guidance", ["--real_guidance_strength", 0], "`real_guidance_strength`",
                                 "must be in (0, 1]"),
    "real_guidance_strength 1.5": ("real_guidance", ["--real_guidance_strength", 1.5], "`real_guidance_strength`",
                                   "must be in (0, 1]"),
    "real_guidance_strength nan": ("real_guidance", ["--real_guidance_strength", "nan"], "`real_guidance_strength`",
                                   "must be in (0, 1]"),
    "min_synthetic_score nan": ("dalda", ["--min_synthetic_score", "nan"], "`min_synthetic_score`",
                                "must be a number"),
    "min_synthetic_score inf": ("dalda", ["--min_synthetic_score", "inf"], "`min_synthetic_score`",
                                "must be a number"),
    "min_synthetic_score without λ": ("real_guidance", ["--min_synthetic_score", 0.5], "`min_synthetic_score`",
                                      "does not have"),
    "min_synthetic_score without CLIP": ("dalda", ["--min_synthetic_score", 0.5, "--clip_score_model="],
                                         "`min_synthetic_score`", "name a `clip_score_model`"),
    "max_attempts": ("dalda", ["--max_attempts", 0], "`max_attempts`", "must be >= 1"),
    "retry_scale_step 0": ("dalda", ["--retry_scale_step", 0], "`retry_scale_step`", "must be in (0, 1]"),
    "retry_scale_step 1.5": ("dalda", ["--retry_scale_step", 1.5], "`retry_scale_step`", "must be in (0, 1]"),
    "retry_scale_step nan": ("dalda", ["--retry_scale_step", "nan"], "`retry_scale_step`", "must be in (0, 1]"),
    **{
        name: ("da_fusion", [f"--{name}", 0], f"`{name}`", "must be >= 1")
        for name in ("resolution", "train_batch_size", "max_train_steps", "gradient_accumulation_steps", "repeats")
    },
    "learning_rate 0": ("da_fusion", ["--learning_rate", 0], "`learning_rate`", "must be > 0"),
    "learning_rate nan": ("da_fusion", ["--learning_rate", "nan"], "`learning_rate`", "must be > 0"),
    "adam_beta1 1": ("da_fusion", ["--adam_beta1", 1], "`adam_beta1`", "must be in [0, 1)"),
    "adam_beta1 negative": ("da_fusion", ["--adam_beta1", -0.1], "`adam_beta1`", "must be in [0, 1)"),
    "adam_beta2 1.5": ("da_fusion", ["--adam_beta2", 1.5], "`adam_beta2`", "must be in [0, 1)"),
    "adam_weight_decay": ("da_fusion", ["--adam_weight_decay", -1], "`adam_weight_decay`", "must be >= 0"),
    "adam_epsilon negative": ("da_fusion", ["--adam_epsilon", -1], "`adam_epsilon`", "must be >= 0"),
    "adam_epsilon nan": ("da_fusion", ["--adam_epsilon", "nan"], "`adam_epsilon`", "must be >= 0"),
    "initializer_token empty": ("da_fusion", ["--initializer_token", " "], "`initializer_token`", "must be a word"),
    "initializer_token of several tokens": ("da_fusion", ["--initializer_token", "the"], "`initializer_token`",
                                            "is 3 tokens for this tokenizer"),
    "initializer_token of several tokens, trials": ("da_fusion", ["--initializer_token", "the", "--seeds", 0, 1],
                                                    "`initializer_token`", "is 3 tokens for this tokenizer"),
    "mixed_precision": ("da_fusion", ["--mixed_precision", "fp8"], "--mixed_precision", "invalid choice"),
    **{
        name: ("da_fusion", [f"--{name}", "maybe"], f"--{name}", NOT_A_BOOLEAN)
        for name in ("center_crop", "scale_lr", "gradient_checkpointing")
    },
    "a textual-inversion option without da_fusion": ("dalda", ["--max_train_steps", 5], "`max_train_steps`",
                                                     "does not use"),
    "a textual-inversion option without da_fusion, trials": (
        "real_guidance", ["--initializer_token", "a", "--seeds", 0, 1], "`initializer_token`", "does not use"
    ),
}


@pytest.mark.parametrize("case", AUGMENT_CASES)
def test_augment_refuses_each_hostile_value_in_one_line_leaving_nothing(case, tiny_models, pets, tmp_path, capsys):
    method, options, option, message = AUGMENT_CASES[case]
    line = refusal([*augment_argv(tiny_models, pets, tmp_path, method), *options], capsys)
    assert option in line and message in line, line
    assert_nothing_written(tmp_path)


def test_textual_inversion_refuses_an_initializer_of_several_tokens_leaving_nothing(tiny_models, pets, tmp_path,
                                                                                      capsys):
    line = refusal(["textual-inversion", "--pretrained_model_name_or_path", tiny_models.stable_diffusion, "--dataset",
                    pets / "dataset", "--output_dir", tmp_path / "out", "--initializer_token", "the"], capsys)
    assert "`initializer_token` 'the' is 3 tokens" in line
    assert_nothing_written(tmp_path)


def test_the_corrected_da_fusion_command_then_runs(tiny_models, pets, tmp_path, capsys):
    """The issue's case: a refused `--initializer_token` once left `.dalda/run.json` in three folders, and the
    corrected command was then refused as "a run made with other settings"."""
    argv = [*augment_argv(tiny_models, pets, tmp_path, "da_fusion"), "--seeds", 0, "--num_shots", 1,
            "--resolution", 64, "--max_train_steps", 1]
    refusal([*argv, "--initializer_token", "the"], capsys)
    assert_nothing_written(tmp_path)
    main([str(value) for value in [*argv, "--initializer_token", "a"]])
    assert (tmp_path / "out" / "seed_0" / "textual_inversion" / "class_tokens.safetensors").is_file()
    assert list((tmp_path / "out" / "seed_0" / "data").glob("*.parquet"))


@pytest.fixture(scope="module")
def augmented_colours(tmp_path_factory):
    """A colour dataset of one real and one synthetic image per class, as `dalda augment` lays it out."""
    root = tmp_path_factory.mktemp("colours")
    labels, images = save_colour_dataset(root / "source", images_per_class=5)
    reals = [(row, images[row], labels[row]) for row in range(len(COLOURS))]
    synthetic = {row: [(images[row + len(COLOURS)], labels[row])] for row in range(len(COLOURS))}
    return write_augmented_dataset(root / "augmented", reals, synthetic, augment_run_settings(root / "source", 1))


EVALUATE_CASES = {
    "classifier_seeds repeated": (["--classifier_seeds", 0, 0], "`classifier_seeds`", "must be distinct"),
    "batch_norm": (["--batch_norm", "sometimes"], "--batch_norm", "invalid choice"),
    "batch_norm paper without batch norm": (["--batch_norm", "paper"], "`batch_norm paper`", "would change nothing"),
    "min_synthetic_score nan": (["--min_synthetic_score", "nan"], "`min_synthetic_score`", "must be a finite"),
    "min_synthetic_score inf": (["--min_synthetic_score", "inf"], "`min_synthetic_score`", "must be a finite"),
    "min_synthetic_score, nothing drawn": (["--min_synthetic_score", 0.5, "--synthetic_probability", 0],
                                           "`min_synthetic_score`", "raise `synthetic_probability`"),
    "min_synthetic_score_sweep repeated": (["--min_synthetic_score_sweep", 0.1, 0.1], "`min_synthetic_score_sweep`",
                                           "must be distinct"),
    "min_synthetic_score_sweep nan": (["--min_synthetic_score_sweep", 0.1, "nan"], "`min_synthetic_score_sweep`",
                                      "must be finite"),
    "rotation_step 7": (["--rotation_step", 7], "`rotation_step`", "must divide 30°"),
    "rotation_step 0": (["--rotation_step", 0], "`rotation_step`", "must be a number of degrees that divides 30"),
    "rotation_step negative": (["--rotation_step", -5], "`rotation_step`", "must be a number of degrees"),
    "rotation_step nan": (["--rotation_step", "nan"], "`rotation_step`", "must be a number"),
    "rotation_step inf": (["--rotation_step", "inf"], "`rotation_step`", "must be a number"),
}


@pytest.mark.parametrize("case", EVALUATE_CASES)
def test_evaluate_refuses_each_hostile_value_in_one_line_leaving_nothing(
    case, augmented_colours, tiny_models, tmp_path, capsys
):
    options, option, message = EVALUATE_CASES[case]
    argv = ["evaluate", "--dataset", augmented_colours, "--output_dir", tmp_path / "out", "--backbone",
            tiny_models.clip_scorer, "--image_size", 32, "--epochs", 1, "--iterations_per_epoch", 2,
            "--cache_dir", tmp_path / "cache", *options]
    line = refusal(argv, capsys)
    assert option in line and message in line, line
    assert_nothing_written(tmp_path)
    assert not (tmp_path / "cache").exists()


def test_evaluate_refuses_an_output_dir_under_a_file_before_it_loads_the_backbone(
    augmented_colours, tiny_models, tmp_path, capsys, monkeypatch
):
    def no_backbone(*args, **kwargs):
        raise AssertionError("the backbone was loaded before the output folder was checked")

    monkeypatch.setattr("dataset_builders.evaluation.run.load_backbone", no_backbone)
    (tmp_path / "file").write_text("")
    line = refusal(["evaluate", "--dataset", augmented_colours, "--output_dir", tmp_path / "file" / "out",
                    "--backbone", tiny_models.clip_scorer], capsys)
    assert "`output_dir`" in line and "lies under the file" in line, line


def test_changed_settings_are_named_by_dotted_path_with_both_values():
    recorded = {"generation": {"num_prompts": 10, "seed": 0}, "models": {"dtype": "float32"}, "source": {"a": [1]}}
    settings = {"generation": {"num_prompts": 5, "seed": 0}, "models": {"dtype": "float16", "device": "cpu"},
                "source": {"a": [1]}}
    assert list(changed_settings(recorded, settings)) == [
        ("generation.num_prompts", 10, 5), ("models.device", ABSENT, "cpu"), ("models.dtype", "float32", "float16")
    ]
    assert describe_changes(recorded, settings) == (
        'generation.num_prompts: 10 → 5, models.device: (absent) → "cpu", models.dtype: "float32" → "float16"'
    )
    many = {"classes": {f"class {index}": {"shots_sha256": "x" * 100} for index in range(8)}}
    other = {"classes": {f"class {index}": {"shots_sha256": "y" * 100} for index in range(8)}}
    described = describe_changes(many, other)
    assert described.endswith(" and 3 more") and described.count(" → ") == 5
    assert f'"{"x" * 78}…' in described and "x" * 100 not in described
