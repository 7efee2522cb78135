"""The classifier's input views: the paper's training transforms (horizontal flip, rotation ±15°) on a squashed,
square image, as a fixed grid that can be cached or as the released code's continuous draws."""

from dataclasses import dataclass

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

from .arguments import ROTATION_STEP


MAX_ROTATION = 15.0
"""The paper's rotation range in degrees: angles are drawn from [-15, 15]."""


@dataclass(frozen=True)
class View:
    """One augmented view of an image: an optional horizontal flip, then a rotation (degrees, counter-clockwise)."""

    flip: bool = False
    angle: float = 0.0

    @property
    def name(self) -> str:
        return f"flip{int(self.flip)}_rot{self.angle:+08.3f}"


IDENTITY = View()
"""The test-time view: no flip, no rotation."""


def view_grid(rotation_step: float = ROTATION_STEP) -> tuple[View, ...]:
    """The cached training views: {no flip, flip} × {-15°, -15° + step, ..., 15°}; 62 views at the default 1°.

    The cached path trains on the grid view nearest to each view the released code would draw
    (`RandomHorizontalFlip` + `RandomRotation(15)`), so the two paths see the same flips and angles within half a
    step; the benchmark measures that they reach the same accuracy.
    """
    rotations = 2 * MAX_ROTATION / rotation_step
    if rotation_step <= 0 or abs(rotations - round(rotations)) > 1e-9:
        raise ValueError(f"The rotation step must divide 30°, got {rotation_step}°.")
    angles = np.linspace(-MAX_ROTATION, MAX_ROTATION, round(rotations) + 1)
    return tuple(View(flip, float(angle)) for flip in (False, True) for angle in angles)


def squash(image: PIL.Image.Image, size: int) -> PIL.Image.Image:
    """The paper's resize: the whole image squashed to `size`×`size` (bilinear), no crop."""
    return image.resize((size, size), PIL.Image.BILINEAR)


def render(image: PIL.Image.Image, view: View, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    r"""
    The normalised pixels of one view of a squashed image.

    The order is the released code's: flip, then rotate about the centre (nearest neighbour, corners filled with
    black, as torchvision's `RandomRotation`), then `x = (pixel / 255 − mean) / std` per channel.

    Returns:
        `torch.Tensor` of shape `(3, size, size)`, float32.
    """
    if view.flip:
        image = PIL.ImageOps.mirror(image)
    if view.angle:
        image = image.rotate(view.angle, resample=PIL.Image.NEAREST)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def draw_views(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The released code's draws: a fair flip and an angle uniform in [-15°, 15°]; returns (flips, angles)."""
    return rng.integers(0, 2, size=shape).astype(bool), rng.uniform(-MAX_ROTATION, MAX_ROTATION, size=shape)


def nearest_grid_views(flips: np.ndarray, angles: np.ndarray, rotation_step: float = ROTATION_STEP) -> np.ndarray:
    """The index in [`view_grid`] of the grid view nearest to each drawn view: the same flip, the angle rounded to
    the grid (off by at most half a step)."""
    steps = np.round((np.clip(angles, -MAX_ROTATION, MAX_ROTATION) + MAX_ROTATION) / rotation_step).astype(np.int64)
    return flips.astype(np.int64) * (len(view_grid(rotation_step)) // 2) + steps
