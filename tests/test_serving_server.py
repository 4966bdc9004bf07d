"""Tests of include/serving_image/server.py, the stand-in for tensorflow_model_server.

Tiny SavedModels come from tests/savedmodels.py. The string ("resnet") model is served by a real
server.py subprocess (CLI, ports, SIGTERM), shared by the module. Other models are served
in-process by the same code (`start_servers`), which skips a second TensorFlow import (10+ s).
"""

import base64
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

sys.path.insert(0, str(Path(__file__).parent))
from savedmodels import (
    make_float_model,
    make_model_without_default_signature,
    make_string_model,
    string_model_class,
)

ROOT = Path(__file__).resolve().parents[1]
SERVER_DIR = ROOT / "include" / "serving_image"  # the tf_serving_server package
STARTUP_TIMEOUT = 90  # seconds; importing TensorFlow on a busy 2-core machine can take 20 s
State = get_model_status_pb2.ModelVersionStatus
STRING_VERSION = 7
CONNECTION_AGE_MS = 1500
MONITORING_CONFIG = 'prometheus_config {\n  enable: true,\n  path: "/monitoring/prometheus/metrics"\n}\n'
BATCHING = "max_batch_size { value: 32 }\nbatch_timeout_micros { value: 1000 }\nnum_batch_threads { value: 2 }\n"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_server_module():
    sys.path.insert(0, str(SERVER_DIR))
    return importlib.import_module("tf_serving_server")


class Client:
    """gRPC stubs and a small REST client for a server on 127.0.0.1."""

    def __init__(self, model_name):
        self.model_name, self.grpc_port, self.rest_port = model_name, free_port(), free_port()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        self.predict = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def status(self, name=None, version=None):
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name or self.model_name
        if version is not None:
            request.model_spec.version.value = version
        return self.models.GetModelStatus(request, timeout=5)

    def rest(self, path, body=None):
        """(HTTP status, JSON) of GET path, or POST of body."""
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        request = urllib.request.Request(f"http://127.0.0.1:{self.rest_port}{path}", data=data)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)


class InProcessServer(Client):
    """server.py's ServedModel and servers, run in this process."""

    def __init__(self, module, model_name, base_path, load=True):
        super().__init__(model_name)
        self.model = module.ServedModel(model_name, str(base_path))
        self.servers = module.start_servers(self.model, "127.0.0.1", self.grpc_port, self.rest_port)
        if load:
            self.model.load()

    def stop(self):
        self.channel.close()
        grpc_server, httpd = self.servers
        grpc_server.stop(0)
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """resnet: string model at versions 1 (empty) and 7; keras: float model; empty: no version."""
    root = tmp_path_factory.mktemp("models")
    make_string_model(root / "resnet" / str(STRING_VERSION))
    write_warmup(root / "resnet" / str(STRING_VERSION), [string_request([b"warm"]), string_request([b"up", b"2"])])
    (root / "resnet" / "1").mkdir()  # lower version: must be ignored
    (root / "resnet" / "99-tmp").mkdir()  # not numeric: must be ignored
    make_float_model(root / "keras" / "3")
    (root / "empty").mkdir()
    return root


@pytest.fixture(scope="module")
def resnet(models):
    """The server as a subprocess (python -m tf_serving_server); stopping it with SIGTERM must exit 0 at once."""
    client = Client("resnet")
    log_path = models / "resnet.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tf_serving_server",
                f"--port={client.grpc_port}",
                f"--rest_api_port={client.rest_port}",
                "--host=127.0.0.1",
                "--model_name=resnet",
                f"--model_base_path={models / 'resnet'}",
                f"--grpc_channel_arguments=grpc.max_connection_age_ms={CONNECTION_AGE_MS},"
                "grpc.max_connection_age_grace_ms=500",
                f"--monitoring_config_file={write(models / 'monitoring.config', MONITORING_CONFIG)}",
                "--enable_batching",
                f"--batching_parameters_file={write(models / 'batching.config', BATCHING)}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=SERVER_DIR,
        )
    try:
        deadline, client.seen_states = time.monotonic() + STARTUP_TIMEOUT, []
        while not client.seen_states or client.seen_states[-1] == State.LOADING:
            assert time.monotonic() < deadline, f"still loading after {STARTUP_TIMEOUT} s"
            assert proc.poll() is None, f"server exited: {log_path.read_text()[-2000:]}"
            try:
                client.seen_states.append(client.status().model_version_status[0].state)
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE, e  # port not open yet
            time.sleep(0.2)
        client.log_path = log_path
        yield client
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert "received signal 15, exiting" in log_path.read_text()
    finally:
        client.channel.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server_module():
    return load_server_module()


@pytest.fixture(scope="module")
def servers(server_module, models):
    started = {name: InProcessServer(server_module, name, models / name) for name in ("keras", "empty")}
    yield started
    for server in started.values():
        server.stop()


def write(path, text):
    path.write_text(text)
    return path


def write_warmup(version_dir, requests):
    """``assets.extra/tf_serving_warmup_requests`` as TF Serving reads it: a TFRecord of PredictionLog."""
    path = version_dir / "assets.extra" / "tf_serving_warmup_requests"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for request in requests:
            entry = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(entry.SerializeToString())


def string_request(values, name="resnet", **spec):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    for field, value in spec.items():
        if field == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, field, value)
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(values, shape=[len(values)]))
    return request


def rpc_error(call, request):
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=10)
    return info.value.code(), info.value.details()


# --- gRPC ModelService -------------------------------------------------------------------------


def test_status_available_serves_highest_numeric_version(resnet):
    assert set(resnet.seen_states) <= {State.LOADING, State.AVAILABLE}
    (status,) = resnet.status().model_version_status
    assert (status.version, status.state, status.status.error_code) == (STRING_VERSION, State.AVAILABLE, 0)
    assert resnet.status(version=STRING_VERSION).model_version_status[0].state == State.AVAILABLE


def test_status_errors(resnet):
    assert rpc_error(
        resnet.models.GetModelStatus, get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "nope"})
    ) == (grpc.StatusCode.NOT_FOUND, "Could not find any versions of model nope")
    with pytest.raises(grpc.RpcError) as info:
        resnet.status(version=1)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_no_version_directory_ends_with_error(servers):
    empty = servers["empty"]
    (status,) = empty.status().model_version_status
    assert status.state == State.END
    assert status.status.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "No versions of servable empty found" in status.status.error_message
    code, body = empty.rest("/v1/models/empty")
    assert code == 200 and body["model_version_status"][0]["state"] == "END"
    assert rpc_error(empty.predict.Predict, string_request([b"x"], name="empty")) == (
        grpc.StatusCode.NOT_FOUND,
        "Servable not found for request: Latest(empty)",
    )


# --- gRPC PredictionService --------------------------------------------------------------------


def test_predict_like_the_tutorial_client(resnet):
    images = [b"fake jpeg bytes", b"x" * 2000]
    response = resnet.predict.Predict(string_request(images, signature_name="serving_default"), timeout=10)
    assert tf.make_ndarray(response.outputs["classes"]).tolist() == [string_model_class(i) for i in images]
    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    assert probabilities.shape == (2, 1001) and probabilities.dtype == np.float32
    assert (response.model_spec.name, response.model_spec.version.value, response.model_spec.signature_name) == (
        "resnet",
        STRING_VERSION,
        "serving_default",
    )


def test_predict_specific_version_and_output_filter(resnet):
    request = string_request([b"abc"], version=STRING_VERSION)
    request.output_filter.append("classes")
    response = resnet.predict.Predict(request, timeout=10)
    assert list(response.outputs) == ["classes"]


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            lambda r: setattr(r.model_spec, "name", "other"),
            (grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(other)"),
        ),
        (
            lambda r: r.model_spec.version.__setattr__("value", 1),
            (grpc.StatusCode.NOT_FOUND, "Servable not found for request: Specific(resnet, 1)"),
        ),
        (
            lambda r: setattr(r.model_spec, "signature_name", "x"),
            (grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "x" not found.'),
        ),
        (
            lambda r: r.inputs["input_1"].CopyFrom(tf.make_tensor_proto(np.zeros([1, 8, 8, 3], np.float32))),
            (
                grpc.StatusCode.INVALID_ARGUMENT,
                "input tensor alias not found in signature: input_1. Inputs expected to be in the set {image_bytes}.",
            ),
        ),
        (
            lambda r: r.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(np.zeros([1], np.float32))),
            (grpc.StatusCode.INVALID_ARGUMENT, "Expects arg[0] to be string but float is provided"),
        ),
        (lambda r: r.inputs.clear(), (grpc.StatusCode.INVALID_ARGUMENT, None)),
        (lambda r: r.output_filter.append("logits"), (grpc.StatusCode.INVALID_ARGUMENT, None)),
    ],
    ids=["model-name", "version", "signature", "alias", "dtype", "missing", "output-filter"],
)
def test_predict_errors_match_the_real_server(resnet, change, expected):
    request = string_request([b"abc"])
    change(request)
    code, details = rpc_error(resnet.predict.Predict, request)
    assert code == expected[0]
    if expected[1] is not None:
        assert details == expected[1]


def test_get_model_metadata_packs_a_signature_def_map(resnet):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "resnet"
    response = resnet.predict.GetModelMetadata(request, timeout=10)
    assert response.model_spec.version.value == STRING_VERSION
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    signature = signature_map.signature_def["serving_default"]
    assert signature.inputs["image_bytes"].dtype == tf.string.as_datatype_enum
    assert set(signature.outputs) == {"classes", "probabilities"}


def test_loading_state_is_visible_before_the_model_is_available(server_module, models):
    """The deliberate deviation: ports open before the load, requests meanwhile get UNAVAILABLE."""
    server = InProcessServer(server_module, "keras", models / "keras", load=False)
    try:
        assert server.status().model_version_status[0].state == State.LOADING
        assert server.rest("/v1/models/keras")[0] == 200
        request = predict_pb2.PredictRequest(model_spec={"name": "keras"})
        assert rpc_error(server.predict.Predict, request)[0] == grpc.StatusCode.UNAVAILABLE
        server.model.load()
        (status,) = server.status().model_version_status
        assert (status.version, status.state) == (3, State.AVAILABLE)
    finally:
        server.stop()


def test_classify_is_unimplemented(resnet):
    code, _ = rpc_error(resnet.predict.Classify, classification_pb2.ClassificationRequest())
    assert code == grpc.StatusCode.UNIMPLEMENTED


def test_float_model_predict(servers):
    keras = servers["keras"]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "keras"
    request.inputs["input_1"].CopyFrom(tf.make_tensor_proto(np.ones([2, 8, 8, 3], np.float32)))
    response = keras.predict.Predict(request, timeout=10)
    out = tf.make_ndarray(response.outputs["activation_49"])
    assert out.shape == (2, 1001) and np.allclose(out.sum(axis=1), 1.0, atol=1e-4)
    assert response.model_spec.version.value == 3


# --- REST ----------------------------------------------------------------------------------------


def test_rest_status_and_metadata(resnet):
    assert resnet.rest("/v1/models/resnet") == (
        200,
        {
            "model_version_status": [
                {
                    "version": str(STRING_VERSION),
                    "state": "AVAILABLE",
                    "status": {"error_code": "OK", "error_message": ""},
                }
            ]
        },
    )
    assert resnet.rest(f"/v1/models/resnet/versions/{STRING_VERSION}")[0] == 200
    assert resnet.rest("/v1/models/nope") == (404, {"error": "Could not find any versions of model nope"})
    code, body = resnet.rest("/v1/models/resnet/metadata")
    assert code == 200 and body["model_spec"]["version"] == str(STRING_VERSION)
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["image_bytes"]["dtype"] == "DT_STRING"


def test_rest_predict_row_format_with_b64(resnet):
    image = b"\xff\xd8 not really a jpeg"
    code, body = resnet.rest(
        "/v1/models/resnet:predict", {"instances": [{"b64": base64.b64encode(image).decode()}, "text"]}
    )
    assert code == 200, body
    first, second = body["predictions"]
    assert first["classes"] == string_model_class(image) and second["classes"] == 4
    assert len(first["probabilities"]) == 1001


def test_rest_predict_named_row_and_columnar_formats(resnet):
    code, body = resnet.rest(
        f"/v1/models/resnet/versions/{STRING_VERSION}:predict",
        {"signature_name": "serving_default", "instances": [{"image_bytes": "ab"}]},
    )
    assert code == 200 and body["predictions"][0]["classes"] == 2
    code, body = resnet.rest("/v1/models/resnet:predict", {"inputs": {"image_bytes": ["abc", "de"]}})
    assert code == 200 and body["outputs"]["classes"] == [3, 2]


def test_rest_predict_single_output_is_a_plain_list(servers):
    code, body = servers["keras"].rest("/v1/models/keras:predict", {"instances": np.zeros([1, 8, 8, 3]).tolist()})
    assert code == 200 and len(body["predictions"]) == 1 and len(body["predictions"][0]) == 1001


@pytest.mark.parametrize(
    "path, body, code",
    [
        ("/v1/models/resnet/versions/1:predict", {"instances": ["a"]}, 404),
        ("/v1/models/nope:predict", {"instances": ["a"]}, 404),
        ("/v1/models/resnet:predict", {"instances": [1.5]}, 400),
        ("/v1/models/resnet:predict", {"signature_name": "x", "instances": ["a"]}, 400),
        ("/v1/models/resnet:predict", {"instances": [{"input_1": 1.0}]}, 400),
        ("/v1/models/resnet:predict", {"nothing": []}, 400),
        ("/v1/models/resnet:predict", b"{not json", 400),
    ],
    ids=["version", "model", "dtype", "signature", "alias", "no-instances", "bad-json"],
)
def test_rest_predict_errors(resnet, path, body, code):
    status, answer = resnet.rest(path, body)
    assert status == code and answer["error"]


# --- loading (in-process) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prepare, message",
    [
        (lambda d: d.mkdir(parents=True), "Could not find SavedModel .pb"),
        (make_model_without_default_signature, 'Serving signature key "serving_default" not found'),
        (lambda d: (d.mkdir(parents=True), (d / "saved_model.pb").write_bytes(b"garbage")), ""),
    ],
    ids=["no-saved-model-pb", "no-serving-default", "corrupt"],
)
def test_load_failures_end_with_an_error(server_module, tmp_path, prepare, message):
    prepare(tmp_path / "m" / "5")
    model = server_module.ServedModel("m", str(tmp_path / "m"))
    model.load()
    version, state, code, error = model.status("m")
    assert (version, state) == (5, State.END) and code != grpc.StatusCode.OK
    assert message in error and error


def test_failed_load_is_retried_while_loading_then_ends(server_module, tmp_path):
    """--max_num_load_retries: LOADING between attempts, END after the last; a fix in between loads."""
    base = tmp_path / "m"
    (base / "3").mkdir(parents=True)  # no saved_model.pb yet
    model = server_module.ServedModel("m", str(base))
    import threading

    loader = threading.Thread(target=model.load, args=(50, 0.1), daemon=True)
    loader.start()
    time.sleep(0.5)
    assert model.status("m")[1] == State.LOADING and loader.is_alive()
    make_string_model(base / "3" / "fixed")  # the files appear, as from a slow copy
    for name in os.listdir(base / "3" / "fixed"):
        os.rename(base / "3" / "fixed" / name, base / "3" / name)
    loader.join(timeout=60)
    assert model.status("m")[1] == State.AVAILABLE

    (tmp_path / "n" / "4").mkdir(parents=True)
    broken = server_module.ServedModel("n", str(tmp_path / "n"))
    started = time.monotonic()
    broken.load(2, 0.05)
    assert broken.status("n")[1] == State.END and time.monotonic() - started >= 0.1
    assert "Could not find SavedModel .pb" in broken.status("n")[3]
    args = server_module.parse_args(["--max_num_load_retries=7", "--load_retry_interval_micros=250000"])
    assert (args.max_num_load_retries, args.load_retry_interval_micros, args.ignored) == (7, 250000, [])


def test_env_defaults(server_module, monkeypatch):
    monkeypatch.setenv("MODEL_NAME", "resnet")
    monkeypatch.setenv("MODEL_BASE_PATH", "/srv/models")
    args = server_module.parse_args([])
    assert (args.port, args.rest_api_port, args.host) == (8500, 8501, "0.0.0.0")
    assert (args.model_name, args.model_base_path) == ("resnet", os.path.join("/srv/models", "resnet"))


def test_the_tf_free_status_check_reads_the_server_as_the_tf_stubs_do(resnet):
    """``model_status`` (no TensorFlow import) against the live server: same versions, states, errors."""
    from tfserving_deploy.serving.states import ModelState
    from tfserving_deploy.serving.status import model_status, replica_state

    address = f"127.0.0.1:{resnet.grpc_port}"
    theirs = [(s.version, ModelState[State.State.Name(s.state)]) for s in resnet.status().model_version_status]
    assert [(s.version, s.state) for s in model_status(address, "resnet")] == theirs
    assert theirs == [(STRING_VERSION, ModelState.AVAILABLE)]
    assert replica_state(address, "resnet", STRING_VERSION).available
    assert str(replica_state(address, "nope", 1)).startswith("model not loaded yet")
    missing = replica_state(address, "resnet", STRING_VERSION + 1)
    assert missing.state is ModelState.UNKNOWN and str(missing).startswith(f"version {STRING_VERSION + 1} not listed")


def test_the_signature_gate_reads_both_servers_and_names_the_break(server_module, models, tmp_path):
    """Serving: the string model; candidate: the same, its ``probabilities`` renamed ``scores``."""
    from savedmodels import make_renamed_output_model

    from tfserving_deploy.errors import IncompatibleSignature
    from tfserving_deploy.validation.compatibility import check_signature_change

    make_renamed_output_model(tmp_path / "resnet" / "8")
    serving = InProcessServer(server_module, "resnet", models / "resnet")
    candidate = InProcessServer(server_module, "resnet", tmp_path / "resnet")
    try:
        addresses = {"serving": f"127.0.0.1:{serving.grpc_port}", "candidate": f"127.0.0.1:{candidate.grpc_port}"}
        gate = {"model_name": "resnet", "dial": addresses}
        with pytest.raises(IncompatibleSignature) as failure:
            check_signature_change("serving", "candidate", **gate)
        assert "output 'probabilities' removed (the candidate's outputs: classes, scores)" in str(failure.value)
        assert "the current model keeps serving" in str(failure.value)
        assert "allow_signature_change=true" in str(failure.value)
        assert check_signature_change("serving", "candidate", allow=True, **gate) == [
            "output 'probabilities' removed (the candidate's outputs: classes, scores)"
        ]
        assert check_signature_change("serving", "serving", **gate) == []
        serving.stop()  # a serving replica that does not answer: not compared, nothing blocked
        assert check_signature_change("serving", "candidate", **gate) == []
    finally:
        candidate.stop()


# --- serving behaviour: warmup, metrics, connection ageing, batching flags ----------------------


def test_warmup_requests_are_replayed_before_available(resnet):
    log = resnet.log_path.read_text()
    assert "Number of warmup records read: 2." in log
    assert log.index("Number of warmup records read") < log.index("AVAILABLE")
    assert "batching parameters (accepted" in log and "'max_batch_size': 32" in log
    assert "ignoring unsupported flags" not in log


def test_a_bad_warmup_record_fails_the_load(server_module, tmp_path):
    make_string_model(tmp_path / "m" / "2")
    wrong_input = predict_pb2.PredictRequest()
    wrong_input.inputs["pixels"].CopyFrom(tf.make_tensor_proto([1.0]))
    write_warmup(tmp_path / "m" / "2", [string_request([b"ok"]), wrong_input])
    model = server_module.ServedModel("m", str(tmp_path / "m"))
    model.load()
    version, state, code, error = model.status("m")
    assert (state, code) == (State.END, grpc.StatusCode.INVALID_ARGUMENT)
    assert "input tensor alias not found in signature: pixels" in error


def metric_lines(resnet):
    with urllib.request.urlopen(f"http://127.0.0.1:{resnet.rest_port}/monitoring/prometheus/metrics", timeout=10) as r:
        return r.read().decode().splitlines()


def test_prometheus_metrics_count_requests_like_the_real_server(resnet):
    def count(lines, status):
        prefix = f':tensorflow:serving:request_count{{model_name="resnet",status="{status}"}} '
        return next((int(line[len(prefix) :]) for line in lines if line.startswith(prefix)), 0)

    before = metric_lines(resnet)
    for _ in range(3):
        resnet.predict.Predict(string_request([b"x"]), timeout=10)
    rpc_error(resnet.predict.Predict, string_request([b"x"], signature_name="nope"))
    assert resnet.rest("/v1/models/resnet:predict", {"instances": [{"b64": "eA=="}]})[0] == 200
    after = metric_lines(resnet)
    assert count(after, "OK") - count(before, "OK") == 4  # warmup requests are not counted
    assert count(after, "FAILED_PRECONDITION") - count(before, "FAILED_PRECONDITION") == 1
    histogram = ':tensorflow:serving:request_latency_count{model_name="resnet",API="predict",entrypoint="GRPC"} '
    assert any(line.startswith(histogram) for line in after)
    assert any('entrypoint="REST",le="+Inf"' in line for line in after)
    assert "# TYPE :tensorflow:serving:request_latency histogram" in after


def test_max_connection_age_moves_a_long_lived_channel_to_a_new_connection(resnet):
    """The server ends a connection after max_connection_age (GOAWAY): the channel goes IDLE, and
    its next call opens another connection, which a load balancer may send to another pod."""
    states = []
    channel = grpc.insecure_channel(f"127.0.0.1:{resnet.grpc_port}")
    channel.subscribe(states.append, try_to_connect=False)
    try:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        stub.Predict(string_request([b"x"]), timeout=10)
        deadline = time.monotonic() + 10 * CONNECTION_AGE_MS / 1000

        def aged_out() -> bool:  # connectivity callbacks arrive on gRPC's own thread, maybe late
            seen = list(states)
            ready = seen.index(grpc.ChannelConnectivity.READY) if grpc.ChannelConnectivity.READY in seen else None
            return ready is not None and grpc.ChannelConnectivity.IDLE in seen[ready:]

        while not aged_out():
            assert time.monotonic() < deadline, f"connection never aged out: {states}"
            time.sleep(0.1)
        stub.Predict(string_request([b"x"]), timeout=10)  # a new connection, transparently
    finally:
        channel.close()


def test_config_files_are_read_as_the_real_server_reads_them(server_module, tmp_path):
    from tf_serving_server import config_files

    assert config_files.parse_channel_arguments("grpc.max_connection_age_ms=30000, grpc.lb_policy_name=x") == [
        ("grpc.max_connection_age_ms", 30000),
        ("grpc.lb_policy_name", "x"),
    ]
    assert config_files.read_monitoring_config(write(tmp_path / "m", MONITORING_CONFIG)) == (
        "/monitoring/prometheus/metrics"
    )
    assert config_files.read_monitoring_config(write(tmp_path / "off", "prometheus_config { enable: false }")) is None
    assert config_files.read_batching_parameters(write(tmp_path / "b", BATCHING)) == {
        "max_batch_size": 32,
        "batch_timeout_micros": 1000,
        "num_batch_threads": 2,
    }
    bad = [
        ("--grpc_channel_arguments=grpc.max_connection_age_ms", "is not key=value"),
        (f"--monitoring_config_file={write(tmp_path / 'typo', 'prometheus_config { enabled: true }')}", "enabled"),
        ("--monitoring_config_file=/nonexistent/monitoring.config", "No such file"),
        (f"--batching_parameters_file={write(tmp_path / 'bb', 'max_batch { value: 1 }')}", "max_batch"),
    ]
    for flag, message in bad:
        with pytest.raises((ValueError, OSError), match=message):
            server_module.main.__globals__["read_config_files"](server_module.parse_args([flag, "--enable_batching"]))
