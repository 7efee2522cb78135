"""A real HTTP server on loopback that speaks OpenAI's Chat Completions protocol, for the prompt-generation tests.

By default it answers like a well-behaved LLM: for every class asked, the requested number of sentences naming it;
a test can give it another `model` that reads the request. Tests queue faults (HTTP errors, bad content, altered
answers, answers held back) that the next requests get instead, and read back every request it received and the most
requests it was answering at once (with `reply_delay`, every answer takes that long, so that requests can overlap).
"""

import json
import re
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable

from .loopback import LoopbackServer, send_json


WANTED_LINE = re.compile(r"with this shape and these counts: (\{.*\})$", re.MULTILINE)


def user_message(body: dict[str, Any]) -> str:
    """The instructions a request gives the model."""
    return body["messages"][-1]["content"]


def wanted_counts(body: dict[str, Any]) -> dict[str, int]:
    """The classes a request asks for and how many sentences each, read from its instructions."""
    counts = json.loads(WANTED_LINE.search(user_message(body))[1])
    return {name: len(placeholders) for name, placeholders in counts.items()}


def good_answer(body: dict[str, Any], number: int) -> dict[str, list[str]]:
    """A well-behaved model's answer to request `number`: the requested count of new sentences per class."""
    return {
        name: [f"A {name.replace('_', ' ')} seen in scene {number}-{i}, in soft light." for i in range(count)]
        for name, count in wanted_counts(body).items()
    }


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    content: str | None = None  # the assistant message; None means a good answer
    alter: Callable[[dict[str, list[str]]], dict[str, Any]] | None = None  # edits the good answer
    body: str | None = None  # a raw error body for non-200 replies
    delay: float = 0.0  # seconds before answering (longer than the client's time-out: a time-out)
    drop: bool = False  # close the connection without answering (a connection reset)
    hold: threading.Event | None = None  # answer only once it is set (a request in flight for as long as a test needs)


Model = Callable[[dict[str, Any], int], dict[str, list[str]]]  # (request body, request number) -> answer


class ChatServer(LoopbackServer):
    def __init__(self, model: Model = good_answer, reject_json_mode: bool = False, reply_delay: float = 0.0):
        super().__init__(self._handler())
        self.model = model
        self.reject_json_mode = reject_json_mode
        self.reply_delay = reply_delay  # seconds every request waits before it is answered
        self.requests: list[dict[str, Any]] = []
        self.faults: deque[Reply] = deque()
        self.in_flight = 0  # requests received and not yet answered
        self.max_in_flight = 0  # the most of them at any moment
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"{self.address}/v1"

    def asked_classes(self) -> list[list[str]]:
        return [list(wanted_counts(request["body"])) for request in self.requests]

    def _reply(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, str], str]:
        """(status, headers, body) of the answer to one request, counted in flight until it is made; 0 drops it."""
        with self._lock:
            number = len(self.requests)
            self.requests.append({"body": body, "headers": headers, "time": time.monotonic()})
            fault = self.faults.popleft() if self.faults else Reply()
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.reply_delay)
            return self._answer(body, number, fault)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _answer(self, body: dict[str, Any], number: int, fault: Reply) -> tuple[int, dict[str, str], str]:
        if fault.delay:
            time.sleep(fault.delay)
        if fault.hold:
            fault.hold.wait()
        if fault.drop:
            return 0, {}, ""
        if self.reject_json_mode and "response_format" in body:
            return 400, {}, json.dumps({"error": {"message": "response_format is not supported", "type": "invalid"}})
        if fault.status != 200:
            return fault.status, fault.headers, fault.body or json.dumps({"error": {"message": "fault", "type": "x"}})
        content = fault.content
        if content is None:
            answer = self.model(body, number)
            content = json.dumps(fault.alter(answer) if fault.alter else answer)
        completion = {
            "id": f"chatcmpl-{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140},
        }
        return 200, {}, json.dumps(completion)

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length))
                status, headers, payload = server._reply(body, {k.lower(): v for k, v in self.headers.items()})
                if status == 0:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                send_json(self, status, payload, headers)

            def log_message(self, *args):
                pass

        return Handler
