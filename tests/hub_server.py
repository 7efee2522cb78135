"""A real HTTP server on loopback that answers the Hugging Face Hub API calls of an `upload_folder`, and keeps
what it was sent: the repo created, the README validated, and every file committed."""

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HubServer:
    def __init__(self):
        self.created: list[dict] = []
        self.committed: dict[str, bytes] = {}
        self.authorizations: set[str] = set()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "HubServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

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
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                self._reply("POST")

            def do_GET(self):
                self._reply("GET")

            def log_message(self, *args):
                pass

        return Handler
