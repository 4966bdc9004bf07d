"""The REST port's HTTP layer: a fixed pool of workers, a deadline per connection, bounded bodies.

Invariants (the bounds are in limits.py):

* at most ``rest_api_num_threads`` connections are served at once; the others wait for a worker
  in the kernel's listen backlog (256 deep), and one that waited the timeout gets 503 (its unread
  request makes the close a reset, which a client may see instead). So 200 slow clients hold 200
  sockets, not 200 threads;
* a connection has ``rest_api_timeout_in_ms`` to send its whole request (a client trickling a
  byte at a time does not reset the clock) and as long again to take the answer, then it is
  closed;
* a body is read only with a ``Content-Length`` that is a plain decimal number of at most
  ``rest_api_max_body_bytes``, and never past it: refused with 411, 400 or 413 before reading.
"""

import io
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .model import log
from .rest_api import answer

_DIGITS = re.compile(r"[0-9]+")


class Refused(Exception):
    """A request refused at the HTTP layer, with its status code."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, message


class DeadlineReader(io.RawIOBase):
    """The connection's bytes, each read given only the time left until ``deadline``."""

    def __init__(self, connection, deadline):
        super().__init__()
        self.connection, self.deadline = connection, deadline

    def readable(self):
        return True

    def readinto(self, buffer):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive within --rest_api_timeout_in_ms")
        self.connection.settimeout(left)
        return self.connection.recv_into(buffer)


def read_body(headers, rfile, max_bytes):
    """The body its ``Content-Length`` announces; Refused unless that is a number <= max_bytes."""
    if headers.get("Transfer-Encoding") is not None:
        raise Refused(411, "Transfer-Encoding is not accepted: send the body with a Content-Length")
    values = headers.get_all("Content-Length") or []
    if not values:
        raise Refused(411, "a POST needs a Content-Length header")
    value = values[0].strip()
    if len(values) > 1 or not _DIGITS.fullmatch(value):
        raise Refused(400, "Content-Length must be one decimal number of bytes")
    if len(value) > len(str(max_bytes)) or int(value) > max_bytes:
        raise Refused(
            413, f"the body is larger than {max_bytes} bytes (--rest_api_max_body_bytes): send a smaller batch"
        )
    length = int(value)
    data = rfile.read(length)
    if len(data) < length:
        raise Refused(400, f"the body ended after {len(data)} of the {length} bytes its Content-Length announced")
    return data


class BoundedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, but at most ``workers`` of them; the rest wait, then get 503."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 256  # connections waiting for a worker sit in the kernel, not in threads

    def __init__(self, address, handler, *, workers, wait_s):
        super().__init__(address, handler)
        self._workers, self._wait_s = threading.BoundedSemaphore(workers), wait_s

    def process_request(self, request, client_address):
        if not self._workers.acquire(timeout=self._wait_s):
            _busy(request, self._wait_s)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._workers.release()  # no thread started: it would never release its worker
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._workers.release()

    def handle_error(self, request, client_address):
        """One line naming the error's type (not its text, which may hold the request), and none for a
        client that left or stalled mid-answer: clients cannot flood the log."""
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            log.error("REST request from %s failed with %s", client_address[0], type(error).__name__)


def _busy(connection, wait_s):
    body = json.dumps({"error": f"all REST workers stayed busy for {wait_s:g} s (--rest_api_num_threads): retry"})
    head = f"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    try:
        connection.settimeout(0)  # a fresh socket's send buffer takes it whole; never wait here
        connection.send((head + body).encode())
    except OSError:
        pass  # the client is gone or not reading: it is closed either way


def make_rest_handler(model, metrics_path, limits):
    """The REST API, and the Prometheus metrics at ``metrics_path`` (None: off)."""

    class Handler(BaseHTTPRequestHandler):
        """The REST API; errors are {"error": ...} with the real server's HTTP codes."""

        def setup(self):
            super().setup()
            self.rfile.close()  # replaced: the socket closes only once every file over it has
            self.rfile = io.BufferedReader(
                DeadlineReader(self.connection, time.monotonic() + limits.rest_timeout_s), 64 * 1024
            )

        def _handle(self, method):
            if metrics_path and method == "GET" and self.path.split("?", 1)[0] == metrics_path:
                text = model.metrics.exposition().encode("utf-8", "backslashreplace")
                return self._send(200, text, "text/plain; version=0.0.4")
            try:
                body = read_body(self.headers, self.rfile, limits.rest_api_max_body_bytes) if method == "POST" else b""
            except Refused as e:
                return self._send(e.code, json.dumps({"error": e.message}).encode(), "application/json")
            except TimeoutError:
                message = "the body did not arrive within --rest_api_timeout_in_ms"
                return self._send(408, json.dumps({"error": message}).encode(), "application/json")
            code, payload = answer(model, method, self.path, body)
            self._send(code, json.dumps(payload).encode(), "application/json")

        def _send(self, code, data, content_type):
            self.connection.settimeout(limits.rest_timeout_s)  # for the whole answer (sendall)
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._handle("GET")

        def do_POST(self):
            self._handle("POST")

        def log_message(self, *args):  # the real server does not log each request
            pass

    return Handler
