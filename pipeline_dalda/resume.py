"""What lets a run be killed and run again: the settings it was started with, recorded beside its work, so that a
rerun with the same settings resumes it and a rerun with other settings is refused instead of mixing two runs."""

import json
import os
from pathlib import Path
from typing import Any

from .atomic import write_json_atomically


def record_settings(record: str | os.PathLike, settings: dict[str, Any]) -> None:
    """Records `settings` in the file `record` on a run's first start; leaves an existing record as it is."""
    if not Path(record).exists():
        write_json_atomically(record, settings)


def ensure_same_settings(record: str | os.PathLike, settings: dict[str, Any], work: str | os.PathLike) -> None:
    """Records `settings` in the file `record` on a run's first start; on every later start, checks that they are
    the settings recorded there.

    Args:
        record: the JSON file that holds the run's settings.
        settings: what decides the run's output (JSON-serialisable); a resumed run must match it.
        work: the folder or file the run writes, named in the error.

    Raises:
        ValueError: naming the settings that changed and the two ways on.
    """
    record_settings(record, settings)
    recorded = json.loads(Path(record).read_text(encoding="utf-8"))
    if recorded == settings:
        return
    changed = sorted(key for key in recorded.keys() | settings.keys() if recorded.get(key) != settings.get(key))
    raise ValueError(
        f"{str(work)!r} holds a run made with other settings ({', '.join(changed)}); run with the same settings to "
        f"resume it, or write elsewhere (or delete {str(record)!r} and what the run wrote) to start over."
    )
