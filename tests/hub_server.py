"""A real HTTP server on loopback that answers the Hugging Face Hub API calls of a `create_repo` and an
`upload_folder` (model, dataset or Space repos) and keeps what it was sent: the repos created, the repos committed
to, and every file committed, per repo. It serves those files back as the Hub does, to `hf_hub_download`,
`HfFileSystem` (so `datasets.load_dataset("org/name")`), diffusers' `custom_pipeline="org/name"` and
`evaluate.load("org/name")` (a Space's script): repo info, tree listings, paths-info and `resolve` downloads (whole
files: no `Range`, no Xet), each at `main` or the repo's current commit, to anyone (a private repo too).

Everything else is a 404 with the Hub's `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`), so the
clients' "not found" logic (a dataset without a loading script, a missing optional file) runs as against the Hub."""

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import datasets

from .loopback import LoopbackServer


SECRET_TOKEN = "hf_dalda_test_SECRET_token_0123456789"
"""The token the uploads under test authenticate with; it must reach the server and no output."""
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
"""Where the Hub's web pages put each repo type, as `huggingface_hub.constants.REPO_TYPES_URL_PREFIXES`."""

REPO = r"(?P<repo>[^/]+/[^/]+)"
API = rf"^/api/(?P<type>models|datasets|spaces)/{REPO}"
ROUTES = {
    "info": re.compile(rf"{API}(?:/revision/(?P<rev>[^/]+))?$"),
    "tree": re.compile(rf"{API}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$"),
    "paths-info": re.compile(rf"{API}/paths-info/(?P<rev>[^/]+)$"),
    "resolve": re.compile(rf"^/(?:(?P<type>datasets|spaces)/)?{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"),
}
"""The download side of the Hub API, by the name `_download` answers it under."""


def git_blob_id(content: bytes) -> str:
    """The file's git object id, which the Hub gives as its `oid` and its `ETag`."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def not_found(code: str, headers: dict[str, str] | None = None) -> tuple[int, dict, dict[str, str]]:
    """The Hub's 404: `code` in `X-Error-Code` is what `huggingface_hub` turns into its typed errors."""
    return 404, {"error": code}, {**(headers or {}), "X-Error-Code": code}


def tree_entry(files: dict[str, bytes], path: str) -> dict:
    """A file or folder as the Hub's `tree` and `paths-info` list it."""
    if path in files:
        return {"type": "file", "path": path, "size": len(files[path]), "oid": git_blob_id(files[path])}
    return {"type": "directory", "path": path, "oid": hashlib.sha1(path.encode()).hexdigest()}


class HubServer(LoopbackServer):
    def __init__(self):
        super().__init__(self._handler())
        self.created: list[dict] = []
        self.repo_files: dict[str, dict[str, bytes]] = {}
        """The files committed to each repo, path -> content, by the repo's API path (`models/org/name`,
        `datasets/org/name`)."""
        self.commits: dict[str, str] = {}
        """Each repo's current commit id: a hash of its files, so that new content is a new revision to caches."""
        self.commit_repos: list[str] = []
        """The API path of each repo committed to, one entry per commit."""
        self.downloads: list[str] = []
        """Each file served by a GET on `resolve`, as `<repo API path>/<file path>`."""
        self.authorizations: set[str] = set()

    @property
    def url(self) -> str:
        return self.address

    @property
    def env(self) -> dict[str, str]:
        """The environment that points `huggingface_hub` in a `dalda` subprocess at this server, with the token."""
        return {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": self.url, "HF_TOKEN": SECRET_TOKEN}

    def client_env(self, home: Path) -> dict[str, str]:
        """`env` for a process that downloads from this server, with every Hugging Face cache under `home`: nothing is
        read from the user's caches (a stale copy would pass for a download) and nothing is left in them."""
        caches = {"HF_HUB_CACHE": "hub", "HF_DATASETS_CACHE": "datasets", "HF_MODULES_CACHE": "modules",
                  "HF_XET_CACHE": "xet"}
        return {**self.env, "HF_DATASETS_OFFLINE": "0", "HF_HOME": str(home),
                **{name: str(home / folder) for name, folder in caches.items()}}

    def run_client(self, script: str, *args, home: Path) -> subprocess.CompletedProcess:
        """Runs the Python `script`, `args` in `sys.argv[1:]`, in a new process with `client_env(home)`, from the
        checkout's root (so it can import `tests.helpers`), and returns what it printed.

        A new process, because `huggingface_hub`, `datasets` and diffusers each copy `HF_ENDPOINT`, `HF_HUB_OFFLINE`
        and their cache folders into module constants when first imported: the environment at start-up points all of
        them at this server, where patching this process would have to find every copy (and would keep the module that
        diffusers imports from the Hub in `sys.modules` for the tests after)."""
        checkout = Path(__file__).resolve().parents[1]
        env = {**os.environ, **self.client_env(home)}
        return subprocess.run(
            [sys.executable, "-c", script, *map(str, args)], cwd=checkout, env=env, capture_output=True, text=True
        )

    def _answer(self, method: str, path: str, body: bytes) -> tuple[int, dict | bytes, dict[str, str]]:
        if method == "POST" and path == "/api/repos/create":
            self.created.append(json.loads(body))
            repo = self.created[-1]
            prefix = URL_PREFIXES[repo.get("type", "model")]
            return 200, {"url": f"{self.url}/{prefix}{repo['organization']}/{repo['name']}"}, {}
        if method == "POST" and path == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}, {}
        if method == "POST" and "/preupload/" in path:
            files = json.loads(body)["files"]
            files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
            return 200, {"files": files}, {}
        if method == "POST" and "/commit/" in path:
            repo_types, repo = path.split("/")[2], "/".join(path.split("/")[3:5])  # /api/<type>s/<org>/<name>/commit/
            files = self.repo_files.setdefault(f"{repo_types}/{repo}", {})
            for line in body.decode().splitlines():
                entry = json.loads(line)
                if entry["key"] == "file":
                    files[entry["value"]["path"]] = base64.b64decode(entry["value"]["content"])
                elif entry["key"] == "deletedFile":  # a `CommitOperationDelete`
                    files.pop(entry["value"]["path"], None)
            commit = hashlib.sha1(json.dumps({p: git_blob_id(c) for p, c in sorted(files.items())}).encode())
            self.commits[f"{repo_types}/{repo}"] = commit.hexdigest()
            self.commit_repos.append(f"{repo_types}/{repo}")
            prefix = URL_PREFIXES[repo_types.removesuffix("s")]
            return 200, {"commitUrl": f"{self.url}/{prefix}{repo}/commit/{commit.hexdigest()}",
                         "commitOid": commit.hexdigest()}, {}
        return self._download(method, path, body)

    def _download(self, method: str, url: str, body: bytes) -> tuple[int, dict | bytes, dict[str, str]]:
        """The Hub's read API on what was committed: `GET /api/<type>s/<repo>[/revision/<rev>]` (repo info),
        `GET .../tree/<rev>[/<dir>]` (a listing, `?recursive=true` for the whole subtree), `POST .../paths-info/<rev>`
        (the entries of the form's `paths`), and `HEAD`/`GET /[<type>s/]<repo>/resolve/<rev>/<path>` (a file)."""
        path, query = urlsplit(url).path, parse_qs(urlsplit(url).query)
        matches = ((name, m) for name, pattern in ROUTES.items() if (m := pattern.match(path)))
        route, match = next(matches, (None, None))
        if route is None or method not in ({"POST"} if route == "paths-info" else {"GET", "HEAD"}):
            return 404, {"error": "not found"}, {}
        repo_key = f"{match['type'] or 'models'}/{match['repo']}"
        if repo_key not in self.repo_files:
            return not_found("RepoNotFound")
        files, commit = self.repo_files[repo_key], self.commits[repo_key]
        if unquote(match["rev"] or "main") not in ("main", commit):
            return not_found("RevisionNotFound")
        headers = {"X-Repo-Commit": commit}

        folders = {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}
        if route == "info":
            siblings = [{"rfilename": p, "size": len(c), "blobId": git_blob_id(c)} for p, c in sorted(files.items())]
            return 200, {"id": match["repo"], "sha": commit, "siblings": siblings}, headers
        if route == "paths-info":
            paths = parse_qs(body.decode())["paths"]
            return 200, [tree_entry(files, p) for p in paths if p in files or p in folders], headers
        if route == "tree":
            folder = unquote(match["path"] or "").strip("/")
            if folder and folder not in folders:
                return not_found("EntryNotFound", headers)
            recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
            below = [p for p in sorted(files.keys() | folders) if not folder or p.startswith(folder + "/")]
            depth = folder.count("/") + 1 if folder else 0
            return 200, [tree_entry(files, p) for p in below if recursive or p.count("/") == depth], headers
        # resolve
        file = unquote(match["path"])
        if file not in files:
            return not_found("EntryNotFound", headers)
        if method == "GET":
            self.downloads.append(f"{repo_key}/{file}")
        return 200, files[file], {**headers, "ETag": f'"{git_blob_id(files[file])}"'}

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, method):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("authorization"):
                    hub.authorizations.add(self.headers["authorization"])
                status, payload, headers = hub._answer(method, self.path, body)
                is_file = isinstance(payload, bytes)
                data = payload if is_file else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/octet-stream" if is_file else "application/json")
                    self.send_header("content-length", str(len(data)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    if method != "HEAD":
                        self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_POST(self):
                self._reply("POST")

            def do_GET(self):
                self._reply("GET")

            def do_HEAD(self):
                self._reply("HEAD")

            def log_message(self, *args):
                pass

        return Handler


LOAD_DATASET = "import sys, datasets; datasets.load_dataset(*sys.argv[2:], split='train').save_to_disk(sys.argv[1])"
"""`datasets.load_dataset(<repo id>[, <configuration>], split="train")`, saved to the folder given first."""


def load_dataset_from(hub: HubServer, home: Path, *args: str) -> datasets.Dataset:
    """`datasets.load_dataset(*args, split="train")` from `hub`, run by `hub.run_client` with its caches under `home`,
    saved there and loaded back here."""
    saved = home / "loaded"
    result = hub.run_client(LOAD_DATASET, saved, *args, home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    return datasets.load_from_disk(str(saved))
