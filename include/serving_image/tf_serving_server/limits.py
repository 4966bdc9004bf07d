"""The bounds on what one client can make the server hold: bytes, rows, threads and time.

Invariant: no request makes the server read, allocate or answer more than these bounds allow,
and the number of threads serving clients is fixed at start, whatever the clients send.

How the real ``tensorflow_model_server`` bounds the same things, and where this server differs:

* gRPC messages: the real server sets ``SetMaxMessageSize(INT32_MAX)`` (2 GiB) both ways. Here
  ``--max_message_bytes`` (64 MiB by default) bounds a request and a response: a pod has a
  memory limit of a few GiB (``sizing``), so a 2 GiB request would kill it. A larger request
  gets RESOURCE_EXHAUSTED before any of it reaches the model.
* REST body: the real server's HTTP layer (libevent's evhttp, no ``evhttp_set_max_body_size``)
  has no body limit, only ``--rest_api_timeout_in_ms`` (30 s), and reads bodies in its event
  loop, holding no thread. Here a body needs a ``Content-Length`` of at most
  ``--rest_api_max_body_bytes`` (16 MiB by default; 411 without one, 400 when it is not a
  number, 413 when larger), checked before a byte of it is read. Smaller than a gRPC message
  because JSON costs more to hold: measured here, a body peaks at 6x (integers), 9x (floats)
  and 13x (short strings) its size once parsed and made an array; a resnet JPEG is ~130 KB
  as base64, so 16 MiB still carries a hundred of them.
* Threads: the real server has ``--rest_api_num_threads`` and ``--grpc_max_threads`` (4 x the
  CPUs by default); so does this one. At most ``2 x --grpc_max_threads`` calls are accepted at
  once (the rest get RESOURCE_EXHAUSTED at once): the real server queues them in gRPC's
  completion queues instead. REST connections beyond the workers wait in the listen backlog,
  and get 503 after the timeout.
* Memory, so: what requests hold at once is bounded by about 2 x gRPC threads x
  ``--max_message_bytes`` + 13 x REST threads x ``--rest_api_max_body_bytes``, a worst case to
  weigh against the pod's memory limit; lower the flags (or the threads) where requests are small.
* Time: ``--rest_api_timeout_in_ms`` is the deadline for a REST connection to send its request
  and read the answer (a slow client cannot hold a worker longer). gRPC clients set deadlines.
* Rows: ``--max_request_batch_size`` (256) bounds the first dimension of every input of a
  Predict, as the real server's batching refuses a task larger than ``max_batch_size``: one
  short request (``"instances": ["", "", ...]``) would otherwise make the model compute and
  answer kilobytes per row. A tensor's declared shape is bounded by ``--max_message_bytes`` too
  (a proto may declare a shape far larger than its values, which decoding repeats to fill it).
"""

import os
from dataclasses import dataclass

MIB = 1 << 20
DEFAULT_MAX_MESSAGE_BYTES = 64 * MIB
DEFAULT_REST_MAX_BODY_BYTES = 16 * MIB
DEFAULT_MAX_REQUEST_BATCH_SIZE = 256
DEFAULT_THREADS = 4 * (os.cpu_count() or 1)  # the real server's 4 x NumSchedulableCPUs()
DEFAULT_REST_TIMEOUT_MS = 30_000  # the real server's --rest_api_timeout_in_ms


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    rest_api_max_body_bytes: int = DEFAULT_REST_MAX_BODY_BYTES
    max_request_batch_size: int = DEFAULT_MAX_REQUEST_BATCH_SIZE
    grpc_max_threads: int = DEFAULT_THREADS
    rest_api_num_threads: int = DEFAULT_THREADS
    rest_api_timeout_in_ms: int = DEFAULT_REST_TIMEOUT_MS

    def __post_init__(self):
        for name, value in vars(self).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name}={value!r}: need a whole number >= 1")

    @property
    def grpc_max_concurrent_rpcs(self):
        """Calls in progress or waiting for a thread; gRPC answers RESOURCE_EXHAUSTED beyond."""
        return 2 * self.grpc_max_threads

    @property
    def rest_timeout_s(self):
        return self.rest_api_timeout_in_ms / 1000
