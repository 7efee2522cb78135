"""DALDA's text prompts: M scene sentences per class from an LLM, templates or an existing bank, each checked to
name its own class and no other.

Names are imported on first use, so reading a class name's display form does not pay for importing the LLM client.
"""

import importlib
from typing import Any


_EXPORTS = {
    "ClassNameMatcher": ".matching",
    "LLMSettings": "..arguments",
    "OpenAIPromptWriter": ".llm",
    "PromptArguments": "..arguments",
    "PromptBank": ".bank",
    "PromptRequestError": ".llm",
    "TemplatePromptWriter": ".template",
    "generate_prompt_bank": ".generate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
