"""The drop-in server's bounds (include/serving_image/tf_serving_server/limits.py) against a real
server in this process: every attack on the REST and gRPC ports gets a bounded answer in bounded
time, with a fixed number of threads, and no client can add or forge a metrics series.

The server runs with small limits so each bound is reached in a few kilobytes and one second.
"""

import json
import re
import socket
import threading
import time
import urllib.request
from concurrent import futures

import grpc
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from savedmodels import make_float_model, make_string_model
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2
from test_serving_server import Client, load_server_module, string_request

METRICS = "/monitoring/prometheus/metrics"
CAP = 64 * 1024  # --max_message_bytes and --rest_api_max_body_bytes
ROWS = 8  # --max_request_batch_size
REST_WORKERS, GRPC_THREADS, TIMEOUT_MS = 4, 2, 2000
TIMEOUT_S = TIMEOUT_MS / 1000
AT_ONCE = TIMEOUT_S / 2  # an answer this fast did not wait for the deadline
HOSTILE = 'x"} 1\nfake 1\n#'  # the label injection of the issue
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Served(Client):
    """One model served in this process by start_servers, within small limits."""

    def __init__(self, module, name, base_path):
        super().__init__(name)
        limits = module.Limits(
            max_message_bytes=CAP,
            rest_api_max_body_bytes=CAP,
            max_request_batch_size=ROWS,
            grpc_max_threads=GRPC_THREADS,
            rest_api_num_threads=REST_WORKERS,
            rest_api_timeout_in_ms=TIMEOUT_MS,
        )
        self.model = module.ServedModel(name, str(base_path), ROWS)
        self.grpc_server, self.httpd = module.start_servers(
            self.model, "127.0.0.1", self.grpc_port, self.rest_port, metrics_path=METRICS, limits=limits
        )
        self.model.load()

    def stop(self):
        self.channel.close()
        self.grpc_server.stop(0)
        self.httpd.shutdown()
        self.httpd.server_close()

    def raw(self, head, body=b"", *, wait=5.0):
        """Send bytes as they are, keep the socket open, and return (status, JSON or None, seconds)."""
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", self.rest_port), timeout=wait) as sock:
            sock.sendall(head.encode("latin-1") + body)
            received = b""
            try:
                while chunk := sock.recv(65536):
                    received += chunk
            except TimeoutError:
                pytest.fail(f"no answer within {wait} s to {head.splitlines()[0]!r}")
        took = time.monotonic() - started
        if not received:
            pytest.fail(f"the connection closed without an answer to {head.splitlines()[0]!r}")
        status = int(received.split(b" ", 2)[1])
        payload = received.split(b"\r\n\r\n", 1)[1]
        return status, json.loads(payload) if payload.startswith(b"{") else None, took

    def metrics(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.rest_port}{METRICS}", timeout=10) as response:
            return response.read().decode()


@pytest.fixture(scope="module")
def module():
    return load_server_module()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    make_string_model(root / "resnet" / "1")
    make_float_model(root / "keras" / "1")
    return root


@pytest.fixture(scope="module")
def resnet(module, models):
    served = Served(module, "resnet", models / "resnet")
    yield served
    served.stop()


def predict_head(headers):
    return f"POST /v1/models/resnet:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n"


BODY = json.dumps({"instances": ["abc"]}).encode()


def samples(text):
    """Every sample of an exposition, as the Prometheus client parses it (raises if it cannot)."""
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


# --- REST: the body ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header, code",
    [
        ("", 411),
        ("Content-Length: -1\r\n", 400),
        ("Content-Length: abc\r\n", 400),
        (f"Content-Length: {CAP + 1}\r\n", 413),
    ],
    ids=["missing", "negative", "not-a-number", "over-the-cap"],
)
def test_a_body_without_a_sound_length_is_refused_before_it_is_read(resnet, header, code):
    """The body is sent but the socket stays open: a server that reads to EOF (-1) or waits for
    the announced bytes never answers."""
    status, payload, took = resnet.raw(predict_head(header), BODY)
    assert (status, took < AT_ONCE) == (code, True), payload
    assert "Content-Length" in payload["error"] or str(CAP) in payload["error"]


@SETTINGS
@given(value=st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=30))
@example(value="+5")
@example(value="1e3")
@example(value=" 5 5")
@example(value="٣")
@example(value="9" * 5000)
def test_any_length_but_a_plain_number_within_the_cap_is_refused_at_once(resnet, value):
    """The class: whatever a Content-Length says, unless it is digits naming <= the cap, the answer
    is 400/411/413 before any body byte is read (none is sent here)."""
    if re.fullmatch(r"[0-9]{1,6}", value.strip()) and int(value) <= CAP:
        return  # a sound length: the server waits for that body
    head = predict_head(f"Content-Length: {value}\r\n".encode().decode("latin-1"))  # UTF-8 on the wire
    status, _, took = resnet.raw(head)
    assert status in (400, 411, 413) and took < AT_ONCE


def test_a_body_that_stops_short_is_cut_off_at_the_deadline(resnet):
    status, payload, took = resnet.raw(predict_head("Content-Length: 100\r\n"), BODY[:10])
    assert status == 408 and "--rest_api_timeout_in_ms" in payload["error"]
    assert TIMEOUT_S <= took < TIMEOUT_S + 2


def test_a_client_trickling_its_request_is_cut_off_at_the_deadline(resnet):
    """Each byte in time does not reset the clock: the whole request has the deadline."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", resnet.rest_port), timeout=5) as sock:
        try:
            for byte in predict_head(f"Content-Length: {len(BODY)}\r\n").encode() * 10:
                sock.send(bytes([byte]))
                time.sleep(0.05)
        except OSError:
            pass  # the server closed it
        else:
            pytest.fail("the server kept reading a request for longer than its deadline")
    assert time.monotonic() - started < TIMEOUT_S + 2


# --- REST: workers ------------------------------------------------------------------------------


def test_200_slow_connections_hold_sockets_not_threads(resnet):
    before = threading.active_count()
    sockets = []
    try:
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", resnet.rest_port), timeout=5)
            sock.sendall(b"POST /v1/models/resnet:predict HTTP/1.1\r\n")  # and then nothing
            sockets.append(sock)
        time.sleep(0.3)
        assert threading.active_count() - before <= REST_WORKERS
    finally:
        for sock in sockets:
            sock.close()
    deadline = time.monotonic() + 10
    while not _answers(resnet):
        assert time.monotonic() < deadline, "the server did not recover once the slow clients left"
        time.sleep(0.1)


def _answers(client):
    try:
        return client.rest("/v1/models/resnet:predict", {"instances": ["abc"]})[0] == 200
    except OSError:  # a connection of the drained backlog
        return False


def test_a_connection_that_finds_every_worker_busy_gets_503(resnet, monkeypatch):
    """Workers busy with slow Predicts: one more connection waits the timeout, then gets 503."""
    real_predict = resnet.model.predict

    def slow_predict(*args, **kwargs):
        time.sleep(TIMEOUT_S + 1.5)  # longer than the next connection waits for a worker
        return real_predict(*args, **kwargs)

    monkeypatch.setattr(resnet.model, "predict", slow_predict)
    head = predict_head(f"Content-Length: {len(BODY)}\r\n")
    with futures.ThreadPoolExecutor(REST_WORKERS) as pool:
        busy = [pool.submit(resnet.raw, head, BODY) for _ in range(REST_WORKERS)]
        time.sleep(0.5)
        status, payload, took = resnet.raw(head, BODY)
        assert status == 503 and "--rest_api_num_threads" in payload["error"]
        assert TIMEOUT_S - 0.6 <= took < TIMEOUT_S + 1.5
        assert [f.result()[0] for f in busy] == [200] * REST_WORKERS


# --- REST: what a body may make the server do --------------------------------------------------

SECRET = "s3cr3t-from-the-body"


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": ["' + SECRET.encode() + b'"',  # cut short
        json.dumps({"instances": [{"image_bytes": {"k": SECRET}}]}).encode(),  # an object for a string
        json.dumps({"instances": [{"b64": SECRET + "!"}]}).encode(),  # not base64
        json.dumps({"signature_name": [SECRET], "instances": ["a"]}).encode(),  # not a string
    ],
    ids=["malformed", "wrong-type", "bad-b64", "signature-not-a-string"],
)
def test_errors_name_the_fault_but_never_echo_the_body(resnet, body):
    status, payload = resnet.rest("/v1/models/resnet:predict", body)
    assert status == 400 and payload["error"] and SECRET not in payload["error"]


def test_json_nested_deeper_than_any_tensor_is_a_400(resnet):
    status, payload = resnet.rest("/v1/models/resnet:predict", b'{"instances": ' + b"[" * (CAP - 100))
    assert (status, payload) == (400, {"error": "JSON Parse error: nested deeper than any tensor"})


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["b64", "image_bytes", "x"]), inner),
    max_leaves=12,
)


@SETTINGS
@given(body=st.one_of(JSON, st.fixed_dictionaries({"instances": JSON}), st.fixed_dictionaries({"inputs": JSON})))
@example(body={"instances": [{"b64": 5}]})
@example(body={"signature_name": {}, "instances": ["a"]})
def test_any_json_body_gets_an_answer_not_a_dropped_connection(resnet, body):
    """The class: whatever JSON a client posts, the server answers 200 or a 4xx with an error."""
    status, payload = resnet.rest("/v1/models/resnet:predict", json.dumps(body).encode())
    assert status == 200 or (400 <= status < 500 and payload["error"])


def test_a_batch_over_the_row_bound_is_refused_before_the_model_runs(resnet):
    status, payload = resnet.rest("/v1/models/resnet:predict", {"instances": [""] * (ROWS + 1)})
    assert status == 400 and "--max_request_batch_size" in payload["error"]
    assert resnet.rest("/v1/models/resnet:predict", {"instances": [""] * ROWS})[0] == 200
    code, details = _rpc_error(resnet, string_request([b""] * (ROWS + 1)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "--max_request_batch_size" in details


# --- gRPC ---------------------------------------------------------------------------------------


def _rpc_error(client, request):
    with pytest.raises(grpc.RpcError) as info:
        client.predict.Predict(request, timeout=10)
    return info.value.code(), info.value.details()


def test_a_grpc_message_over_the_cap_is_refused(resnet):
    code, _ = _rpc_error(resnet, string_request([b"x" * (CAP + 1)]))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert resnet.predict.Predict(string_request([b"x" * (CAP // 2)]), timeout=10).outputs["classes"]


@pytest.mark.parametrize(
    "values",
    [{"dtype": types_pb2.DT_FLOAT, "float_val": [1.0]}, {"dtype": types_pb2.DT_STRING, "string_val": [b"x"]}],
    ids=["float", "string"],
)
def test_a_tensor_declaring_a_shape_beyond_the_cap_is_refused_before_it_is_decoded(resnet, values):
    """One value and a shape of 2 million: decoding repeats the value to fill the shape. (Rank 2,
    so that a server that does decode it refuses the shape before running the model.)"""
    shape = tensor_shape_pb2.TensorShapeProto(dim=[{"size": 1}, {"size": 2_000_000}])
    request = predict_pb2.PredictRequest(model_spec={"name": "resnet"})
    request.inputs["image_bytes"].CopyFrom(tensor_pb2.TensorProto(tensor_shape=shape, **values))
    started = time.monotonic()
    code, details = _rpc_error(resnet, request)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max_message_bytes" in details
    assert time.monotonic() - started < AT_ONCE


def test_grpc_calls_beyond_the_bound_are_refused_and_threads_stay_fixed(resnet, monkeypatch):
    real_predict = resnet.model.predict

    def slow_predict(*args, **kwargs):
        time.sleep(1)
        return real_predict(*args, **kwargs)

    monkeypatch.setattr(resnet.model, "predict", slow_predict)
    before = threading.active_count()
    calls = [resnet.predict.Predict.future(string_request([b"x"]), timeout=20) for _ in range(12)]
    time.sleep(0.5)
    grown = threading.active_count() - before
    codes = []
    for call in calls:
        try:
            call.result()
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as e:
            codes.append(e.code())
    assert grown <= GRPC_THREADS
    assert codes.count(grpc.StatusCode.OK) == 2 * GRPC_THREADS  # running, or waiting for a thread
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 12 - 2 * GRPC_THREADS


# --- metrics ------------------------------------------------------------------------------------


def test_unknown_model_names_answer_not_found_and_add_no_series(resnet):
    assert resnet.predict.Predict(string_request([b"x"]), timeout=10)
    before = samples(resnet.metrics())
    names = [HOSTILE, *(f"random-{i}" for i in range(20))]
    for name in names:
        assert _rpc_error(resnet, string_request([b"x"], name=name))[0] == grpc.StatusCode.NOT_FOUND
    status, _, _ = resnet.raw(
        f'POST /v1/models/x"}}1:predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(BODY)}\r\n\r\n', BODY
    )
    assert status == 404
    after = samples(resnet.metrics())
    assert {s.labels["model_name"] for s in after} == {"resnet"}
    assert [(s.name, s.labels) for s in after] == [(s.name, s.labels) for s in before]


@SETTINGS
@given(name=st.text())
@example(name=HOSTILE)
@example(name="\\")
@example(name='\\"')
def test_any_model_name_renders_as_one_label_value(module, name):
    """The class: whatever the served model is called, the exposition parses, has exactly the
    samples of one model, and each carries the name unchanged."""
    from tf_serving_server.metrics import LATENCY_BOUNDS, Metrics

    metrics = Metrics(name)
    metrics.record(name, "predict", "GRPC", "OK", 12.0)
    parsed = samples(metrics.exposition())
    assert len(parsed) == 1 + len(LATENCY_BOUNDS) + 3  # the count; buckets, +Inf, sum and count
    assert {s.labels["model_name"] for s in parsed} == {name}


def test_a_served_model_named_like_an_injection_is_escaped_on_the_wire(module, models):
    served = Served(module, HOSTILE, models / "keras")
    try:
        request = predict_pb2.PredictRequest(model_spec={"name": HOSTILE})
        request.inputs["input_1"].CopyFrom(tf.make_tensor_proto(np.ones([1, 8, 8, 3], np.float32)))
        assert served.predict.Predict(request, timeout=10).outputs
        parsed = samples(served.metrics())
        assert {s.labels["model_name"] for s in parsed} == {HOSTILE}
        assert not [s for s in parsed if s.name.startswith("fake")]
    finally:
        served.stop()


def test_the_limit_flags_reach_the_server(module):
    from tf_serving_server.main import limits_of

    args = module.parse_args(["--max_message_bytes=1024", "--rest_api_timeout_in_ms=500", "--grpc_max_threads=3"])
    limits = limits_of(args)
    assert (limits.max_message_bytes, limits.rest_timeout_s, limits.grpc_max_concurrent_rpcs) == (1024, 0.5, 6)
    assert args.ignored == []
    with pytest.raises(ValueError, match="--rest_api_num_threads=0"):
        limits_of(module.parse_args(["--rest_api_num_threads=0"]))
