"""The metrics' Hub Spaces: `dalda metrics-repo` writes an `evaluate` module folder as a Space, pushes it to the
loopback Hub double, and a fresh process loads it with `evaluate.load("org/<name>")` and computes what the local
module computes."""

import json
import runpy
import sys
from pathlib import Path

import evaluate
import evaluate.utils
import pytest
from huggingface_hub import SpaceCard

from pipeline_dalda import data_files
from pipeline_dalda.arguments import MetricsRepoArguments
from pipeline_dalda.metrics_repo import metric_names, publish_metric, write_metrics_repo

from .helpers import random_images, run_dalda
from .hub_server import SECRET_TOKEN, HubServer


ROOT = Path(__file__).resolve().parents[1]
METRICS = ROOT / "scripts" / "metrics"
SPACE_KEYS = {
    "title", "emoji", "colorFrom", "colorTo", "sdk", "sdk_version", "app_file", "pinned", "tags", "description"
}
"""The front matter of `evaluate`'s own Spaces (e.g. `evaluate-metric/accuracy`)."""
CLASSES = {"clip_i": "ClipI", "lpips_diversity": "LpipsDiversity"}


def module_started_by(app: Path) -> evaluate.EvaluationModule:
    """Runs the Space's `app.py` as the Space does, with the Gradio widget replaced by one that keeps the module it
    was given (Gradio is not installed here, and a widget would block)."""
    started = []
    original = evaluate.utils.launch_gradio_widget
    evaluate.utils.launch_gradio_widget = started.append
    try:
        runpy.run_path(str(app), run_name="__main__")
    finally:
        evaluate.utils.launch_gradio_widget = original
    (module,) = started
    return module


@pytest.mark.parametrize("metric", sorted(CLASSES))
def test_the_space_is_the_module_folder_with_the_script_named_as_the_repo(metric, tmp_path):
    assert metric_names() == sorted(CLASSES)
    folder = write_metrics_repo(metric, tmp_path / "space", repo_id="org/dalda_metric")
    files = sorted(path.name for path in folder.iterdir())
    assert files == ["README.md", "app.py", "dalda_metric.py", "requirements.txt"]
    assert (folder / "dalda_metric.py").read_bytes() == (METRICS / metric / f"{metric}.py").read_bytes()
    for name in ("README.md", "app.py", "requirements.txt"):
        assert (folder / name).read_bytes() == (METRICS / metric / name).read_bytes(), name

    settings = SpaceCard.load(folder / "README.md").data.to_dict()
    assert SPACE_KEYS <= set(settings), SPACE_KEYS - set(settings)
    assert settings["sdk"] == "gradio" and (folder / settings["app_file"]).is_file()
    assert {"evaluate", "metric"} <= set(settings["tags"])  # what `evaluate.list_evaluation_modules` filters by
    assert type(module_started_by(folder / "app.py")).__name__ == CLASSES[metric]  # the renamed script

    without_repo = write_metrics_repo(metric, tmp_path / "local")
    assert (without_repo / f"{metric}.py").is_file()


def test_the_modules_are_found_in_an_installed_dalda(tmp_path, monkeypatch):
    installed = tmp_path / "prefix" / "share" / "dalda" / "metrics"
    (installed / "clip_i").mkdir(parents=True)
    (installed / "clip_i" / "clip_i.py").write_text("")
    (installed / "notes").mkdir()  # a folder without its script is no module
    monkeypatch.setattr(data_files, "REPOSITORY_ROOT", tmp_path / "site-packages")
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "prefix"))
    assert metric_names() == ["clip_i"]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"metric": "clip"}, "`metric` 'clip' is not an evaluate module of dalda; give one of ['clip_i', "),
        ({"push_to_hub": "org/clip-i"}, "`push_to_hub` must be ORG/NAME with NAME a Python module name"),
        ({"push_to_hub": "clip_i"}, "`push_to_hub` must be ORG/NAME"),
        ({"push_to_hub": "org/clip_i/x"}, "`push_to_hub` must be ORG/NAME"),
        ({"push_to_hub": "-org/clip_i"}, "`push_to_hub` '-org/clip_i' is not a Hub repository id"),
        ({"private": True}, "`private` applies to the Hub repository `push_to_hub` creates"),
    ],
)
def test_bad_options_are_refused_before_anything_is_written(options, message, tmp_path):
    args = MetricsRepoArguments(**{"metric": "clip_i", "output_dir": str(tmp_path / "space"), **options})
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        publish_metric(args)
    assert not (tmp_path / "space").exists()


def test_a_folder_holding_other_files_is_refused(tmp_path):
    folder = write_metrics_repo("clip_i", tmp_path / "space", repo_id="org/clip_i")
    write_metrics_repo("clip_i", folder, repo_id="org/clip_i")  # rewriting its own Space is fine
    before = sorted(folder.iterdir())
    # Another name would leave two scripts, and the Space's app.py loads the one beside it.
    with pytest.raises(ValueError, match=r"holds \['clip_i.py'\]; give a new folder, or one holding only README.md"):
        write_metrics_repo("clip_i", folder, repo_id="org/dalda_clip_i")
    (folder / "notes.txt").write_text("not for the Hub")
    with pytest.raises(ValueError, match=r"`output_dir` .* holds \['notes.txt'\]"):
        write_metrics_repo("clip_i", folder, repo_id="org/clip_i")
    assert sorted(folder.iterdir()) == sorted([*before, folder / "notes.txt"])


CLIP_I_FROM_THE_HUB = """
import json, os, sys
os.environ["HF_UPDATE_DOWNLOAD_COUNTS"] = "0"  # evaluate's download counter pings S3, off this machine
import evaluate
from tests.helpers import random_images

repo_id, model, seeds = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
module = evaluate.load(repo_id, keep_in_memory=True)
results = module.compute(predictions=random_images(4, seed=seeds[0]), references=random_images(4, seed=seeds[1]),
                         groups=[0, 0, 1, 1], model_name_or_path=model)
print(json.dumps({"results": results, "file": sys.modules[type(module).__module__].__file__}))
"""
"""Loads `evaluate.load(<repo id>)` (what a user types) and computes CLIP-I on seeded noise images with the model
given; prints the results and the file the module class came from."""


def test_the_pushed_space_loads_with_evaluate_and_computes_as_the_local_module(tiny_models, tmp_path):
    """`dalda metrics-repo clip_i --push_to_hub org/dalda_clip_i` pushes a Space (named unlike the module, so that the
    script's name is tested); in a fresh process with empty caches, `evaluate.load("org/dalda_clip_i")` downloads its
    script from the (loopback) Hub and gives the values the local module gives on the same images and model."""
    repo_id, folder = "org/dalda_clip_i", tmp_path / "clip_i-space"
    model, seeds = str(tiny_models.clip_scorer), [1, 2]
    with HubServer() as hub:
        pushed = run_dalda(
            "metrics-repo", "clip_i", "--output_dir", folder, "--push_to_hub", repo_id, "--private", env=hub.env
        )
        assert pushed.returncode == 0, pushed.stderr[-3000:]
        loaded = hub.run_client(CLIP_I_FROM_THE_HUB, repo_id, model, json.dumps(seeds), home=tmp_path / "home")
    assert hub.created == [
        {"name": "dalda_clip_i", "organization": "org", "visibility": "private", "type": "space", "sdk": "gradio"}
    ]
    assert hub.commit_repos == [f"spaces/{repo_id}"]
    assert hub.repo_files[f"spaces/{repo_id}"] == {path.name: path.read_bytes() for path in folder.iterdir()}
    assert hub.authorizations == {f"Bearer {SECRET_TOKEN}"}
    assert SECRET_TOKEN not in pushed.stdout + pushed.stderr
    assert f"evaluate.load({repo_id!r})" in pushed.stderr

    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert f"spaces/{repo_id}/dalda_clip_i.py" in hub.downloads
    got = json.loads(loaded.stdout.splitlines()[-1])
    assert Path(got["file"]).is_relative_to(tmp_path / "home" / "modules")  # the downloaded copy
    local = evaluate.load(str(METRICS / "clip_i"), keep_in_memory=True)

    def local_clip_i(first_seed, second_seed):
        predictions, references = random_images(4, seed=first_seed), random_images(4, seed=second_seed)
        return local.compute(
            predictions=predictions, references=references, groups=[0, 0, 1, 1], model_name_or_path=model
        )

    expected = local_clip_i(*seeds)
    assert got["results"] == pytest.approx(expected, abs=1e-6)
    # Or the comparison proves nothing: other images give other values.
    other = local_clip_i(3, seeds[1])
    assert all(abs(other[key] - expected[key]) > 1e-4 for key in ("clip_i", "clip_i_within_group"))
