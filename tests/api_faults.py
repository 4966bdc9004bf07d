"""A fault-injecting proxy in front of the real API server, for what a cluster will not do on
demand: 429 and 5xx storms. Everything else passes through to ``make cluster``'s API server
unchanged, with the client's own credentials (its bearer token), so RBAC and the audit log see
the real caller.

Clients talk plain HTTP to ``proxy.url`` (127.0.0.1); the proxy talks TLS to the API server.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from local_cluster import API_HOST, CA_CERT

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host", "content-length"}


@dataclass
class Fault:
    method: str
    path: re.Pattern
    status: int
    times: int
    retry_after: int = 0


class FaultProxy:
    def __init__(self):
        self.faults: list[Fault] = []
        self.injected: list[str] = []  # "METHOD path -> status", in order
        self._lock = threading.Lock()
        context = ssl.create_default_context(cafile=str(CA_CERT))
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                fault = proxy._take(self.command, self.path)
                if fault is not None:
                    return self._reply(
                        fault.status,
                        json.dumps(
                            {
                                "kind": "Status",
                                "apiVersion": "v1",
                                "status": "Failure",
                                "code": fault.status,
                                "reason": "TooManyRequests" if fault.status == 429 else "InternalError",
                                "message": f"injected by the test's fault proxy (HTTP {fault.status})",
                            }
                        ).encode(),
                        {"Content-Type": "application/json", "Retry-After": str(fault.retry_after)},
                    )
                upstream = http.client.HTTPSConnection(API_HOST, 6443, context=context, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                upstream.request(self.command, self.path, body=body, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                reply_headers = {k: v for k, v in answer.getheaders() if k.lower() not in HOP_BY_HOP}
                upstream.close()
                self._reply(answer.status, data, reply_headers)

            def _reply(self, status: int, data: bytes, headers: dict):
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def fail(self, method: str, path: str, status: int, *, times: int = 1, retry_after: int = 0) -> None:
        """Answer the next ``times`` requests matching ``method`` and the ``path`` regex with
        ``status`` and ``Retry-After: retry_after`` (the API server sends one with its 429s)."""
        with self._lock:
            self.faults.append(Fault(method, re.compile(path), status, times, retry_after))

    def _take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and fault.method == method and fault.path.search(path.split("?")[0]):
                    fault.times -= 1
                    self.injected.append(f"{method} {path.split('?')[0]} -> {fault.status}")
                    return fault
        return None

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
