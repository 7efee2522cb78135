"""A real HTTP server on loopback that answers the Hugging Face Hub API calls of an `upload_folder`, and keeps
what it was sent: the repo created, the README validated, and every file committed."""

import base64
import json
from http.server import BaseHTTPRequestHandler

from .loopback import LoopbackServer, send_json


class HubServer(LoopbackServer):
    def __init__(self):
        super().__init__(self._handler())
        self.created: list[dict] = []
        self.committed: dict[str, bytes] = {}
        self.authorizations: set[str] = set()

    @property
    def url(self) -> str:
        return self.address

    def _answer(self, method: str, path: str, body: bytes) -> tuple[int, dict]:
        if method == "POST" and path == "/api/repos/create":
            self.created.append(json.loads(body))
            return 200, {"url": f"{self.url}/datasets/{self.created[-1]['organization']}/{self.created[-1]['name']}"}
        if method == "POST" and path == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}
        if method == "POST" and "/preupload/" in path:
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
        if method == "POST" and "/commit/" in path:
            for line in body.decode().splitlines():
                entry = json.loads(line)
                if entry["key"] == "file":
                    self.committed[entry["value"]["path"]] = base64.b64decode(entry["value"]["content"])
            repo = "/".join(path.split("/")[3:5])
            return 200, {"commitUrl": f"{self.url}/datasets/{repo}/commit/{'a' * 40}", "commitOid": "a" * 40}
        return 404, {"error": "not found"}

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, method):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("authorization"):
                    hub.authorizations.add(self.headers["authorization"])
                status, payload = hub._answer(method, self.path, body)
                send_json(self, status, payload)

            def do_POST(self):
                self._reply("POST")

            def do_GET(self):
                self._reply("GET")

            def log_message(self, *args):
                pass

        return Handler
