"""Order-free seeds: every random draw of a synthetic image comes from its own stream, keyed by (stream, run seed,
real image, prompt), so a result does not depend on the batch size, the order, a resume or the number of processes.

`dalda augment` keys an image by its real image's row in the source split, `dalda generate` by its position in the
list of images it is given.
"""

import numpy as np
import torch


_NOISE_STREAM, _SCALE_STREAM = 1, 2  # keep the two random streams of a run apart


def item_seed(run_seed: int, source_index: int, prompt_index: int) -> int:
    """The seed of one synthetic image's initial noise."""
    return int(np.random.SeedSequence([_NOISE_STREAM, run_seed, source_index, prompt_index]).generate_state(1)[0])


def noise_generator(seed: int) -> torch.Generator:
    """The generator of one synthetic image's initial noise, from its [`item_seed`] (on the CPU, so an image is the
    same on every device)."""
    return torch.Generator().manual_seed(seed)


def scale_generator(run_seed: int, source_index: int, prompt_index: int) -> np.random.Generator:
    """The random stream that draws one synthetic image's IP-Adapter weight λ."""
    return np.random.default_rng([_SCALE_STREAM, run_seed, source_index, prompt_index])
