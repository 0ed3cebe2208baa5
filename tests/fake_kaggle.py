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
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reset(self) -> None:
        self.requests.clear()
        self.zip_bytes, self.fail = b"", {}

    def calls(self, name: str) -> list[bytes]:
        """Bodies of the requests whose path ends with ``name``."""
        return [body for _, path, body in self.requests if path.endswith(name)]

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
                self._json(200, {"message": "Successfully submitted", "ref": 42})
            else:
                self._json(404, {"code": 404, "message": f"fake: no {name}"})

        do_GET = do_POST = do_PUT = _handle

    return Handler
