"""`dalda augment` end to end on the kit's tiny models: Hub layout, determinism, resume, accelerate, bad inputs."""

import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest

from dataset_builders.arguments import AugmentArguments, SourceArguments
from dataset_builders.augment import augment_dataset
from dataset_builders.source import select_few_shot
from pipeline_dalda import AdaptiveGuidanceScaling
from pipeline_dalda.prompts import PromptArguments, generate_prompt_bank
from pipeline_dalda.seeding import item_seed
from pipeline_dalda.testing import IP_ADAPTER_WEIGHT_NAME

from .helpers import (
    run_in_two_processes,
    PETS_CLASSES,
    REGENERATION_STEPS,
    assert_same_dataset,
    augment,
    dalda_command,
    kill_midway,
    kit_model_args,
    random_images,
    run_dalda,
)
from .hub_server import SECRET_TOKEN, HubServer, load_dataset_from


def test_output_loads_with_load_dataset_as_from_the_hub(augmented, pets):
    output, summary = augmented
    dataset = datasets.load_dataset(str(output), split="train")
    assert len(dataset) == len(PETS_CLASSES) * 2 * (1 + 2) == summary["rows"]
    assert dataset.features["label"].names == PETS_CLASSES
    assert set(dataset.column_names) >= {
        "image", "label", "is_synthetic", "source_index", "prompt", "ip_adapter_scale", "clip_score", "seed"}
    assert sorted(Path(output, "data").iterdir())[0].name == "train-00000-of-00002.parquet"

    source = datasets.load_from_disk(str(pets / "dataset"))
    selected = select_few_shot(source["label"], PETS_CLASSES, 2, seed=0)
    real = dataset.filter(lambda row: not row["is_synthetic"])
    assert sorted(real["source_index"]) == sorted(selected)
    bank = json.loads((pets / "bank.json").read_text())["prompts"]
    for row in dataset.filter(lambda row: row["is_synthetic"]):
        source_row = source[row["source_index"]]
        assert row["label"] == source_row["label"]
        assert row["image"].size == source_row["image"].size
        assert row["prompt"] in bank[PETS_CLASSES[row["label"]]][:2]
        assert row["seed"] in {item_seed(0, row["source_index"], j) for j in range(2)}
        assert 0.1 <= row["ip_adapter_scale"] <= 0.9 and 0 < row["clip_score"] < 1
    for row in real:
        assert np.array_equal(np.asarray(row["image"]), np.asarray(source[row["source_index"]]["image"]))


def test_card_says_how_it_was_made_and_holds_no_secret(augmented, tiny_models):
    output, summary = augmented
    card = (output / "README.md").read_text()
    for fact in (
        f"`./{tiny_models.stable_diffusion.name}`", f"`./{tiny_models.ip_adapter.name}`", IP_ADAPTER_WEIGHT_NAME,
        "real images per class (n) | 2", "synthetic images per real image (M) | 2", "mode `truncnorm`",
        "backend `template`", "18 rows", "6 real images", "12 synthetic", "| λ (synthetic images) |",
        f"| {summary['ip_adapter_scale']['mean']} |", "CreativeML OpenRAIL-M", "arXiv:2409.16949",
    ):
        assert fact in card, fact
    assert SECRET_TOKEN not in card
    for path in output.rglob("*"):
        if path.is_file():
            assert SECRET_TOKEN.encode() not in path.read_bytes(), path
    sheet = PIL.Image.open(output / "contact_sheet.png")
    assert sheet.size[0] > 3 * 128 and sheet.size[1] > 6 * 128


def test_finished_output_is_not_regenerated_and_other_settings_are_refused(augmented, tiny_models, pets):
    output, _ = augmented
    shards = {path: path.stat().st_mtime_ns for path in (output / "data").iterdir()}
    augment(tiny_models, pets, output)
    assert {path: path.stat().st_mtime_ns for path in (output / "data").iterdir()} == shards
    with pytest.raises(ValueError, match="other settings \\(generation\\): generation.num_prompts: 2 → 3; run with"):
        augment(tiny_models, pets, output, num_prompts=3)


def rerun(tiny_models, pets, output, **model_overrides):
    """The `augmented` fixture's run again, with other device options."""
    source = SourceArguments(dataset=str(pets / "dataset"), num_shots=2)
    args = AugmentArguments(output_dir=str(output), prompt_bank=str(pets / "bank.json"), num_prompts=2,
                            num_inference_steps=2, batch_size=3)
    return augment_dataset(source, args, kit_model_args(tiny_models, **model_overrides), AdaptiveGuidanceScaling())


def test_another_dtype_or_device_type_is_refused_and_compile_is_recorded_per_shard(augmented, tiny_models, pets):
    output, _ = augmented
    made = kit_model_args(tiny_models)
    dtype, device = str(made.resolved_dtype()).removeprefix("torch."), made.resolved_device().type
    with pytest.raises(ValueError, match=f'other settings \\(models\\): models.dtype: "{dtype}" → "bfloat16";'):
        rerun(tiny_models, pets, output, dtype="bfloat16")
    with pytest.raises(ValueError, match=f'other settings \\(models\\): models.device: "{device}" → "meta";'):
        rerun(tiny_models, pets, output, device="meta")  # refused before any model is put on it
    # Another index of the same device type, and the compiled UNet, make the same images: the run is resumed.
    shards = {path: path.stat().st_mtime_ns for path in (output / "data").iterdir()}
    rerun(tiny_models, pets, output, device=f"{device}:0" if device == "cuda" else device, compile=True)
    assert {path: path.stat().st_mtime_ns for path in (output / "data").iterdir()} == shards
    reports = [json.loads(path.read_text())["made_with"] for path in (output / ".dalda" / "reports").glob("*.json")]
    assert len(reports) == len(shards)
    assert all(report["device"].split(":")[0] == device and report["dtype"] == dtype for report in reports), reports
    assert not any(report["compile"] for report in reports)  # the fixture's run, eager


def test_base_prompt_and_not_enough_shots(tiny_models, pets, tmp_path):
    summary = augment(tiny_models, pets, tmp_path / "base", prompt_bank=None, base_prompt=True, num_shots=1)
    dataset = datasets.load_dataset(str(tmp_path / "base"), split="train")
    prompts = set(dataset.filter(lambda row: row["is_synthetic"])["prompt"])
    assert prompts == {"a photo of a pug", "a photo of a beagle", "a photo of a persian cat"}
    assert summary["rows"] == 3 * 1 * 3
    with pytest.raises(ValueError, match="Class 'pug' \\(label 0\\) has 3 images, fewer than the 4 shots"):
        augment(tiny_models, pets, tmp_path / "four", num_shots=4)


def config_file(tiny_models, pets, output_dir, path, **overrides):
    config = {
        **{key: value for key, value in vars(kit_model_args(tiny_models)).items()},
        "dataset": str(pets / "dataset"), "num_shots": 2, "prompt_bank": str(pets / "bank.json"), "num_prompts": 2,
        "num_inference_steps": 2, "batch_size": 3, "output_dir": str(output_dir), **overrides,
    }
    path.write_text(json.dumps(config))
    return path


def test_sigkill_then_resume_finishes_without_redoing_shards(regenerated, tiny_models, pets, tmp_path):
    """Killed midway and resumed, a run that regenerates its images below a threshold makes the dataset an
    uninterrupted run makes: the same rows, attempts and images."""
    output = tmp_path / "killed"
    config = config_file(tiny_models, pets, output, tmp_path / "config.json", real_images_per_shard=1,
                         num_inference_steps=REGENERATION_STEPS, min_synthetic_score=regenerated.threshold)
    command = [*dalda_command(), "augment", str(config)]
    kill_midway(command, ready=lambda: len(list(output.glob("data/*.parquet"))) >= 2)
    finished = {path: (path.stat().st_ino, path.stat().st_mtime_ns) for path in (output / "data").glob("*.parquet")}
    assert 2 <= len(finished) < 6

    result = run_dalda("augment", config)
    assert result.returncode == 0, result.stderr
    for path, stamp in finished.items():
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == stamp, f"{path.name} was regenerated"
    assert not list(output.rglob("*.tmp"))
    resumed = datasets.load_dataset(str(output), split="train")
    assert max(resumed["attempts"], key=lambda attempts: attempts or 0) > 1
    assert_same_dataset(resumed, datasets.load_dataset(str(regenerated.output), split="train"))


@pytest.mark.skipif(shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None,
                    reason="accelerate's launcher is not installed beside this Python")
def test_two_accelerate_processes_equal_one(augmented, tiny_models, pets, tmp_path):
    output = tmp_path / "two-processes"
    config = config_file(tiny_models, pets, output, tmp_path / "config.json", real_images_per_shard=1)
    run_in_two_processes("augment", config)
    writers = {json.loads(path.read_text())["process"] for path in (output / ".dalda" / "reports").glob("*.json")}
    assert writers == {0, 1}
    assert_same_dataset(
        datasets.load_dataset(str(augmented[0]), split="train"), datasets.load_dataset(str(output), split="train")
    )


def test_demo_runs_the_whole_loop(tmp_path):
    result = run_dalda("demo", "--output_dir", tmp_path / "demo")
    assert result.returncode == 0, result.stderr[-3000:]
    dataset = datasets.load_dataset(str(tmp_path / "demo" / "dataset"), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(dataset) == 3 * 2 * (1 + 3)
    assert PIL.Image.open(tmp_path / "demo" / "dataset" / "contact_sheet.png").size[0] > 4 * 128
    report = json.loads((tmp_path / "demo" / "evaluation" / "results.json").read_text())
    assert report["test_set"]["test_images"] == 3 * 6 and report["training"]["synthetic_images"] == 3 * 2 * 3
    assert "| real only |" in result.stdout and "accuracies mean nothing" in result.stdout
    assert "dalda augment --dataset" in result.stdout and "dalda evaluate --dataset" in result.stdout
    assert_only_dalda_output(result.stderr)


OWN_BARS = ("classes", "CLIPScore", "synthetic images", "real images", "test", "training features", "2 classifiers")
"""The progress bars the demo draws itself."""


def assert_only_dalda_output(stderr: str) -> None:
    """Every line is one of dalda's own progress bars or its own log lines: no library's warning, deprecation,
    loading or writing bar."""
    lines = [line.strip() for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines, "the demo reported no progress"
    for line in lines:
        if "%|" in line:
            assert line.split(":")[0] in OWN_BARS, line
        else:
            assert not re.search(r"warn|deprecat|error|Loading (weights|pipeline)|float32|Writing|Generating", line,
                                 re.IGNORECASE), line


def test_verbose_brings_the_libraries_output_back(tmp_path):
    quiet = run_dalda("tiny-models", "--output_dir", tmp_path / "quiet")
    verbose = run_dalda("tiny-models", "--output_dir", tmp_path / "verbose", "--verbose")
    assert quiet.returncode == verbose.returncode == 0, quiet.stderr[-2000:] + verbose.stderr[-2000:]
    assert "Writing model shards" not in quiet.stderr and "Writing model shards" in verbose.stderr


def test_known_chatter_is_dropped_and_real_warnings_pass(caplog, monkeypatch):
    import logging

    from pipeline_dalda.chatter import DATASETS_PROGRESS_SWITCH, silence_known_chatter

    monkeypatch.setenv(DATASETS_PROGRESS_SWITCH, "1")
    silence_known_chatter(diffusers=False)
    caplog.set_level(logging.WARNING)
    for name, message in (
        ("transformers.utils.import_utils", "`CLIPImageProcessor` requires torchvision (not installed); falling back to"),
        ("diffusers.models.modeling_utils", "There are modules in UNet2DConditionModel that should be kept in float32: []."),
        ("diffusers.models.modeling_utils", "There are modules in UNet2DConditionModel that should be kept in float32: ['a']."),
        ("transformers.utils.import_utils", "Some real problem."),
    ):
        logging.getLogger(name).warning(message)
    assert [record.getMessage() for record in caplog.records] == [
        "There are modules in UNet2DConditionModel that should be kept in float32: ['a'].", "Some real problem."
    ]


def encoded(image, format, **save):
    buffer = io.BytesIO()
    image.save(buffer, format=format, **save)
    return buffer.getvalue()


def test_bad_inputs_are_skipped_and_reported(tiny_models, tmp_path):
    names = ["a/b", "..", 'say "hi"', "naïve café"]
    base = random_images(1, seed=50, size=(40, 30))[0]
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    sixteen_bit = PIL.Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)
    good_jpeg = encoded(base, "JPEG")
    cases = [  # (image bytes, label)
        (good_jpeg[: len(good_jpeg) // 2], 0),  # truncated
        (b"this is not an image", 0),  # corrupt
        (encoded(base.convert("L"), "PNG"), 0),
        (encoded(base.convert("RGBA"), "PNG"), 0),
        (encoded(base.convert("CMYK"), "JPEG"), 1),
        (encoded(sixteen_bit, "PNG"), 1),
        (encoded(base.convert("P"), "PNG"), 1),
        (encoded(base, "JPEG", exif=exif), 2),  # EXIF-rotated
        (encoded(base.resize((1, 1)), "PNG"), 2),
        (encoded(base.resize((6000, 4000)), "JPEG"), 3),
        (encoded(base, "PNG"), 3),
        (encoded(base, "PNG"), -1),  # no label
        (encoded(base, "PNG"), 99),  # a label outside the names
    ]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    table = {"image": [{"bytes": data, "path": None} for data, _ in cases], "label": [label for _, label in cases]}
    datasets.Dataset.from_dict(table, features=features).to_parquet(tmp_path / "source" / "data" / "train.parquet")
    (tmp_path / "classes.json").write_text(json.dumps(names))
    generate_prompt_bank(PromptArguments(output=str(tmp_path / "bank.json"), num_prompts=1), names)
    before = {path for path in tmp_path.rglob("*") if "out" not in path.parts}

    source = SourceArguments(dataset=str(tmp_path / "source"), class_names_file=str(tmp_path / "classes.json"),
                             num_shots=4, allow_fewer_shots=True)
    args = AugmentArguments(output_dir=str(tmp_path / "out"), prompt_bank=str(tmp_path / "bank.json"), num_prompts=1,
                            num_inference_steps=1, batch_size=4)
    summary = augment_dataset(source, args, kit_model_args(tiny_models), AdaptiveGuidanceScaling())

    assert summary["skipped_real_images"] == 2 and summary["rows_without_a_known_label"] == 2
    dataset = datasets.load_dataset(str(tmp_path / "out"), split="train")
    assert dataset.features["label"].names == names
    assert len(dataset) == (11 - 2) * 2
    sizes = {(row["source_index"], row["is_synthetic"]): row["image"].size for row in dataset}
    assert sizes[(7, True)] == (30, 40)  # upright, like the EXIF-rotated real image
    assert sizes[(8, True)] == (1, 1) and sizes[(9, True)] == (6000, 4000)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| 0 | cannot decode the image" in card and "| 1 | cannot decode the image" in card
    assert "2 source rows have a label outside the class names" in card
    assert str(tmp_path) not in card
    assert {path for path in tmp_path.rglob("*") if "out" not in path.parts} == before

    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="class list is empty"):
        augment_dataset(
            SourceArguments(dataset=str(tmp_path / "source"), class_names_file=str(empty)), args,
            kit_model_args(tiny_models), AdaptiveGuidanceScaling(),
        )


def test_push_to_hub_uploads_the_folder_without_bookkeeping(augmented, tiny_models, pets, tmp_path):
    output, _ = augmented
    config = config_file(tiny_models, pets, output, tmp_path / "config.json", push_to_hub="org/pets-dalda",
                         private=True)
    with HubServer() as hub:
        env = {**os.environ, **hub.env}
        result = subprocess.run([*dalda_command(), "augment", str(config)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert hub.created == [{"name": "pets-dalda", "organization": "org", "visibility": "private", "type": "dataset"}]
    assert hub.authorizations == {f"Bearer {SECRET_TOKEN}"}
    local = {str(path.relative_to(output)) for path in output.rglob("*") if path.is_file() and ".dalda" not in path.parts}
    committed = hub.repo_files["datasets/org/pets-dalda"]
    assert set(committed) == local and "README.md" in local and "contact_sheet.png" in local
    for name, content in committed.items():
        assert content == (output / name).read_bytes()
        assert SECRET_TOKEN.encode() not in content
    assert SECRET_TOKEN not in result.stdout + result.stderr


def test_the_pushed_dataset_loads_from_the_hub_as_the_folder(augmented, tiny_models, pets, tmp_path):
    """`load_dataset("org/pets-dalda")` of the pushed folder, from the (loopback) Hub in a fresh process with empty
    caches, is the folder's dataset: every shard downloaded, the card's features (class names) kept."""
    output, _ = augmented
    config = config_file(tiny_models, pets, output, tmp_path / "config.json", push_to_hub="org/pets-dalda")
    with HubServer() as hub:
        pushed = subprocess.run([*dalda_command(), "augment", str(config)], env={**os.environ, **hub.env},
                                capture_output=True, text=True)
        assert pushed.returncode == 0, pushed.stderr[-3000:]
        loaded = load_dataset_from(hub, tmp_path / "home", "org/pets-dalda")
    shards = {f"datasets/org/pets-dalda/data/{path.name}" for path in output.glob("data/*.parquet")}
    assert shards <= set(hub.downloads) and len(shards) == 2
    local = datasets.load_dataset(str(output), split="train")
    assert loaded.features == local.features and len(loaded) == len(local)
    assert_same_dataset(loaded, local, tolerance=0)


def test_decoding_encoding_and_writing_run_off_the_denoising_thread(tiny_models, pets, tmp_path, monkeypatch):
    """The overlap of the module docstring: real images decode, kept images PNG-encode and shards write on their
    own threads, while the results stay those of the plain run."""
    import dataset_builders.augment as augment_module

    threads = {"decode": set(), "encode": set(), "write": set()}

    def recorded(stage, function):
        def wrapper(*args, **kwargs):
            threads[stage].add(threading.current_thread().name)
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(augment_module, "load_image", recorded("decode", augment_module.load_image))
    monkeypatch.setattr(augment_module, "encode_pil_image", recorded("encode", augment_module.encode_pil_image))
    monkeypatch.setattr(augment_module, "write_shard", recorded("write", augment_module.write_shard))
    augment(tiny_models, pets, tmp_path / "out", real_images_per_shard=2)

    assert {name.split("_")[0] for name in threads["encode"]} == {"dalda-encode"}
    assert {name.split("_")[0] for name in threads["write"]} == {"dalda-write"}
    # Decoding: the CLIPScores' (once, up front, on this thread) and the shards' (in the background).
    assert threading.main_thread().name in threads["decode"]
    assert any(name.startswith("dalda-decode") for name in threads["decode"])
    assert len(list((tmp_path / "out" / "data").glob("*.parquet"))) == 3
