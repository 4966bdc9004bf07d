"""A loopback HTTP server that serves files and records every request: the model host of the tests."""

from __future__ import annotations

import base64
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Recorder(ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 that records every request line and serves ``files``."""

    def __init__(self, address: tuple[str, int] = ("127.0.0.1", 0)):
        self.requests: list[str] = []
        self.hosts: list[str | None] = []  # the Host header of each request
        self.files: dict[str, bytes] = {}
        self.redirects: dict[str, str] = {}
        self.token: str | None = None  # when set, a request must carry it (query or user part) or get 403
        self.refused: list[str] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, body: bool):
                recorder.requests.append(f"{self.command} {self.path}")
                recorder.hosts.append(self.headers.get("Host"))
                if recorder.token and not self._carries(recorder.token):
                    recorder.refused.append(f"{self.command} {self.path}")
                    self.send_response(403)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path = self.path.split("?")[0]
                if path in recorder.redirects:
                    self.send_response(302)
                    self.send_header("Location", recorder.redirects[path])
                    self.end_headers()
                    return
                data = recorder.files.get(path)
                self.send_response(200 if data is not None else 404)
                self.send_header("Content-Length", str(len(data or b"")))
                self.end_headers()
                if body and data:
                    self.wfile.write(data)

            def _carries(self, token: str) -> bool:
                basic = base64.b64encode(f"{token}:".encode()).decode()
                return f"={token}" in self.path or self.headers.get("Authorization") == f"Basic {basic}"

            def do_GET(self):
                self._answer(True)

            def do_HEAD(self):
                self._answer(False)

            def log_message(self, *args):
                pass

        super().__init__(address, Handler)
        self.base = f"http://{address[0]}:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self):
        self.shutdown()
        self.server_close()
