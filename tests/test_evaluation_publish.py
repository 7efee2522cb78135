"""The evaluation published with the data: `dalda evaluate --push_to_hub` and `dalda compare --push_to_hub` on the
loopback Hub (the `augmented` fixture pushed, evaluated with two backbones, pushed again), and the card's section
rewrite as a function."""

import json
import shutil

import datasets
import pytest

from dataset_builders.evaluation.publish import (
    COMPARISON_DIR,
    SECTION,
    check_repo_id,
    evaluation_folder,
    evaluation_section,
    with_evaluation_section,
)
from dataset_builders.evaluation.summary import format_figure

from .helpers import assert_same_dataset, run_dalda
from .hub_server import SECRET_TOKEN, HubServer, load_dataset_from


REPO = "org/pets-dalda"
PUSH_EVALUATE_AND_COMPARE = """
import json, shutil, sys
import datasets
from dataset_builders.evaluation.arguments import CompareArguments
from dataset_builders.evaluation.comparison import compare_runs
from dataset_builders.hub_layout import push_to_hub
from tests.helpers import evaluate

dataset, source, other, root, clip, resnet, repo = sys.argv[1:]
refusals = {}

def run(name, backbone, **options):
    return evaluate(dataset, f"{root}/{name}", backbone, source_dataset=source, push_to_hub=repo, epochs=2,
                    iterations_per_epoch=5, **options)

def refused(name, function):
    try:
        function()
    except ValueError as error:
        refusals[name] = str(error)

refused("no repository", lambda: run("refused-missing", clip))
push_to_hub(dataset, repo)
datasets.load_dataset(repo, split="train").save_to_disk(f"{root}/before")
refused("another dataset", lambda: evaluate(other, f"{root}/refused-other", clip, source_dataset=source,
                                            push_to_hub=repo))
run("clip", clip)
run("resnet", resnet)
compare_runs(CompareArguments(runs=[f"{root}/clip", f"{root}/resnet"], output_dir=f"{root}/compare",
                              push_to_hub=repo))
refused("compare to another repository", lambda: compare_runs(CompareArguments(
    runs=[f"{root}/clip"], output_dir=f"{root}/refused-compare", push_to_hub="org/missing")))
run("clip", clip)  # the same run again
print(json.dumps(refusals))
"""
"""In one process, with the loopback Hub's environment: a push to a repository that does not exist yet (refused),
the augmented dataset pushed and loaded back, a copy of it with another run record (refused), the dataset
evaluated and pushed with two backbones, the two runs compared and pushed, a comparison pushed to a repository that
does not exist (refused), the first evaluation run and pushed again."""


def front_matter(card: str) -> str:
    return card[: card.index("\n---\n", 4) + 5]


def test_evaluations_are_published_with_the_data_one_row_each(
    augmented, tiny_models, pets, tmp_path, tmp_path_factory
):
    output, _ = augmented
    other = tmp_path / "other"
    shutil.copytree(output, other, ignore=shutil.ignore_patterns(".dalda"))
    record = json.loads((other / "dalda.json").read_text())
    record["generation"]["seed"] += 1
    (other / "dalda.json").write_text(json.dumps(record))
    with HubServer() as hub:
        result = hub.run_client(
            PUSH_EVALUATE_AND_COMPARE,
            output,
            pets / "dataset",
            other,
            tmp_path,
            tiny_models.clip_scorer,
            tiny_models.resnet,
            REPO,
            home=tmp_path / "home",
        )
        assert result.returncode == 0, result.stderr[-3000:]
        after = load_dataset_from(hub, tmp_path / "home-after", REPO)
    refusals = json.loads(result.stdout.strip().splitlines()[-1])
    assert f"`push_to_hub` {REPO!r} is no Hub dataset repository" in refusals["no repository"]
    assert "does not hold the evaluated dataset" in refusals["another dataset"]
    assert "`push_to_hub` 'org/missing' is no Hub dataset repository" in refusals["compare to another repository"]
    assert not any((tmp_path / f"refused-{name}").exists() for name in ("missing", "other", "compare"))

    files = hub.repo_files[f"datasets/{REPO}"]
    clip, resnet = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("clip", "resnet"))
    folders = {evaluation_folder(clip): clip, evaluation_folder(resnet): resnet}
    assert len(folders) == 2
    for folder, results in folders.items():
        assert {"results.json", "results.md", "accuracy_per_epoch.png", "clip_score_lambda.png"} == {
            path.removeprefix(f"{folder}/") for path in files if path.startswith(f"{folder}/")
        }
        published = json.loads(files[f"{folder}/results.json"])
        assert published["aggregate"] == results["aggregate"] and published["dataset"]["id"] == REPO
        assert files[f"{folder}/results.md"].decode().startswith(f"# Few-shot evaluation of `{REPO}`")
    assert {f"{COMPARISON_DIR}/comparison.md", f"{COMPARISON_DIR}/accuracy_vs_shots.png"} <= set(files)
    # No local path and no token in anything pushed, nor in what the commands printed.
    local = [str(tmp_path_factory.getbasetemp()), str(tmp_path), str(pets)]
    for path, content in files.items():
        for text in (*local, SECRET_TOKEN):
            assert text.encode() not in content, (path, text)
    assert SECRET_TOKEN not in result.stdout + result.stderr

    # The card: its YAML and every other section as `dalda augment` wrote them, one row per evaluation folder.
    card, written = files["README.md"].decode(), (output / "README.md").read_text()
    assert front_matter(card) == front_matter(written)
    start, end = card.index(f"\n{SECTION}\n") + 1, card.index("\n## License\n") + 1
    assert card[:start] + card[end:] == written
    rows = [line for line in card[start:end].splitlines() if line.startswith("| `")]
    assert len(rows) == 2
    for results in (clip, resnet):
        (row,) = [row for row in rows if f"`./{results['backbone']['id'].rsplit('/', 1)[-1]}`" in row]
        assert format_figure(results["aggregate"]["augmented"]["balanced_accuracy"]) in row
        assert format_figure(results["aggregate"]["real_only"]["balanced_accuracy"]) in row
        assert f"| {results['num_shots']} | one trial |" in row
    assert f"({COMPARISON_DIR}/comparison.md)" in card
    # Pushed again, the same run changed nothing: four commits (the dataset, two evaluations, the comparison).
    assert hub.commit_repos.count(f"datasets/{REPO}") == 4

    before = datasets.load_from_disk(str(tmp_path / "before"))
    assert after.features == before.features
    assert_same_dataset(after, before, tolerance=0)


def test_a_bad_repo_id_is_refused_before_anything_runs(augmented, tmp_path):
    output, _ = augmented
    result = run_dalda(
        "evaluate", "--dataset", output, "--output_dir", tmp_path / "out", "--push_to_hub", "org/has space"
    )
    assert result.returncode != 0 and not (tmp_path / "out").exists()
    (line,) = [line for line in result.stderr.splitlines() if "push_to_hub" in line]
    assert line.startswith("dalda evaluate: `push_to_hub` must be a Hub repo id ORG/NAME")


CARD = """---
license: other
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
---

# A dataset

```python
# a comment, not a heading
## Evaluation
```

## Contents

Rows.

## License

Its license.
"""


def results_of(backbone: str, mean: float) -> dict:
    """The parts of a results.json the card's row reads."""
    figure = {"mean": mean, "std": 0.01}
    difference = {"mean": 0.02, "std": 0.01, "ci95": [-0.01, 0.05], "n": 3, "df": 2, "p_value": 0.2}
    return {
        "backbone": {"id": backbone},
        "method": "DALDA (LLM + AGS), synthetic score ≥ 0.3",  # as `dalda evaluate --min_synthetic_score 0.3`
        "num_shots": 1,
        "repeats": "trials",
        "per_classifier": [{"arm": "augmented", "trial": seed, "classifier_seed": seed} for seed in (0, 1, 2)],
        "aggregate": {
            "augmented": {"balanced_accuracy": figure},
            "real_only": {"balanced_accuracy": {"mean": mean - 0.02, "std": 0.01}},
            "difference": {"balanced_accuracy": difference},
        },
        "settings": {"min_synthetic_score": 0.3, "min_synthetic_score_sweep": None, "select": "last_epoch"},
        "trials": [{"generation": {"method": "dalda"}}],
    }


def test_the_evaluation_section_is_rewritten_in_place_and_the_rest_of_the_card_kept():
    clip, resnet = results_of("openai/clip-vit-base-patch16", 0.8745), results_of("microsoft/resnet-50", 0.8069)
    assert (
        evaluation_folder(clip) == "evaluation/openai--clip-vit-base-patch16-dalda-llm-ags-synthetic-score-0.3-1shot"
    )
    one = with_evaluation_section(CARD, evaluation_section({evaluation_folder(clip): clip}))
    # Inserted before the license, the code block's lookalike heading left alone, every other byte kept.
    assert one.startswith(CARD[: CARD.index("## License")] + f"{SECTION}\n") and one.endswith(
        "## License\n\nIts license.\n"
    )
    assert one.count(f"\n{SECTION}\n") == 2  # the code block's line and the section
    assert "| 0.8745 ± 0.0100 |" in one and "+0.0200 [95% CI -0.0100, +0.0500] (n = 3, df = 2)" in one
    assert "| 3 trials |" in one and "synthetic score ≥ 0.3" in one
    both = {evaluation_folder(clip): clip, evaluation_folder(resnet): resnet}
    two = with_evaluation_section(one, evaluation_section(both))
    assert front_matter(two) == front_matter(CARD)
    assert len([line for line in two.splitlines() if line.startswith("| `")]) == 2
    # The same section again changes nothing: no second row, no second section.
    assert with_evaluation_section(two, evaluation_section(both)) == two
    section = two[two.rindex(f"\n{SECTION}\n") + 1 : two.index("## License")]
    assert two.replace(section, "") == CARD
    # A card that ends with the section: replaced to the end.
    last = with_evaluation_section(f"# T\n\n{SECTION}\n\nold rows\n", evaluation_section(both))
    assert "old rows" not in last and last.count(SECTION) == 1


@pytest.mark.parametrize("repo_id", ["org", "org/a/b", "org/x--y", "org/has space"])
def test_push_to_hub_must_be_org_slash_name(repo_id):
    with pytest.raises(ValueError, match="`push_to_hub` must be a Hub repo id ORG/NAME"):
        check_repo_id(repo_id)
