"""The diffusers side of dalda: [`DALDAPipeline`], Adaptive Guidance Scaling, CLIPScore and prompt generation.

Names are imported on first use, so `pipeline_dalda.prompts` does not pay for importing diffusers.
"""

import importlib
from typing import Any


_PIPELINE_EXPORTS = {
    "DALDA_SCHEDULER_CONFIG": ".dalda_per_item",
    "DEFAULT_NEGATIVE_PROMPT": ".dalda_per_item",
    "DEFAULT_PROMPT_PREFIX": ".dalda_per_item",
    "DALDAPipelineOutput": ".dalda_per_item",
    "DEFAULT_CLIP_SCORE_MODEL": ".dalda_scoring",
    "AdaptiveGuidanceScaling": ".dalda_scoring",
    "CLIPScorer": ".dalda_scoring",
    "to_rgb": ".dalda_scoring",
    "DALDAPipeline": ".pipeline",
    "DALDAXLPipeline": ".pipeline_sdxl",
}
"""Each exported name and the module that defines it."""

__all__ = list(_PIPELINE_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _PIPELINE_EXPORTS:
        return getattr(importlib.import_module(_PIPELINE_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
