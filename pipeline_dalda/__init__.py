"""The diffusers side of dalda: [`DALDAPipeline`], Adaptive Guidance Scaling, CLIPScore and prompt generation.

Names are imported on first use, so `pipeline_dalda.prompts` does not pay for importing diffusers.
"""

import importlib
from typing import Any


_PIPELINE_EXPORTS = (
    "DALDA_SCHEDULER_CONFIG",
    "DEFAULT_CLIP_SCORE_MODEL",
    "DEFAULT_NEGATIVE_PROMPT",
    "DEFAULT_PROMPT_PREFIX",
    "AdaptiveGuidanceScaling",
    "CLIPScorer",
    "DALDAPipeline",
    "DALDAPipelineOutput",
    "to_rgb",
)

__all__ = list(_PIPELINE_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _PIPELINE_EXPORTS:
        return getattr(importlib.import_module(".pipeline", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
