"""Class-specific scene sentences from any OpenAI-compatible Chat Completions server (OpenAI, Azure OpenAI, vLLM,
Ollama, llama.cpp's server), checked sentence by sentence, with retries that survive a flaky server."""

import email.utils
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Sequence

import openai

from ..arguments import LLMSettings
from .bank import UsageLedger
from .matching import ClassNameMatcher, display_name
from .template import TemplatePromptWriter


logger = logging.getLogger(__name__)

SYSTEM_MESSAGE = (
    "You write short scene descriptions that are used as text prompts to generate training images for an image "
    "classification dataset. You answer with JSON only."
)
_RETRIED_STATUS = {408, 409, 429}
_KEY_REFUSED_STATUS = {401, 403}
RESUME_HINT = "run the same command again to resume"


class PromptRequestError(RuntimeError):
    """The LLM server refused or kept failing a request; the run stops after saving what it has.

    Args:
        message: what went wrong.
        next_step: what the user does so that the run resumes (a bare rerun, or fixing something first).
    """

    def __init__(self, message: str, next_step: str = RESUME_HINT):
        super().__init__(message)
        self.next_step = next_step


def _api_key_refused(status: int, api_key_env: str, key_was_set: bool) -> PromptRequestError:
    """The error for HTTP 401/403: a rerun fails the same way until the key is fixed, so it names the environment
    variable the key comes from (never the key itself)."""
    if key_was_set:
        message = f"The LLM server refused the API key from the environment variable {api_key_env} (HTTP {status})."
    else:
        message = f"The LLM server wants an API key (HTTP {status}); the environment variable {api_key_env} is unset."
    return PromptRequestError(message, next_step=f"put a valid API key in {api_key_env}, then {RESUME_HINT}")


@dataclass
class ChunkResult:
    """The sentences for one chunk of classes, and how many of each class's came from templates.

    What the chunk cost is not here: it is added to the run's `UsageLedger` request by request, so that a chunk
    killed in flight is counted too.
    """

    sentences: dict[str, list[str]]
    template_fallbacks: dict[str, int]


def instructions(
    description: str, all_classes: Sequence[str], wanted: dict[str, int], feedback: Sequence[str]
) -> str:
    """The user message: the dataset, all its classes, how many sentences each wanted class needs, past problems."""
    example = {name: [f"<sentence {i + 1} about {display_name(name)}>" for i in range(count)] for name, count in wanted.items()}
    lines = [
        f"Dataset: {description.strip()}",
        f"All classes of the dataset: {json.dumps(list(all_classes), ensure_ascii=False)}",
        "",
        f"Classes to describe now: {json.dumps(list(wanted), ensure_ascii=False)}",
        "For each of these classes write the requested number of different one-sentence descriptions of a realistic "
        "photo of that class. Keep the class's identity and add new detail in each sentence: viewpoint, colour, "
        "action, background, foreground or environment, realistic for this dataset. Every sentence must name its "
        "class and must not show or name any other class of the dataset.",
        "Answer with one JSON object that maps each class name, exactly as given, to a list of sentences, with this "
        f"shape and these counts: {json.dumps(example, ensure_ascii=False)}",
    ]
    if feedback:
        lines += ["", "Your previous answer had problems; avoid them:"] + [f"- {problem}" for problem in feedback]
    return "\n".join(lines)


def _retry_after_seconds(error: openai.APIStatusError) -> float | None:
    headers = error.response.headers
    if "retry-after-ms" in headers:
        try:
            return float(headers["retry-after-ms"]) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when else None


class OpenAIPromptWriter:
    """Writes M sentences per class with an OpenAI-compatible Chat Completions server.

    Every sentence is checked: it must name its own class and no other class of the dataset. Bad answers (not JSON,
    missing or renamed classes, empty, failing or repeated sentences) are re-asked up to `max_reasks` times, only
    for what is still missing and naming what was wrong; what is still missing then is filled with template
    sentences and counted.

    Args:
        settings: the server, model and sampling settings.
        class_names: every class of the dataset.
        description: a short description of the dataset.
        num_prompts: sentences per class (M).
        fallback: the template writer that fills in after the re-asks.
    """

    def __init__(
        self,
        settings: LLMSettings,
        class_names: Sequence[str],
        description: str,
        num_prompts: int,
        fallback: TemplatePromptWriter,
    ):
        if not settings.model:
            raise ValueError("`model` is required for the openai backend (the paper used 'gpt-4-0613').")
        api_key = os.environ.get(settings.api_key_env)
        self._key_was_set = bool(api_key)
        if not api_key:
            if settings.base_url is None:
                raise ValueError(f"Set the API key in the environment variable {settings.api_key_env}.")
            api_key = "EMPTY"  # local servers (vLLM, Ollama, llama.cpp) take any key
        self.client = openai.OpenAI(
            api_key=api_key, base_url=settings.base_url, timeout=settings.request_timeout, max_retries=0
        )
        self.settings = settings
        self.class_names = list(class_names)
        self.description = description
        self.num_prompts = num_prompts
        self.fallback = fallback
        self.matcher = ClassNameMatcher(class_names)
        self._json_mode = settings.json_mode
        self._jitter = random.Random()

    def write_chunk(self, classes: Sequence[str], usage: UsageLedger) -> ChunkResult:
        """M checked sentences for each of `classes`; every request made is added to `usage` as it is sent."""
        accepted: dict[str, list[str]] = {name: [] for name in classes}
        result = ChunkResult(sentences=accepted, template_fallbacks={})
        feedback: list[str] = []
        for _ in range(1 + self.settings.max_reasks):
            wanted = {name: self.num_prompts - len(found) for name, found in accepted.items() if len(found) < self.num_prompts}
            if not wanted:
                break
            answer = self._complete(instructions(self.description, self.class_names, wanted, feedback), usage)
            feedback = self._accept(answer, wanted, accepted)
            for problem in feedback:
                logger.info("Problem with an answer: %s", problem)

        for name, found in accepted.items():
            missing = self.num_prompts - len(found)
            if missing:
                candidates = self.fallback.sentences(name, self.num_prompts + len(found))
                found.extend([s for s in candidates if s not in found][:missing])
                result.template_fallbacks[name] = missing
                logger.warning("%d sentence(s) for %r fell back to templates.", missing, name)
        return result

    def _accept(self, answer: str, wanted: dict[str, int], accepted: dict[str, list[str]]) -> list[str]:
        """Takes the valid new sentences of an answer; returns what was wrong with it, each problem once.

        A repeated sentence is named, so that the re-ask tells the model not to write it again; otherwise a model
        that repeats itself would spend every re-ask on the same sentence."""
        try:
            parsed = json.loads(answer)
        except json.JSONDecodeError:
            return ["the answer was not valid JSON; answer with a JSON object only"]
        if not isinstance(parsed, dict):
            return ["the answer was not a JSON object mapping class names to lists of sentences"]
        problems = [f"{key!r} is not one of the requested class names" for key in parsed if key not in wanted]
        for name in wanted:
            sentences = parsed.get(name)
            if isinstance(sentences, str):
                sentences = [sentences]
            if not isinstance(sentences, list) or not sentences:
                problems.append(f"the answer had no list of sentences for {name!r} (use the name exactly as given)")
                continue
            for sentence in sentences:
                sentence = " ".join(sentence.split()) if isinstance(sentence, str) else ""
                reasons = self.matcher.problems(sentence, name)
                if reasons:
                    problems.append(f"for {name!r}, {sentence!r} was rejected: {'; '.join(reasons)}")
                elif sentence in accepted[name]:
                    problems.append(f"for {name!r}, {sentence!r} repeats an earlier sentence; never write it again")
                elif len(accepted[name]) < self.num_prompts:
                    accepted[name].append(sentence)
        return list(dict.fromkeys(problems))

    def _complete(self, user_message: str, usage: UsageLedger) -> str:
        """One chat completion, retried on rate limits, server errors, time-outs and dropped connections; every
        attempt is counted in `usage` before it is sent, its tokens once it is answered."""
        messages = [{"role": "system", "content": SYSTEM_MESSAGE}, {"role": "user", "content": user_message}]
        for attempt in range(self.settings.max_retries + 1):
            usage.add(requests=1)
            try:
                extra = {"response_format": {"type": "json_object"}} if self._json_mode else {}
                response = self.client.chat.completions.create(
                    model=self.settings.model, messages=messages, **self.settings.sampling(), **extra
                )
            except openai.APIStatusError as error:
                if error.status_code == 400 and self._json_mode:
                    logger.warning("The server refused JSON mode (HTTP 400); asking without it from now on.")
                    self._json_mode = False
                    continue
                if error.status_code in _KEY_REFUSED_STATUS:
                    raise _api_key_refused(error.status_code, self.settings.api_key_env, self._key_was_set) from None
                if error.status_code not in _RETRIED_STATUS and error.status_code < 500:
                    raise PromptRequestError(f"The LLM server refused the request: HTTP {error.status_code}.") from None
                delay = _retry_after_seconds(error)
                reason = f"HTTP {error.status_code}"
            except (openai.APITimeoutError, openai.APIConnectionError) as error:
                delay, reason = None, type(error).__name__
            else:
                if response.usage is not None:
                    usage.add(
                        prompt_tokens=response.usage.prompt_tokens or 0,
                        completion_tokens=response.usage.completion_tokens or 0,
                    )
                return response.choices[0].message.content or "" if response.choices else ""

            if attempt == self.settings.max_retries:
                break
            if delay is None:
                backoff = min(self.settings.retry_max_delay, self.settings.retry_base_delay * 2**attempt)
                delay = backoff * self._jitter.uniform(0.5, 1.0)
            logger.warning("LLM request failed (%s); retrying in %.1f s.", reason, delay)
            time.sleep(delay)
        raise PromptRequestError(
            f"The LLM server kept failing ({reason}) after {self.settings.max_retries + 1} attempts."
        )

    def metadata(self) -> dict[str, Any]:
        return {
            "model": self.settings.model,
            "base_url_host": self.settings.base_url_host(),
            **self.settings.sampling(),
        }
