"""Order-free seeds: every random draw comes from its own stream, keyed by (stream, run seed, ...) — for a synthetic
image, its real image and prompt — so a result does not depend on the batch size, the order, a resume or the number
of processes.

`dalda augment` keys an image by its real image's row in the source split, `dalda generate` by its position in the
list of images it is given; `dalda evaluate` keys a trial's draws by its seed.
"""

import numpy as np
import torch


STREAMS = {
    "noise": 1, "scale": 2, "textual_inversion": 3, "strength": 4, "retry_noise": 5,
    "training_draws": 11, "mixing": 12, "views": 13,
    "validation": 21,
}
"""Every random stream of the project, by name: no two kinds of draw share a stream."""


def stream(name: str, *keys: int) -> np.random.Generator:
    """The random stream `name` for `keys` (a run seed, then what the draw is of)."""
    return np.random.default_rng([STREAMS[name], *keys])


def item_seed(run_seed: int, source_index: int, prompt_index: int, attempt: int = 0) -> int:
    """The seed of one synthetic image's initial noise; a regenerated image's attempt (`attempt` ≥ 1, see
    `dalda augment --min_synthetic_score`) draws its seed from a stream of its own."""
    keys = [STREAMS["noise"], run_seed, source_index, prompt_index]
    if attempt:
        keys = [STREAMS["retry_noise"], run_seed, source_index, prompt_index, attempt]
    return int(np.random.SeedSequence(keys).generate_state(1)[0])


def noise_generator(seed: int) -> torch.Generator:
    """The generator of one synthetic image's initial noise, from its [`item_seed`] (on the CPU, so an image is the
    same on every device)."""
    return torch.Generator().manual_seed(seed)


def scale_generator(run_seed: int, source_index: int, prompt_index: int) -> np.random.Generator:
    """The random stream that draws one synthetic image's IP-Adapter weight λ."""
    return stream("scale", run_seed, source_index, prompt_index)
