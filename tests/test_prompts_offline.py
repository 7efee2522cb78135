"""Class-name matching, the template backend, the file backend and class lists from datasets, all offline."""

import json
import os
import subprocess

import datasets
import numpy as np
import PIL.Image
import pytest

from dataset_builders.arguments import ClassListArguments
from dataset_builders.source import load_class_names
from pipeline_dalda.prompts import (
    ClassNameMatcher,
    PromptArguments,
    PromptBank,
    TemplatePromptWriter,
    generate_prompt_bank,
)

from .helpers import dalda_command, run_dalda


HUNDRED_CLASSES = [f"{colour} {thing}" for colour in ("red", "blue", "green", "amber", "violet")
                   for thing in ("kite", "lamp", "boot", "cup", "vase", "bell", "drum", "fan", "key", "pen",
                                 "hat", "jar", "mug", "oar", "rug", "saw", "top", "urn", "wok", "yoyo")]


@pytest.mark.parametrize(
    "sentence, own, problems",
    [
        ("Two pugs asleep on a sofa.", "pug", []),
        ("A pugnacious terrier.", "pug", ["it does not name 'pug'"]),
        ("A Golden-Retriever in the snow.", "golden_retriever", []),
        ("A golden retriever in the snow.", "retriever", ["it does not name 'retriever'", "other classes"]),
        ("Butterflies over a meadow.", "butterfly", []),
        ("A pug chasing a beagle.", "pug", ["other classes of the dataset: 'beagle'"]),
        ("   ", "pug", ["the sentence is empty"]),
        ("Un crème brûlée sur la table.", "crème brûlée", []),
    ],
)
def test_sentence_validation(sentence, own, problems):
    matcher = ClassNameMatcher(["pug", "beagle", "retriever", "golden_retriever", "butterfly", "crème brûlée"])
    found = matcher.problems(sentence, own)
    assert len(found) == len(problems)
    for expected, actual in zip(problems, found):
        assert expected in actual


def test_template_backend_for_a_hundred_classes(tmp_path):
    assert len(HUNDRED_CLASSES) == 100
    matcher = ClassNameMatcher(HUNDRED_CLASSES)
    first = TemplatePromptWriter(HUNDRED_CLASSES, seed=3)
    again = TemplatePromptWriter(HUNDRED_CLASSES, seed=3)
    other = TemplatePromptWriter(HUNDRED_CLASSES, seed=4)
    differing = 0
    for name in HUNDRED_CLASSES:
        sentences = first.sentences(name, 10)
        assert len(set(sentences)) == 10
        assert all(not matcher.problems(sentence, name) for sentence in sentences)
        assert sentences == again.sentences(name, 10)
        differing += sentences != other.sentences(name, 10)
    assert differing == 100

    bank = generate_prompt_bank(PromptArguments(output=str(tmp_path / "bank.json"), seed=3), HUNDRED_CLASSES)
    assert bank.prompts == {name: first.sentences(name, 10) for name in HUNDRED_CLASSES}
    assert PromptBank.load(tmp_path / "bank.json").prompts == bank.prompts


def test_template_sentences_vary_and_skip_other_classes():
    writer = TemplatePromptWriter(["apple", "beach", "garden"], seed=0)
    sentences = writer.sentences("apple", 10)
    assert all(sentence.startswith(("A ", "An ")) and " an apple " in sentence for sentence in sentences)
    assert all("beach" not in sentence and "garden" not in sentence for sentence in sentences)
    first_words = {sentence.split(" an apple ")[0] for sentence in sentences}
    settings = {sentence.split(" an apple ")[1].split(",")[0] for sentence in sentences}
    assert len(first_words) >= 5 and len(settings) >= 5


def test_file_backend_imports_the_released_format(tmp_path):
    source = tmp_path / "released.json"
    source.write_text(json.dumps({
        "pug": ["A pug on a sofa.", "A pug in the snow.", "A pug next to a beagle.", "A pug on a sofa."],
        "beagle": ["A beagle in a park.", "A beagle on a beach.", "A beagle asleep.", "A beagle running."],
        "poodle": ["A poodle."],
    }))
    bank = generate_prompt_bank(
        PromptArguments(output=str(tmp_path / "bank.json"), backend="file", input_bank=str(source), num_prompts=3),
        ["pug", "beagle"],
    )
    assert bank.prompts["beagle"] == ["A beagle in a park.", "A beagle on a beach.", "A beagle asleep."]
    assert bank.prompts["pug"][:2] == ["A pug on a sofa.", "A pug in the snow."]
    assert "pug" in bank.prompts["pug"][2] and "beagle" not in bank.prompts["pug"][2]
    saved = PromptBank.load(tmp_path / "bank.json")
    assert saved.metadata["template_fallbacks"] == {"total": 1, "by_class": {"pug": 1}}
    assert saved.metadata["ignored_classes"] == ["poodle"]


def test_file_backend_names_missing_classes(tmp_path):
    source = tmp_path / "released.json"
    source.write_text(json.dumps({"pug": ["A pug."]}))
    args = PromptArguments(output=str(tmp_path / "bank.json"), backend="file", input_bank=str(source))
    with pytest.raises(ValueError, match=r"no sentences for the classes \['beagle'\]"):
        generate_prompt_bank(args, ["pug", "beagle"])
    source.write_text("{not json")
    with pytest.raises(ValueError, match="Cannot read the prompt bank"):
        generate_prompt_bank(args, ["pug"])


@pytest.mark.parametrize(
    "class_names, message",
    [([], "empty"), (["pug", "pug"], "more than once"), (["pug", " "], "Class 1")],
)
def test_bad_class_lists_are_named(tmp_path, class_names, message):
    with pytest.raises(ValueError, match=message):
        generate_prompt_bank(PromptArguments(output=str(tmp_path / "bank.json")), class_names)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"backend": "gpt"}, "backend"), ({"num_prompts": 0}, "num_prompts"), ({"chunk_size": 0}, "chunk_size"),
     ({"backend": "file"}, "input_bank")],
)
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PromptArguments(output="bank.json", **kwargs)


@pytest.fixture(scope="module")
def class_label_dataset():
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["pug", "beagle"])})
    image = PIL.Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8))
    return datasets.Dataset.from_dict({"image": [image, image], "label": [0, 1]}, features=features)


def test_class_names_from_a_saved_dataset(tmp_path, class_label_dataset):
    class_label_dataset.save_to_disk(tmp_path / "saved")
    assert load_class_names(ClassListArguments(dataset=str(tmp_path / "saved"))) == ["pug", "beagle"]
    datasets.DatasetDict({"train": class_label_dataset}).save_to_disk(tmp_path / "saved-dict")
    assert load_class_names(ClassListArguments(dataset=str(tmp_path / "saved-dict"))) == ["pug", "beagle"]
    with pytest.raises(ValueError, match="no split 'test'"):
        load_class_names(ClassListArguments(dataset=str(tmp_path / "saved-dict"), split="test"))


def test_class_names_from_parquet_and_imagefolder(tmp_path, class_label_dataset):
    class_label_dataset.to_parquet(tmp_path / "parquet" / "data" / "train-00000.parquet")
    assert load_class_names(ClassListArguments(dataset=str(tmp_path / "parquet"))) == ["pug", "beagle"]

    for name in ("beagle", "pug"):
        (tmp_path / "folder" / name).mkdir(parents=True)
        PIL.Image.new("RGB", (8, 8)).save(tmp_path / "folder" / name / "0.png")
    assert load_class_names(ClassListArguments(dataset=str(tmp_path / "folder"))) == ["beagle", "pug"]


def test_class_names_from_files_and_bad_columns(tmp_path, class_label_dataset):
    (tmp_path / "classes.txt").write_text("pug\n\ngolden retriever\n")
    assert load_class_names(ClassListArguments(class_names_file=str(tmp_path / "classes.txt"))) == [
        "pug", "golden retriever"]
    (tmp_path / "classes.json").write_text(json.dumps({"names": ["a", "b"]}))
    assert load_class_names(ClassListArguments(class_names_file=str(tmp_path / "classes.json"))) == ["a", "b"]

    class_label_dataset.save_to_disk(tmp_path / "saved")
    with pytest.raises(ValueError, match="no column 'fine_label'.*columns are"):
        load_class_names(ClassListArguments(dataset=str(tmp_path / "saved"), label_column="fine_label"))
    with pytest.raises(ValueError, match="column 'image'.*not a ClassLabel"):
        load_class_names(ClassListArguments(dataset=str(tmp_path / "saved"), label_column="image"))
    with pytest.raises(ValueError, match="exactly one of"):
        ClassListArguments()


def test_prompts_command_with_templates(tmp_path, class_label_dataset):
    class_label_dataset.save_to_disk(tmp_path / "saved")
    result = run_dalda(
        "prompts", "--backend", "template", "--dataset", tmp_path / "saved", "--num_prompts", "4",
        "--output", tmp_path / "bank.json",
    )
    assert result.returncode == 0, result.stderr
    bank = PromptBank.load(tmp_path / "bank.json")
    assert list(bank.prompts) == ["pug", "beagle"] and all(len(s) == 4 for s in bank.prompts.values())
    assert bank.metadata["settings"]["backend"] == "template"

    missing = run_dalda("prompts", "--output", tmp_path / "other.json")
    assert missing.returncode != 0 and "exactly one of `dataset` and `class_names_file`" in missing.stderr


def test_prompts_command_without_api_key_says_which_variable(tmp_path):
    (tmp_path / "classes.txt").write_text("pug\n")
    command = [
        *dalda_command(), "prompts", "--backend", "openai", "--model", "gpt-4-0613", "--dataset_description", "dogs",
        "--class_names_file", str(tmp_path / "classes.txt"), "--output", str(tmp_path / "bank.json"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OPENAI_API_KEY": ""})
    assert result.returncode != 0 and "Set the API key in the environment variable OPENAI_API_KEY" in result.stderr
