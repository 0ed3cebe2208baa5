"""A fake Kaggle API on 127.0.0.1 that the real, unpatched ``kaggle`` client talks to through HTTP_PROXY.

With ``KAGGLE_API_ENVIRONMENT=LOCALHOST`` the client sends every call to ``http://localhost``; the proxy setting
routes it here as an absolute-form request (``POST http://localhost/api/v1/<service>/<Method>``).
"""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit


class FakeKaggle:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, bytes]] = []  # (HTTP method, path, body)
        self.zip_bytes = b""
        self.fail: dict[str, int] = {}  # API method name -> HTTP status to answer instead
        self._state()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _state(self) -> None:
        self.pending_polls = 0  # ListSubmissions answers PENDING this many times, then COMPLETE
        self.score = "0.91234"
        self.description = "lean convnext"  # the last submission's description (CreateSubmission sets it)
        self.listing: list[dict] | None = None  # when set, ListSubmissions answers these rows (Kaggle's field names)
        self.submission_error = ""  # when set, the submission ends in ERROR with this description
        self.datasets: set[str] = set()  # owner/slug of the datasets that exist (GetDatasetStatus answers READY)
        self.kernel_status = "COMPLETE"
        self.outputs: dict[str, bytes] = {}  # kernel output files: name -> content

    def reset(self) -> None:
        self.requests.clear()
        self.zip_bytes, self.fail = b"", {}
        self._state()

    def calls(self, name: str) -> list[bytes]:
        """Bodies of the requests whose path ends with ``name``."""
        return [body for _, path, body in self.requests if path.endswith(name)]

    def listed_submissions(self) -> list[dict]:
        """``listing`` when set; else the one submission (ref 42): PENDING for ``pending_polls`` listings, then COMPLETE
        (or ERROR)."""
        if self.listing is not None:
            return self.listing
        polls = sum(path.endswith("ListSubmissions") for _, path, _ in self.requests)
        row = {"ref": 42, "fileName": "submission.csv", "date": "2026-01-02T03:04:05Z", "description": self.description}
        if polls <= self.pending_polls:
            return [{**row, "status": "PENDING"}]
        if self.submission_error:
            return [{**row, "status": "ERROR", "errorDescription": self.submission_error}]
        return [{**row, "status": "COMPLETE", "publicScore": self.score, "privateScore": ""}]

    def env(self, tmp: Path, port: int | None = None) -> dict[str, str]:
        """Environment for a client process: this server as proxy, throwaway credentials, a temporary home."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_") and "proxy" not in k.lower()}
        (tmp / "home").mkdir(exist_ok=True)
        return {
            **env,
            "HOME": str(tmp / "home"),
            "KAGGLE_CONFIG_DIR": str(tmp / "kaggle-config"),
            "KAGGLE_USERNAME": "tester",
            "KAGGLE_KEY": "not-a-real-key",
            "KAGGLE_API_ENVIRONMENT": "LOCALHOST",
            "HTTP_PROXY": f"http://127.0.0.1:{port or self.port}",
            "TMPDIR": str(tmp),  # the client keeps resumable-upload state in the temporary folder
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(fake: FakeKaggle) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = b""
                while size := int(self.rfile.readline().strip() or b"0", 16):
                    data += self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()
                return data
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, status: int, body: bytes = b"", kind: str = "application/json", **headers: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, data: dict) -> None:
            self._send(status, json.dumps(data).encode())

        def _handle(self) -> None:
            path = urlsplit(self.path).path
            body = self._body()
            fake.requests.append((self.command, path, body))
            name = path.rsplit("/", 1)[-1]
            if name in fake.fail:
                self._json(fake.fail[name], {"code": fake.fail[name], "message": f"fake {fake.fail[name]}"})
            elif name == "DownloadDataFiles":
                slug = json.loads(body)["competitionName"]
                self._send(302, kind="text/plain", Location=f"http://localhost/files/{slug}.zip")
            elif path.startswith("/files/"):
                self._send(200, fake.zip_bytes, "application/zip")
            elif name == "StartSubmissionUpload":
                self._json(200, {"token": "blob-token-1", "createUrl": "http://localhost/upload/blob-token-1"})
            elif path.startswith("/upload/"):
                self._json(200, {})
            elif name == "CreateSubmission":
                fake.description = json.loads(body).get("submissionDescription") or fake.description
                self._json(200, {"message": "Successfully submitted", "ref": 42})
            elif name == "ListSubmissions":
                self._json(200, {"submissions": fake.listed_submissions()})
            elif name == "StartBlobUpload":
                token = f"blob-{json.loads(body)['name']}"
                self._json(200, {"token": token, "createUrl": f"http://localhost/upload/{token}"})
            elif name == "GetDatasetStatus":
                ref = "{ownerSlug}/{datasetSlug}".format(**json.loads(body))
                if ref in fake.datasets:
                    self._json(200, {"status": "READY"})
                else:
                    self._json(404, {"code": 404, "message": f"fake: no dataset {ref}"})
            elif name in ("CreateDataset", "CreateDatasetVersion"):
                data = json.loads(body)
                ref = f"{data['ownerSlug']}/{data.get('slug') or data.get('datasetSlug')}"
                fake.datasets.add(ref)
                self._json(200, {"ref": ref, "url": f"https://www.kaggle.com/datasets/{ref}", "status": "ok"})
            elif name == "SaveKernel":
                slug = json.loads(body)["slug"]
                self._json(
                    200, {"ref": f"/code/{slug}", "url": f"https://www.kaggle.com/code/{slug}", "versionNumber": 1}
                )
            elif name == "GetKernelSessionStatus":
                self._json(200, {"status": fake.kernel_status})
            elif name == "ListKernelSessionOutput":
                files = [{"fileName": n, "url": f"http://localhost/output/{n}"} for n in fake.outputs]
                self._json(200, {"files": files, "log": "[]"})
            elif path.startswith("/output/"):
                self._send(200, fake.outputs[path.rsplit("/", 1)[-1]], "application/octet-stream")
            else:
                self._json(404, {"code": 404, "message": f"fake: no {name}"})

        do_GET = do_POST = do_PUT = _handle

    return Handler
