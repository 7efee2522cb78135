"""Writing outputs safely: an output folder checked before any work starts, and atomic file writes — a file is
either absent, its old self, or complete, never half written, even if the process is killed midway."""

import json
import os
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def check_output_dir(path: str | os.PathLike, option: str = "output_dir") -> None:
    """Refuses, without creating anything, a folder a command could not write to: `path` is a file, lies under a
    file, or its nearest existing folder is not writable. For commands that must check more (a model) before the
    folder may exist; [`create_output_dir`] checks again as it creates it.

    Raises:
        ValueError: naming the folder (as the option `option`) and what to do.
    """
    path = Path(path)
    existing = next(folder for folder in (path, *path.parents) if folder.exists() or folder == folder.parent)
    if not existing.is_dir():
        where = "is a file" if existing == path else f"lies under the file {str(existing)!r}"
        raise ValueError(f"`{option}` {str(path)!r} {where}, not a folder; name a folder to write into.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"Cannot write to `{option}` {str(path)!r} ({str(existing)!r} is not writable); name a folder you can "
            "write to."
        )


def create_output_dir(path: str | os.PathLike, option: str = "output_dir") -> Path:
    """Creates the folder a command writes to, or fails at once — before any model is loaded — with an error naming
    the folder (as the option `option`) and what to do.

    Raises:
        ValueError: `path` is a file, lies under a file, or cannot be created or written to.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"`{option}` {str(path)!r} is a file, not a folder; name a folder to write into.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # can files be written there?
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        if error.filename and os.fspath(error.filename) != os.fspath(path):
            reason += f" at {str(error.filename)!r}"
        message = f"Cannot write to `{option}` {str(path)!r} ({reason}); name a folder you can write to."
        raise ValueError(message) from error
    return path


@contextmanager
def atomic_output(path: str | os.PathLike, temp_dir: str | os.PathLike | None = None) -> Iterator[Path]:
    """Yields a temporary path to write; on success it replaces `path` in one step.

    The temporary file lives in `temp_dir` (default: beside `path`), which must be on the same file system.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    directory = Path(temp_dir) if temp_dir is not None else path.parent
    directory.mkdir(parents=True, exist_ok=True)
    # Created as `open()` creates files (mode 0o666 less the umask), so the result is as readable as any written
    # file; `tempfile.mkstemp` would make it 0o600 and `os.replace` would keep that.
    temporary = directory / f".{path.name}.{uuid.uuid4().hex}.tmp"
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield Path(temporary)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def remove_stale_temporaries(directory: str | os.PathLike, target_name: str = "*") -> None:
    """Deletes the temporary files that a killed writer of `target_name` (default: any file) left in `directory`;
    they were never complete."""
    for temporary in Path(directory).glob(f".{target_name}.*.tmp"):
        temporary.unlink(missing_ok=True)


def write_json_atomically(path: str | os.PathLike, payload: Any) -> None:
    """Writes `payload` as UTF-8 JSON to `path` atomically."""
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(payload, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
