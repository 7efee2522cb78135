"""The offline prompt writer: natural, varied scene sentences composed from attribute pools, deterministic per seed."""

import random
from typing import Sequence

from .matching import ClassNameMatcher, display_name


VIEWPOINTS = (
    "A close-up photo of",
    "A side view of",
    "A wide-angle shot of",
    "A top-down photo of",
    "A low-angle photo of",
    "A candid snapshot of",
    "A front view of",
    "A telephoto shot of",
    "An eye-level photo of",
    "A three-quarter view of",
)
SETTINGS = (
    "on a wooden table",
    "in a sunny garden",
    "against a plain white wall",
    "on a busy city street",
    "in a grassy field",
    "next to a large window",
    "on a sandy beach",
    "in a forest clearing",
    "in a cozy living room",
    "on a snowy hillside",
    "beside a quiet lake",
    "in a small village square",
    "on a stone path",
    "in a bright studio",
)
FOREGROUNDS = (
    "with fallen leaves in the foreground",
    "with a blurred fence in the foreground",
    "with wildflowers in the foreground",
    "with a few pebbles in the foreground",
    "partly framed by tree branches",
    "with a soft out-of-focus foreground",
    "",
    "",
)
LIGHTING = (
    "in soft morning light",
    "at golden hour",
    "under an overcast sky",
    "in warm lamplight",
    "on a rainy afternoon",
    "at dusk",
    "in bright midday sun",
    "under cool blue evening light",
)
STYLES = (
    "with vivid colors",
    "in muted earthy tones",
    "in sharp detail",
    "with a shallow depth of field",
    "with rich contrast",
    "in natural colors",
)


def _sentence(viewpoint: str, name: str, setting: str, foreground: str, lighting: str, style: str) -> str:
    details = ", ".join(part for part in (foreground, lighting, style) if part)
    article = "an" if name[:1].lower() in "aeiou" else "a"
    return f"{viewpoint} {article} {name} {setting}, {details}."


class TemplatePromptWriter:
    """Writes M distinct sentences per class from attribute pools (viewpoint, setting, foreground, lighting, colour).

    Needs no network and no API key; the same seed gives the same sentences. Sentences that would name another
    class of the dataset (a class called "beach", say) are skipped.

    Args:
        class_names: every class of the dataset.
        seed: the sentences' seed.
    """

    def __init__(self, class_names: Sequence[str], seed: int = 0):
        self.matcher = ClassNameMatcher(class_names)
        self.seed = seed

    def sentences(self, class_name: str, count: int) -> list[str]:
        """`count` distinct sentences for `class_name`, each naming it and no other class."""
        rng = random.Random(f"{self.seed}:{class_name}")
        pools = [list(pool) for pool in (VIEWPOINTS, SETTINGS, FOREGROUNDS, LIGHTING, STYLES)]
        for pool in pools:
            rng.shuffle(pool)
        viewpoints, settings, foregrounds, lighting, styles = pools
        name = display_name(class_name)
        chosen: list[str] = []
        # Walk the pools diagonally, so consecutive sentences differ in every attribute.
        for step in range(len(viewpoints) * len(settings) * len(lighting)):
            sentence = _sentence(
                viewpoints[step % len(viewpoints)],
                name,
                settings[(step + step // len(settings)) % len(settings)],
                foregrounds[step % len(foregrounds)],
                lighting[(step + step // len(lighting)) % len(lighting)],
                styles[step % len(styles)],
            )
            if sentence not in chosen and not self.matcher.problems(sentence, class_name):
                chosen.append(sentence)
                if len(chosen) == count:
                    return chosen
        raise ValueError(f"Cannot write {count} distinct template sentences for class {class_name!r}.")
