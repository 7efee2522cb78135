"""A real HTTP server on loopback that answers the Hugging Face Hub API calls of a `create_repo` and an
`upload_folder` (model or dataset repos), and keeps what it was sent: the repos created, the repos committed to,
and every file committed."""

import base64
import json
from http.server import BaseHTTPRequestHandler

from .loopback import LoopbackServer, send_json


SECRET_TOKEN = "hf_dalda_test_SECRET_token_0123456789"
"""The token the uploads under test authenticate with; it must reach the server and no output."""
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
"""Where the Hub's web pages put each repo type, as `huggingface_hub.constants.REPO_TYPES_URL_PREFIXES`."""


class HubServer(LoopbackServer):
    def __init__(self):
        super().__init__(self._handler())
        self.created: list[dict] = []
        self.committed: dict[str, bytes] = {}
        self.commit_repos: list[str] = []
        """The API path of each repo committed to, e.g. `models/org/name` or `datasets/org/name`."""
        self.authorizations: set[str] = set()

    @property
    def url(self) -> str:
        return self.address

    @property
    def env(self) -> dict[str, str]:
        """The environment that points `huggingface_hub` in a `dalda` subprocess at this server, with the token."""
        return {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": self.url, "HF_TOKEN": SECRET_TOKEN}

    def _answer(self, method: str, path: str, body: bytes) -> tuple[int, dict]:
        if method == "POST" and path == "/api/repos/create":
            self.created.append(json.loads(body))
            repo = self.created[-1]
            prefix = URL_PREFIXES[repo.get("type", "model")]
            return 200, {"url": f"{self.url}/{prefix}{repo['organization']}/{repo['name']}"}
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
            repo_types, repo = path.split("/")[2], "/".join(path.split("/")[3:5])  # /api/<type>s/<org>/<name>/commit/
            self.commit_repos.append(f"{repo_types}/{repo}")
            prefix = URL_PREFIXES[repo_types.removesuffix("s")]
            return 200, {"commitUrl": f"{self.url}/{prefix}{repo}/commit/{'a' * 40}", "commitOid": "a" * 40}
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
