"""DALDA's text prompts: M scene sentences per class from an LLM, templates or an existing bank, each checked to
name its own class and no other."""

from .bank import PromptBank
from .generate import PromptArguments, generate_prompt_bank
from .llm import LLMSettings, OpenAIPromptWriter, PromptRequestError
from .matching import ClassNameMatcher
from .template import TemplatePromptWriter


__all__ = [
    "ClassNameMatcher",
    "LLMSettings",
    "OpenAIPromptWriter",
    "PromptArguments",
    "PromptBank",
    "PromptRequestError",
    "TemplatePromptWriter",
    "generate_prompt_bank",
]
