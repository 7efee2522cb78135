"""The pipeline's Hub repository: written by `dalda pipeline-repo`, loaded with real `from_pretrained(...,
custom_pipeline=<folder>)`, and pushed to the loopback Hub double."""

import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest
from diffusers import DiffusionPipeline
from huggingface_hub import ModelCard

import pipeline_dalda
from pipeline_dalda import DALDA_SCHEDULER_CONFIG
from pipeline_dalda.arguments import ModelArguments
from pipeline_dalda.dalda_per_item import SHARED_MODULES
from pipeline_dalda.publish import FOLDER_PLACEHOLDER, write_pipeline_repo

from .helpers import generate_two_items, load_ip_adapter
from .helpers import run_dalda
from .hub_server import SECRET_TOKEN, HubServer


PACKAGE_PIPELINE_FILE = Path(pipeline_dalda.__file__).with_name("pipeline.py")
REPO_FILES = sorted(["README.md", "pipeline.py", *SHARED_MODULES])
"""The pipeline repository: the card, the pipeline file and the DALDA modules it imports."""


def assert_package_modules(files: dict[str, bytes]) -> None:
    """The pipeline file and the DALDA modules are the package's, byte for byte."""
    for name in ["pipeline.py", *SHARED_MODULES]:
        assert files[name] == PACKAGE_PIPELINE_FILE.with_name(name).read_bytes(), name


def example_calls(card: ModelCard) -> dict[str, ast.Call]:
    """The calls of the card's Python example by the name called (`from_pretrained`, `load_ip_adapter`, ...), for
    the first call of each name; parsing it also proves the rendered example is valid Python."""
    (example,) = re.findall(r"```python\n(.*?)```", card.text, flags=re.S)
    calls = {}
    for node in ast.walk(ast.parse(example)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            calls.setdefault(node.func.attr, node)
    return calls


def literal_keywords(call: ast.Call) -> dict:
    """The call's keyword arguments whose values are literals, by name."""
    return {
        keyword.arg: ast.literal_eval(keyword.value)
        for keyword in call.keywords
        if isinstance(keyword.value, ast.Constant)
    }


def test_the_folder_holds_the_pipeline_file_and_a_card_that_loads_it(tmp_path):
    folder = write_pipeline_repo(tmp_path / "dalda-pipeline", repo_id="org/dalda-pipeline")
    assert sorted(path.name for path in folder.iterdir()) == REPO_FILES
    assert_package_modules({path.name: path.read_bytes() for path in folder.iterdir()})

    card = ModelCard.load(folder / "README.md")
    models = ModelArguments()
    assert card.data.library_name == "diffusers" and card.data.license == "apache-2.0"
    assert card.data.base_model == models.pretrained_model_name_or_path
    assert {"diffusers", "ip-adapter", "data-augmentation"} <= set(card.data.tags)

    calls = example_calls(card)
    load = calls["from_pretrained"]
    assert load.func.value.id == "DiffusionPipeline"
    assert ast.literal_eval(load.args[0]) == models.pretrained_model_name_or_path
    assert literal_keywords(load)["custom_pipeline"] == "org/dalda-pipeline"
    assert literal_keywords(load)["trust_remote_code"] is True
    assert {"clip_model", "clip_processor"} <= {keyword.arg for keyword in load.keywords}
    assert literal_keywords(calls["from_config"]) == DALDA_SCHEDULER_CONFIG
    ip_adapter = calls["load_ip_adapter"]
    assert ast.literal_eval(ip_adapter.args[0]) == models.ip_adapter
    assert literal_keywords(ip_adapter) == {
        "subfolder": models.ip_adapter_subfolder,
        "weight_name": models.ip_adapter_weight_name,
    }


def test_without_a_repo_id_the_card_loads_from_the_folder_and_a_foreign_folder_is_refused(tmp_path):
    folder = write_pipeline_repo(tmp_path / "dalda-pipeline")
    calls = example_calls(ModelCard.load(folder / "README.md"))
    assert literal_keywords(calls["from_pretrained"])["custom_pipeline"] == FOLDER_PLACEHOLDER

    write_pipeline_repo(folder, repo_id="org/dalda-pipeline")  # rewriting its own folder is fine
    (folder / "notes.txt").write_text("not for the Hub")
    with pytest.raises(ValueError, match="notes.txt"):
        write_pipeline_repo(folder)


def test_custom_pipeline_loads_the_written_folder(tiny_models, dalda_pipe, tmp_path):
    folder = write_pipeline_repo(tmp_path / "dalda-pipeline")
    pipe = DiffusionPipeline.from_pretrained(
        tiny_models.stable_diffusion, custom_pipeline=str(folder), trust_remote_code=True
    )
    assert type(pipe).__name__ == "DALDAPipeline"
    images = generate_two_items(load_ip_adapter(pipe, tiny_models))
    assert images.shape[0] == 2
    np.testing.assert_allclose(images, generate_two_items(dalda_pipe), atol=1e-6)


def test_push_to_hub_uploads_the_pipeline_repo_and_never_the_token(tmp_path):
    folder = tmp_path / "dalda-pipeline"
    with HubServer() as hub:
        result = run_dalda(
            "pipeline-repo", "--output_dir", folder, "--push_to_hub", "org/dalda-pipeline", "--private", env=hub.env
        )
    assert result.returncode == 0, result.stderr[-3000:]
    assert hub.created == [{"name": "dalda-pipeline", "organization": "org", "visibility": "private", "type": "model"}]
    assert hub.commit_repos == ["models/org/dalda-pipeline"]
    assert hub.authorizations == {f"Bearer {SECRET_TOKEN}"}
    committed = hub.repo_files["models/org/dalda-pipeline"]
    assert sorted(committed) == REPO_FILES
    assert_package_modules(committed)
    assert committed["README.md"] == (folder / "README.md").read_bytes()
    assert 'custom_pipeline="org/dalda-pipeline"' in committed["README.md"].decode()
    assert SECRET_TOKEN not in result.stdout + result.stderr


LOAD_FROM_THE_HUB = """
import json, sys
from diffusers import DiffusionPipeline
from pipeline_dalda.testing import TinyModelPaths
from tests.helpers import load_ip_adapter, random_images

kit, repo_id = TinyModelPaths(**json.loads(sys.argv[1])), sys.argv[2]
pipe = DiffusionPipeline.from_pretrained(kit.stable_diffusion, custom_pipeline=repo_id, trust_remote_code=True)
load_ip_adapter(pipe, kit)
images = pipe(["a dog"], ip_adapter_image=random_images(1), ip_adapter_scale=0.5, num_inference_steps=1,
              output_type="np").images
module = sys.modules[type(pipe).__module__]
print(json.dumps({"class": type(pipe).__name__, "file": module.__file__, "images": list(images.shape)}))
"""
"""Loads the kit's Stable Diffusion with `custom_pipeline=<repo id>` (what a user copies from the card) and generates;
prints the class it got, the file that class came from and the shape of the images."""


def test_the_pushed_repo_loads_from_the_hub_as_the_card_says(tiny_models, tmp_path):
    """After `dalda pipeline-repo --push_to_hub`, the card's `custom_pipeline` id loads the pushed `pipeline.py` from
    the (loopback) Hub, in a fresh process with empty caches, and the class it gives generates. The file is the
    package's, byte for byte, so `test_custom_pipeline_loads_the_written_folder` shows it generates as the package."""
    with HubServer() as hub:
        pushed = run_dalda(
            "pipeline-repo", "--output_dir", tmp_path / "dalda-pipeline", "--push_to_hub", "org/dalda-pipeline",
            env=hub.env,
        )
        assert pushed.returncode == 0, pushed.stderr[-3000:]
        card = ModelCard(hub.repo_files["models/org/dalda-pipeline"]["README.md"].decode())
        repo_id = literal_keywords(example_calls(card)["from_pretrained"])["custom_pipeline"]
        kit = json.dumps(vars(tiny_models), default=str)
        loaded = hub.run_client(LOAD_FROM_THE_HUB, kit, repo_id, home=tmp_path / "home")
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    for name in ["pipeline.py", *SHARED_MODULES]:
        assert f"models/org/dalda-pipeline/{name}" in hub.downloads, name
    got = json.loads(loaded.stdout.splitlines()[-1])
    assert got["class"] == "DALDAPipeline" and got["images"][0] == 1
    assert Path(got["file"]).is_relative_to(tmp_path / "home" / "modules")  # the downloaded copy
    assert Path(got["file"]).read_bytes() == PACKAGE_PIPELINE_FILE.read_bytes()


def test_the_top_level_model_card_is_what_pipeline_repo_renders_and_an_installed_dalda_finds_it(tmp_path):
    """One source: the repository's `model_card.md` is the template; the rendered card is valid model-card
    metadata; and `dalda` run from elsewhere (an installed package uses its copy under `<prefix>/share/dalda`)
    renders the same card."""
    import subprocess
    import sys

    checkout = Path(__file__).resolve().parents[1]
    template = (checkout / "model_card.md").read_text(encoding="utf-8")
    folder = write_pipeline_repo(tmp_path / "here", repo_id="org/dalda-pipeline")
    card = ModelCard.load(folder / "README.md")
    assert card.data.to_dict()["pipeline_tag"] == "text-to-image" and card.data.base_model
    body_start = template.split("---", 2)[2].strip().splitlines()[0]  # "# DALDA pipeline"
    assert card.text.strip().startswith(body_start)
    script = (
        "import pipeline_dalda, sys; from pipeline_dalda.publish import write_pipeline_repo; "
        f"write_pipeline_repo({str(tmp_path / 'elsewhere')!r}, repo_id='org/dalda-pipeline'); "
        "print(pipeline_dalda.__file__)"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "elsewhere" / "README.md").read_text() == (folder / "README.md").read_text()
    installed = not Path(result.stdout.strip()).resolve().is_relative_to(checkout)
    if installed:  # CI installs with `pip install .`: the card must have come from the installed copy
        assert Path(sys.prefix, "share", "dalda", "model_card.md").read_text(encoding="utf-8") == template
