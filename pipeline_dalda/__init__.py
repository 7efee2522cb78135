"""The diffusers side of dalda: [`DALDAPipeline`], Adaptive Guidance Scaling and CLIPScore."""

from .pipeline import (
    DALDA_SCHEDULER_CONFIG,
    DEFAULT_CLIP_SCORE_MODEL,
    DEFAULT_NEGATIVE_PROMPT,
    DEFAULT_PROMPT_PREFIX,
    AdaptiveGuidanceScaling,
    CLIPScorer,
    DALDAPipeline,
    DALDAPipelineOutput,
    to_rgb,
)


__all__ = [
    "DALDA_SCHEDULER_CONFIG",
    "DEFAULT_CLIP_SCORE_MODEL",
    "DEFAULT_NEGATIVE_PROMPT",
    "DEFAULT_PROMPT_PREFIX",
    "AdaptiveGuidanceScaling",
    "CLIPScorer",
    "DALDAPipeline",
    "DALDAPipelineOutput",
    "to_rgb",
]
