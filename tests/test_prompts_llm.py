"""The openai backend against a real Chat Completions server on loopback, through the real `openai` client."""

import json
import logging
import os
import subprocess
import threading

import pytest

from pipeline_dalda.prompts import (
    ClassNameMatcher,
    LLMSettings,
    PromptArguments,
    PromptBank,
    PromptRequestError,
    generate_prompt_bank,
)

from .chat_server import ChatServer, Reply, good_answer, user_message
from .helpers import dalda_command, kill_midway


API_KEY = "sk-dalda-test-SECRET-0123456789"
CLASSES = [f"class_{name}" for name in "abcdefghijklmnopqrstuvwxy"]  # 25 classes
DESCRIPTION = "Photos of made-up objects, one object per photo."


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)


def settings(server, **overrides):
    values = dict(model="test-model", base_url=server.url, retry_base_delay=0.01, retry_max_delay=0.05)
    return LLMSettings(**{**values, **overrides})


def run(server, tmp_path, classes=CLASSES, llm=None, **overrides):
    values = dict(dataset_description=DESCRIPTION, num_prompts=4, chunk_size=10, max_concurrency=2)
    args = PromptArguments(output=str(tmp_path / "bank.json"), backend="openai", **{**values, **overrides})
    return generate_prompt_bank(args, classes, llm or settings(server))


def assert_valid_bank(bank, classes, num_prompts=4):
    matcher = ClassNameMatcher(classes)
    assert list(bank.prompts) == classes
    for name, sentences in bank.prompts.items():
        assert len(sentences) == len(set(sentences)) == num_prompts
        assert all(not matcher.problems(sentence, name) for sentence in sentences)


def test_clean_run(tmp_path):
    with ChatServer() as server:
        bank = run(server, tmp_path)
    assert_valid_bank(bank, CLASSES)
    assert len(server.requests) == 3  # 25 classes in chunks of 10
    assert sorted(sum(server.asked_classes(), [])) == CLASSES
    body = server.requests[0]["body"]
    assert (body["temperature"], body["top_p"], body["frequency_penalty"], body["presence_penalty"]) == (1, 1, 0, 0)
    assert body["response_format"] == {"type": "json_object"} and body["model"] == "test-model"
    assert DESCRIPTION in body["messages"][-1]["content"] and "class_y" in body["messages"][-1]["content"]

    metadata = PromptBank.load(tmp_path / "bank.json").metadata
    assert metadata["requests"] == 3
    assert metadata["token_usage"] == {"prompt_tokens": 300, "completion_tokens": 120}
    assert metadata["settings"]["base_url_host"] == "127.0.0.1"
    assert metadata["settings"]["temperature"] == 1.0 and metadata["settings"]["top_p"] == 1.0
    assert metadata["template_fallbacks"]["total"] == 0
    assert not (tmp_path / "bank.json.chunks").exists()


@pytest.mark.parametrize("max_concurrency", [1, 2])
def test_at_most_max_concurrency_requests_are_in_flight(tmp_path, max_concurrency):
    # One class per chunk, 6 chunks; every answer takes 0.2 s, so requests sent together are in flight together.
    with ChatServer(reply_delay=0.2) as server:
        bank = run(server, tmp_path, classes=CLASSES[:6], chunk_size=1, max_concurrency=max_concurrency)
    assert_valid_bank(bank, CLASSES[:6])
    assert len(server.requests) == 6
    assert server.max_in_flight == max_concurrency  # reached, and never passed


def test_invalid_json_is_re_asked(tmp_path):
    with ChatServer() as server:
        server.faults.append(Reply(content="Sure! Here are your sentences: ..."))
        bank = run(server, tmp_path, classes=CLASSES[:5])
    assert_valid_bank(bank, CLASSES[:5])
    assert len(server.requests) == 2
    assert "not valid JSON" in server.requests[1]["body"]["messages"][-1]["content"]


def test_429_honours_retry_after(tmp_path):
    with ChatServer() as server:
        server.faults.append(Reply(status=429, headers={"retry-after": "1"}))
        bank = run(server, tmp_path, classes=CLASSES[:3])
    assert_valid_bank(bank, CLASSES[:3])
    assert len(server.requests) == 2
    assert server.requests[1]["time"] - server.requests[0]["time"] >= 0.95


def test_server_error_then_recovery(tmp_path):
    with ChatServer() as server:
        server.faults.extend([Reply(status=500), Reply(status=503)])
        bank = run(server, tmp_path, classes=CLASSES[:3])
    assert_valid_bank(bank, CLASSES[:3])
    assert len(server.requests) == 3


def test_connection_reset_and_time_out_then_recovery(tmp_path, caplog):
    # The limit is far above a normal answer's time on loopback, so that only the held-back answer times out even on
    # a busy machine (a recovery that timed out too would add a request); the held-back answer comes far after it.
    request_timeout = 2.0
    with ChatServer() as server:
        server.faults.extend([Reply(drop=True), Reply(delay=10 * request_timeout)])
        bank = run(server, tmp_path, classes=CLASSES[:3], llm=settings(server, request_timeout=request_timeout))
    assert_valid_bank(bank, CLASSES[:3])
    assert len(server.requests) == 3
    assert "failed (APIConnectionError)" in caplog.text and "failed (APITimeoutError)" in caplog.text


def test_missing_class_is_asked_again_alone(tmp_path):
    def drop_class_b(answer):
        return {name: sentences for name, sentences in answer.items() if name != "class_b"}

    with ChatServer() as server:
        server.faults.append(Reply(alter=drop_class_b))
        bank = run(server, tmp_path, classes=CLASSES[:3])
    assert_valid_bank(bank, CLASSES[:3])
    assert server.asked_classes() == [CLASSES[:3], ["class_b"]]


def test_renamed_class_is_asked_again(tmp_path):
    def rename(answer):
        answer["Class A"] = answer.pop("class_a")
        return answer

    with ChatServer() as server:
        server.faults.append(Reply(alter=rename))
        bank = run(server, tmp_path, classes=CLASSES[:2])
    assert_valid_bank(bank, CLASSES[:2])
    assert server.asked_classes()[1] == ["class_a"]


def test_sentence_naming_another_class_is_replaced(tmp_path):
    def contaminate(answer):
        answer["class_a"][0] = "A class a sitting next to a class c on a table."
        answer["class_b"][1] = ""
        return answer

    with ChatServer() as server:
        server.faults.append(Reply(alter=contaminate))
        bank = run(server, tmp_path, classes=CLASSES[:3])
    assert_valid_bank(bank, CLASSES[:3])
    assert all("class c" not in sentence for sentence in bank.prompts["class_a"])
    assert server.asked_classes()[1] == ["class_a", "class_b"]
    assert json.loads(server.requests[1]["body"]["messages"][-1]["content"].split("counts: ")[1].splitlines()[0]) == {
        "class_a": ["<sentence 1 about class a>"],
        "class_b": ["<sentence 1 about class b>"],
    }


def test_persistent_bad_sentences_fall_back_to_templates(tmp_path):
    def never_name_class_a(answer):
        if "class_a" in answer:
            answer["class_a"] = ["A lovely photo of something."] * len(answer["class_a"])
        return answer

    with ChatServer() as server:
        server.faults.extend(Reply(alter=never_name_class_a) for _ in range(4))
        bank = run(server, tmp_path, classes=CLASSES[:2], llm=settings(server, max_reasks=3))
    assert_valid_bank(bank, CLASSES[:2])
    assert len(server.requests) == 4  # the first ask and 3 re-asks
    fallbacks = PromptBank.load(tmp_path / "bank.json").metadata["template_fallbacks"]
    assert fallbacks == {"total": 4, "by_class": {"class_a": 4}}


def test_repeated_sentence_is_named_in_the_re_ask(tmp_path):
    favourite = "A class a resting on a wooden table."

    def repetitive_model(body, number):
        """Opens its class_a sentences with its favourite one, twice, until told that it is a repeat."""
        answer = good_answer(body, number)
        if "class_a" in answer and favourite not in user_message(body):
            answer["class_a"] = ([favourite] * 2 + answer["class_a"])[: len(answer["class_a"])]
        return answer

    with ChatServer(model=repetitive_model) as server:
        bank = run(server, tmp_path, classes=CLASSES[:2])
    assert_valid_bank(bank, CLASSES[:2])
    assert favourite in bank.prompts["class_a"]
    assert bank.metadata["template_fallbacks"]["total"] == 0
    assert server.asked_classes() == [CLASSES[:2], ["class_a"]]
    re_ask = user_message(server.requests[1]["body"])
    assert f"{favourite!r} repeats an earlier sentence; never write it again" in re_ask


def test_json_mode_refusal_falls_back_to_plain_requests(tmp_path):
    with ChatServer(reject_json_mode=True) as server:
        bank = run(server, tmp_path, classes=CLASSES[:3])
    assert_valid_bank(bank, CLASSES[:3])
    assert "response_format" in server.requests[0]["body"]
    assert "response_format" not in server.requests[-1]["body"]


def test_lasting_failure_stops_after_saving_then_resumes(tmp_path):
    with ChatServer() as server:
        # Chunk 1 succeeds, then the server fails every attempt of chunk 2 (1 try + 2 retries).
        server.faults.extend([Reply()] + [Reply(status=502)] * 3)
        with pytest.raises(PromptRequestError, match="HTTP 502.*10 of 25 classes are saved.*resume"):
            run(server, tmp_path, llm=settings(server, max_retries=2), max_concurrency=1)
        assert not (tmp_path / "bank.json").exists()
        asked_before = len(server.requests)

        bank = run(server, tmp_path, max_concurrency=1)
    assert_valid_bank(bank, CLASSES)
    finished_first = set(server.asked_classes()[0])
    assert not finished_first & set(sum(server.asked_classes()[asked_before:], []))
    assert bank.metadata["requests"] == len(server.requests) == 4 + 2  # the failed chunk's attempts count too


def test_changed_settings_do_not_mix_with_a_saved_run(tmp_path):
    with ChatServer() as server:
        server.faults.extend([Reply()] + [Reply(status=500)] * 2)
        with pytest.raises(PromptRequestError):
            run(server, tmp_path, llm=settings(server, max_retries=1), max_concurrency=1)
        with pytest.raises(ValueError, match="other settings.*temperature"):
            run(server, tmp_path, llm=settings(server, temperature=0.7))


def test_finished_bank_is_not_asked_again(tmp_path):
    with ChatServer() as server:
        run(server, tmp_path, classes=CLASSES[:3])
        asked = len(server.requests)
        run(server, tmp_path, classes=CLASSES[:3])
        assert len(server.requests) == asked


def test_non_retryable_error_stops_at_once(tmp_path):
    with ChatServer() as server:
        server.faults.append(Reply(status=404))
        with pytest.raises(PromptRequestError, match="refused the request: HTTP 404"):
            run(server, tmp_path, classes=CLASSES[:2])
    assert len(server.requests) == 1


@pytest.mark.parametrize("status", [401, 403])
def test_refused_api_key_names_its_environment_variable(tmp_path, monkeypatch, status):
    monkeypatch.setenv("DALDA_TEST_KEY", API_KEY)
    with ChatServer() as server:
        server.faults.append(Reply(status=status))
        with pytest.raises(PromptRequestError) as raised:
            run(server, tmp_path, classes=CLASSES[:2], llm=settings(server, api_key_env="DALDA_TEST_KEY"))
    assert len(server.requests) == 1 and server.requests[0]["headers"]["authorization"] == f"Bearer {API_KEY}"
    message = str(raised.value)
    assert f"refused the API key from the environment variable DALDA_TEST_KEY (HTTP {status})" in message
    assert message.endswith("; put a valid API key in DALDA_TEST_KEY, then run the same command again to resume.")
    assert API_KEY not in message


def test_server_wanting_a_key_that_is_not_set_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    with ChatServer() as server:
        server.faults.append(Reply(status=401))
        with pytest.raises(PromptRequestError, match=r"wants an API key \(HTTP 401\); the environment variable "
                           r"OPENAI_API_KEY is unset\..*put a valid API key in OPENAI_API_KEY"):
            run(server, tmp_path, classes=CLASSES[:2])


def test_model_and_description_are_required(tmp_path):
    with ChatServer() as server:
        with pytest.raises(ValueError, match="`model` is required"):
            run(server, tmp_path, llm=settings(server, model=None))
        with pytest.raises(ValueError, match="dataset_description"):
            run(server, tmp_path, dataset_description="")


def prompts_command(server, tmp_path, classes_file, extra=()):
    return [
        *dalda_command(), "prompts", "--backend", "openai", "--base_url", server.url, "--model", "test-model",
        "--dataset_description", DESCRIPTION, "--class_names_file", str(classes_file), "--num_prompts", "3",
        "--chunk_size", "1", "--max_concurrency", "1", "--output", str(tmp_path / "bank.json"), *extra,
    ]


def test_killed_run_resumes_without_asking_finished_chunks_again(tmp_path):
    classes_file = tmp_path / "classes.txt"
    classes_file.write_text("\n".join(CLASSES[:12]) + "\n")
    env = {**os.environ, "OPENAI_API_KEY": API_KEY, "HF_HUB_OFFLINE": "1"}
    answer_held = threading.Event()
    with ChatServer() as server:
        # One class per chunk: 3 chunks finish, the 4th gets a bad answer, and its re-ask is in flight at the kill.
        server.faults.extend([Reply(), Reply(), Reply(), Reply(content="not json"), Reply(hold=answer_held)])
        chunks = tmp_path / "bank.json.chunks"
        command = prompts_command(server, tmp_path, classes_file)
        try:
            kill_midway(command, ready=lambda: len(server.requests) == 5, env=env)
        finally:
            answer_held.set()
        finished = {name for path in chunks.glob("chunk-*.json") for name in json.loads(path.read_text())["classes"]}
        asked_before = len(server.requests)

        result = subprocess.run(prompts_command(server, tmp_path, classes_file), env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr

    assert finished == set(CLASSES[:3])
    assert not finished & set(sum(server.asked_classes()[asked_before:], []))
    bank = PromptBank.load(tmp_path / "bank.json")
    assert_valid_bank(bank, CLASSES[:12], num_prompts=3)
    # Both runs' requests, the two lost with the killed chunk included: 5 + 9.
    assert bank.metadata["requests"] == len(server.requests) == 14
    assert not list(tmp_path.glob(".bank.json.*.tmp"))


def test_api_key_never_reaches_files_or_logs(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with ChatServer() as server:
        server.faults.extend([Reply(status=429, headers={"retry-after": "0"}), Reply(content="not json")])
        run(server, tmp_path, classes=CLASSES[:4])
        # A failed run leaves its checkpoints behind: they must be clean too.
        server.faults.extend([Reply()] + [Reply(status=500)] * 2)
        with pytest.raises(PromptRequestError):
            run(server, tmp_path / "failed", llm=settings(server, max_retries=1), max_concurrency=1, chunk_size=2)
        classes_file = tmp_path / "classes.txt"
        classes_file.write_text("apple\nbanana\n")
        env = {**os.environ, "OPENAI_API_KEY": API_KEY, "HF_HUB_OFFLINE": "1"}
        result = subprocess.run(
            prompts_command(server, tmp_path / "cli", classes_file), env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        # A refused key is reported by the name of its variable, in process and from the command line.
        server.faults.append(Reply(status=401))
        with pytest.raises(PromptRequestError, match="API key from the environment variable OPENAI_API_KEY") as raised:
            run(server, tmp_path / "refused", classes=CLASSES[:2])
        server.faults.append(Reply(status=401))
        refused = subprocess.run(
            prompts_command(server, tmp_path / "refused-cli", classes_file), env=env, capture_output=True, text=True
        )
        assert refused.returncode != 0 and "API key from the environment variable OPENAI_API_KEY" in refused.stderr

    assert all(request["headers"]["authorization"] == f"Bearer {API_KEY}" for request in server.requests)
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert any(path.name.startswith("chunk-") for path in written) and any(p.name == "bank.json" for p in written)
    for path in written:
        assert API_KEY not in path.read_text(encoding="utf-8", errors="replace"), path
    assert caplog.records and API_KEY not in caplog.text
    assert API_KEY not in result.stdout + result.stderr + refused.stdout + refused.stderr + str(raised.value)


def test_a_101_class_run_takes_11_requests_with_the_default_chunk_size(tmp_path):
    classes = [f"object_{index:03d}" for index in range(101)]
    args = PromptArguments(output=str(tmp_path / "bank.json"), backend="openai", dataset_description=DESCRIPTION)
    assert (args.num_prompts, args.chunk_size) == (10, 10)
    with ChatServer() as server:
        bank = generate_prompt_bank(args, classes, settings(server))
    assert_valid_bank(bank, classes, num_prompts=10)
    assert len(server.requests) == bank.metadata["requests"] == 11
