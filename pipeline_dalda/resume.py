"""What lets a run be killed and run again: the settings it was started with, recorded beside its work, so that a
rerun with the same settings resumes it and a rerun with other settings is refused instead of mixing two runs."""

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .atomic import write_json_atomically


ABSENT = object()
"""A setting one of two records does not have."""
SHOWN_CHANGES = 5
"""Changed settings named in a refusal; the rest are counted."""
SHOWN_VALUE_CHARS = 80
"""A longer value is cut, in a refusal, to this many characters."""


def record_settings(record: str | os.PathLike, settings: dict[str, Any]) -> None:
    """Records `settings` in the file `record` on a run's first start; leaves an existing record as it is."""
    if not Path(record).exists():
        write_json_atomically(record, settings)


def changed_settings(recorded: Any, settings: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """Every leaf setting that differs between two records: (its dotted path, e.g. `generation.num_prompts`, the
    recorded value, the new value), in sorted order; [`ABSENT`] for a setting one record lacks. Mappings are walked
    into; anything else (a number, a string, a list) is one leaf."""
    if isinstance(recorded, Mapping) and isinstance(settings, Mapping):
        for key in sorted(recorded.keys() | settings.keys(), key=str):
            yield from changed_settings(
                recorded.get(key, ABSENT), settings.get(key, ABSENT), f"{path}.{key}" if path else str(key)
            )
    elif recorded != settings:
        yield path, recorded, settings


def _shown(value: Any) -> str:
    if value is ABSENT:
        return "(absent)"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= SHOWN_VALUE_CHARS else f"{text[: SHOWN_VALUE_CHARS - 1]}…"


def describe_changes(recorded: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    """The settings that changed, in one line: `generation.num_prompts: 10 → 5, models.dtype: "float32" →
    "float16"` (the first [`SHOWN_CHANGES`], then how many more)."""
    changes = list(changed_settings(recorded, settings))
    shown = [f"{path}: {_shown(old)} → {_shown(new)}" for path, old, new in changes[:SHOWN_CHANGES]]
    more = len(changes) - SHOWN_CHANGES
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def ensure_same_settings(record: str | os.PathLike, settings: dict[str, Any], work: str | os.PathLike) -> None:
    """Records `settings` in the file `record` on a run's first start; on every later start, checks that they are
    the settings recorded there.

    Args:
        record: the JSON file that holds the run's settings.
        settings: what decides the run's output (JSON-serialisable); a resumed run must match it.
        work: the folder or file the run writes, named in the error.

    Raises:
        ValueError: naming the sections that changed, then each changed setting by its dotted path with the
            recorded and the new value (`generation.num_prompts: 10 → 5`).
    """
    record_settings(record, settings)
    recorded = json.loads(Path(record).read_text(encoding="utf-8"))
    if recorded == settings:
        return
    sections = sorted(key for key in recorded.keys() | settings.keys() if recorded.get(key) != settings.get(key))
    raise ValueError(
        f"{str(work)!r} holds a run made with other settings ({', '.join(sections)}): "
        f"{describe_changes(recorded, settings)}; run with the same settings to resume it, or write elsewhere (or "
        f"delete {str(record)!r} and what the run wrote) to start over."
    )
