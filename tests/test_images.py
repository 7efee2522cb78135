"""One decoder for every command: upright, 8-bit RGB, and bad images named without the machine's paths."""

import io

import numpy as np
import PIL.Image
import pytest

from pipeline_dalda.images import BadImage, load_image

from .helpers import random_images


def exif_rotated_jpeg(image):
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90°
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    return buffer.getvalue()


def test_every_source_kind_decodes_to_the_same_upright_image(tmp_path):
    data = exif_rotated_jpeg(random_images(1, seed=1, size=(40, 30))[0])
    (tmp_path / "photo.jpg").write_bytes(data)
    decoded = [
        load_image(tmp_path / "photo.jpg"),
        load_image(str(tmp_path / "photo.jpg")),
        load_image(data),
        load_image({"bytes": data, "path": None}),
        load_image({"bytes": None, "path": str(tmp_path / "photo.jpg")}),
    ]
    assert all(image.mode == "RGB" and image.size == (30, 40) for image in decoded)  # upright: width and height swap
    assert all(np.array_equal(np.asarray(image), np.asarray(decoded[0])) for image in decoded)


def test_sixteen_bit_and_transparent_images_become_8_bit_rgb():
    gray = PIL.Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    transparent = PIL.Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    for image in (gray, transparent):
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        decoded = load_image(buffer.getvalue())
        assert decoded.mode == "RGB" and np.asarray(decoded).min() == 255  # white, not clipped or black


@pytest.mark.parametrize("content", [None, b"not an image"], ids=["missing", "corrupt"])
def test_a_bad_file_is_named_by_its_name_only(tmp_path, content):
    path = tmp_path / "photo.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(BadImage, match="cannot decode the image") as raised:
        load_image({"bytes": None, "path": str(path)})
    assert "photo.png" in str(raised.value) and str(tmp_path) not in str(raised.value)
