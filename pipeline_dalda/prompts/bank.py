"""Prompt banks on disk: `{"prompts": {class: [sentences]}, "metadata": {...}}`, written atomically."""

import hashlib
import json
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_json_atomically
from ..resume import ensure_same_settings


@dataclass
class PromptBank:
    """M sentences per class, and how they were made."""

    prompts: dict[str, list[str]]
    metadata: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomically(path, {"prompts": self.prompts, "metadata": self.metadata})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PromptBank":
        """Reads a bank in this format, or a plain `{"class name": ["sentence", ...]}` (DALDA's released format)."""
        try:
            payload = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"Cannot read the prompt bank {str(path)!r}: {error}") from error
        if isinstance(payload, dict) and set(payload) == {"prompts", "metadata"}:
            prompts, metadata = payload["prompts"], payload["metadata"]
        else:
            prompts, metadata = payload, {}
        if not isinstance(prompts, dict) or not all(
            isinstance(sentences, list) and all(isinstance(s, str) for s in sentences) for sentences in prompts.values()
        ):
            raise ValueError(f"The prompt bank {str(path)!r} is not a JSON object of class name → list of sentences.")
        return cls(prompts=prompts, metadata=metadata)


class UsageLedger:
    """What every run into one checkpoint folder has spent on the LLM server: requests made, prompt and completion
    tokens, in one JSON file rewritten atomically at each change.

    A request is counted before it is sent, so a run killed while requests are in flight has already counted them,
    and a resumed run adds to the saved totals instead of starting over: every request is counted once.

    Args:
        path: the JSON file of the totals.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()  # the chunks' threads add concurrently

    def totals(self) -> dict[str, int]:
        """The saved totals: `requests`, `prompt_tokens`, `completion_tokens`."""
        if not self.path.exists():
            return {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
        return json.loads(self.path.read_text(encoding="utf-8"))

    def add(self, requests: int = 0, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        """Adds to the totals and saves them before returning."""
        with self._lock:
            totals = self.totals()
            totals["requests"] += requests
            totals["prompt_tokens"] += prompt_tokens
            totals["completion_tokens"] += completion_tokens
            write_json_atomically(self.path, totals)


class ChunkCheckpoints:
    """The finished chunks of an unfinished run: one atomically written file per chunk, named by its classes, and
    the `usage` ledger of the requests that every run into the folder made, finished chunks or not.

    The folder also records the run's settings, so a resumed run never mixes sentences made with other settings.
    """

    def __init__(self, directory: str | os.PathLike, settings: dict[str, Any]):
        self.directory = Path(directory)
        self.settings = settings
        self.usage = UsageLedger(self.directory / "usage.json")

    def open(self) -> list[dict[str, Any]]:
        """Creates or reopens the folder; returns the finished chunks' records."""
        ensure_same_settings(self.directory / "settings.json", self.settings, work=self.directory)
        return [json.loads(path.read_text(encoding="utf-8")) for path in sorted(self.directory.glob("chunk-*.json"))]

    def save_chunk(self, record: dict[str, Any]) -> None:
        """Saves a finished chunk; `record["classes"]` maps its class names to their results."""
        key = hashlib.sha256(json.dumps(sorted(record["classes"])).encode()).hexdigest()[:16]
        write_json_atomically(self.directory / f"chunk-{key}.json", record)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
