"""The `dalda` command, run as users run it: an installed console script in a subprocess."""

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from .conftest import random_images
from .helpers import model_options, run_dalda


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
    for index, (image, size) in enumerate(zip(random_images(3, seed=30), [(50, 30), (20, 20), (64, 48)])):
        path = tmp_path / f"real_{index}.png"
        image.resize(size).convert("L" if index == 1 else "RGB").save(path)
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
    assert [row["seed"] for row in rows] == [4, 5, 6]
    for row, source in zip(rows, real_image_files):
        with PIL.Image.open(tmp_path / "from-yaml" / row["file_name"]) as generated, PIL.Image.open(source) as real:
            assert generated.size == real.size
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
