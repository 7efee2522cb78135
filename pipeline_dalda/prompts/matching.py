"""Which classes a sentence names: whole words, tolerant of case, plurals, underscores and hyphens."""

import re
from typing import Sequence


def normalize(text: str) -> str:
    """Lower case, with underscores and hyphens read as spaces and runs of spaces folded."""
    return " ".join(re.sub(r"[_\-]+", " ", text).lower().split())


def display_name(class_name: str) -> str:
    """A class name as it reads in a sentence: `golden_retriever` → `golden retriever`."""
    return " ".join(class_name.replace("_", " ").split())


def _word_forms(name: str) -> set[str]:
    """The name with its last word in singular and plural forms."""
    head, _, last = name.rpartition(" ")
    forms = {last, last + "s", last + "es"}
    if last.endswith("y"):
        forms.add(last[:-1] + "ies")
    if last.endswith("ies"):
        forms.add(last[:-3] + "y")
    if last.endswith("es"):
        forms.add(last[:-2])
    if last.endswith("s"):
        forms.add(last[:-1])
    return {f"{head} {form}" if head else form for form in forms if form}


class ClassNameMatcher:
    """Finds the classes of a dataset that a sentence names.

    Matching is on whole words, so "pug" is not found in "pugnacious". Where names overlap, the longest match wins:
    with classes "retriever" and "golden retriever", "a golden retriever" names only "golden retriever".

    Args:
        class_names: every class of the dataset.
    """

    def __init__(self, class_names: Sequence[str]):
        self.class_names = list(class_names)
        self._classes_by_form: dict[str, set[str]] = {}
        for class_name in self.class_names:
            for form in _word_forms(normalize(class_name)):
                self._classes_by_form.setdefault(form, set()).add(class_name)
        forms = sorted(self._classes_by_form, key=len, reverse=True)
        alternatives = "|".join(re.escape(form) for form in forms)
        self._pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)") if forms else None

    def named_classes(self, sentence: str) -> set[str]:
        """The classes that `sentence` names."""
        if self._pattern is None:
            return set()
        named = set()
        for match in self._pattern.finditer(normalize(sentence)):
            named |= self._classes_by_form[match.group(0)]
        return named

    def problems(self, sentence: str, class_name: str) -> list[str]:
        """Why `sentence` cannot stand for `class_name`: empty, not naming it, or naming another class."""
        if not isinstance(sentence, str) or not sentence.strip():
            return ["the sentence is empty"]
        named = self.named_classes(sentence)
        found = []
        if class_name not in named:
            found.append(f"it does not name {class_name!r}")
        others = sorted(named - {class_name})
        if others:
            found.append(f"it names other classes of the dataset: {', '.join(map(repr, others))}")
        return found
