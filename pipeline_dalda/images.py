"""Reading a real image, the one way every command does it: upright (EXIF orientation applied), 8-bit RGB whatever
its mode, and a clear `BadImage` naming what is wrong when it cannot be used."""

import io
import os
from pathlib import Path

import PIL.Image
import PIL.ImageOps

from .dalda_scoring import to_rgb


class BadImage(ValueError):
    """A real image that cannot be used; the message says why, naming a file by its name only (messages end up in
    dataset cards, which must hold no path of the machine that made them)."""


def load_image(source: str | os.PathLike | bytes | dict) -> PIL.Image.Image:
    """Decodes a real image to upright 8-bit RGB, or raises [`BadImage`].

    Args:
        source: a file path, the encoded bytes, or an undecoded `datasets` image (`{"bytes": ..., "path": ...}`).
    """
    path = None
    if isinstance(source, dict):
        if source.get("bytes") is None:
            path = source.get("path")
        else:
            source = source["bytes"]
    elif isinstance(source, (str, os.PathLike)):
        path = source
    try:
        with PIL.Image.open(io.BytesIO(source) if path is None else path) as image:
            image.load()
            return to_rgb(PIL.ImageOps.exif_transpose(image))
    except (OSError, SyntaxError, ValueError, TypeError, PIL.Image.DecompressionBombError) as error:
        reason = f"{type(error).__name__}: {error}"
        if path is not None:
            reason = reason.replace(os.fspath(path), Path(path).name)
        raise BadImage(f"cannot decode the image: {reason}") from error
