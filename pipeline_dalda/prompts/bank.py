"""Prompt banks on disk: `{"prompts": {class: [sentences]}, "metadata": {...}}`, written atomically."""

import hashlib
import json
import os
import shutil
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


class ChunkCheckpoints:
    """The finished chunks of an unfinished run: one atomically written file per chunk, named by its classes.

    The folder also records the run's settings, so a resumed run never mixes sentences made with other settings.
    """

    def __init__(self, directory: str | os.PathLike, settings: dict[str, Any]):
        self.directory = Path(directory)
        self.settings = settings

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
