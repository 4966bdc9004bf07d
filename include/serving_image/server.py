"""A small stand-in for ``tensorflow_model_server`` (no binary or Docker Hub image is reachable here).

It implements the subset a deploy pipeline relies on, with the same flags, ports, status codes
and error messages as the real server:

* gRPC ``tensorflow.serving.PredictionService``: Predict, GetModelMetadata (Classify, Regress and
  MultiInference answer UNIMPLEMENTED) and ``tensorflow.serving.ModelService.GetModelStatus``.
* REST: ``GET /v1/models/<name>[/versions/<v>]``, ``GET .../metadata`` and ``POST ...:predict``
  (row ``instances`` and columnar ``inputs`` formats, ``{"b64": ...}`` for bytes).

Deviations from the real server, on purpose:

* The ports open at once and the model loads in a background thread, so clients can watch
  LOADING -> AVAILABLE (or END). The real server opens its ports only after the first load.
  Requests that arrive while LOADING get UNAVAILABLE.
* A failed load (no version directory, no ``saved_model.pb``, no ``serving_default`` signature,
  a TensorFlow load error) ends in END with the error at once: ``--max_num_load_retries``
  defaults to 0 here, to 5 (a minute apart, LOADING meanwhile) in the real server. Both honour
  the flag and ``--load_retry_interval_micros``.
* One model, its highest numeric version, loaded once: no file-system polling, model config file,
  version labels, batching, warmup replay or monitoring. SIGTERM exits immediately (no drain),
  as the real server does.
"""
import argparse
import base64
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

log = logging.getLogger("tf_serving")
ModelVersionStatus = get_model_status_pb2.ModelVersionStatus
DEFAULT_SIGNATURE = "serving_default"
GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}  # TF error codes share these numbers
HTTP_CODES = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400,
              grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.UNIMPLEMENTED: 501,
              grpc.StatusCode.UNAVAILABLE: 503}


class ServingError(Exception):
    """An error with the gRPC status code the real server would answer with."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, message


def dtype_name(dtype):
    """TensorFlow's own spelling of a dtype in error messages ("float", "string", "int64")."""
    return types_pb2.DataType.Name(tf.as_dtype(dtype).as_datatype_enum)[3:].lower()


class ServedModel:
    """One model name and its highest numeric version, loaded once in the background."""

    def __init__(self, name, base_path):
        self.name, self.base_path = name, base_path
        self.version, self.state, self.error = 0, ModelVersionStatus.LOADING, (grpc.StatusCode.OK, "")
        self.signatures = {}      # signature key -> loaded concrete function
        self.signature_defs = {}  # signature key -> SignatureDef proto, as read from saved_model.pb
        self._loaded = None       # keeps the loaded object (and its variables) alive

    def _set_state(self, state, code=grpc.StatusCode.OK, message=""):
        self.state, self.error = state, (code, message)
        log.info("model %s version %s: %s%s", self.name, self.version,
                 ModelVersionStatus.State.Name(state), f" ({message})" if message else "")

    def load(self, max_retries=0, retry_interval=60.0):
        """Pick the highest numeric version directory and load it; ends in AVAILABLE or END.

        A failed load is retried ``max_retries`` times, ``retry_interval`` seconds apart, and the
        version stays LOADING meanwhile, as with the real server's ``--max_num_load_retries`` and
        ``--load_retry_interval_micros``; then it ends in END with the last error.
        """
        for attempt in range(max_retries + 1):
            failure = self._load_once()
            if failure is None:
                return
            if attempt == max_retries:
                return self._set_state(ModelVersionStatus.END, *failure)
            log.warning("Loading servable %s version %s failed: %s; retrying in %g s (retry %d of %d)",
                        self.name, self.version, failure[1], retry_interval, attempt + 1, max_retries)
            time.sleep(retry_interval)

    def _load_once(self):
        """None once AVAILABLE, else the (gRPC code, message) of the failure."""
        try:
            versions = [int(d) for d in os.listdir(self.base_path)
                        if d.isdigit() and os.path.isdir(os.path.join(self.base_path, d))]
        except OSError:
            versions = []
        if not versions:
            return (grpc.StatusCode.NOT_FOUND,
                    f"No versions of servable {self.name} found under base path {self.base_path}. "
                    "Did you forget to name your leaf directory as a number (eg. '/1/')?")
        self.version = max(versions)
        self._set_state(ModelVersionStatus.LOADING)
        export_dir = os.path.join(self.base_path, str(self.version))
        try:
            pb_path = os.path.join(export_dir, "saved_model.pb")
            if not os.path.isfile(pb_path):
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find SavedModel .pb at {pb_path}")
            saved_model = saved_model_pb2.SavedModel()
            with open(pb_path, "rb") as f:
                saved_model.ParseFromString(f.read())
            loaded = tf.saved_model.load(export_dir, tags=["serve"])
            if DEFAULT_SIGNATURE not in loaded.signatures:
                raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f'Serving signature key "{DEFAULT_SIGNATURE}" not found in {export_dir}.')
        except ServingError as e:
            return e.code, e.message
        except tf.errors.OpError as e:
            return GRPC_CODES.get(e.error_code, grpc.StatusCode.UNKNOWN), e.message
        except Exception as e:  # noqa: BLE001 - any load failure fails this attempt
            return grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}"
        self._loaded, self.signatures = loaded, dict(loaded.signatures)
        self.signature_defs = dict(saved_model.meta_graphs[0].signature_def)
        self._set_state(ModelVersionStatus.AVAILABLE)
        return None

    def status(self, name, version=None):
        """(version, state, code, message) for GetModelStatus, with the real server's errors."""
        if name != self.name:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {name}")
        if version is not None and version != self.version:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find version {version} of model {name}")
        return self.version, self.state, *self.error

    def _resolve(self, name, version):
        request = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
        if name == self.name and self.state == ModelVersionStatus.LOADING:
            raise ServingError(grpc.StatusCode.UNAVAILABLE, f"Model {name} is still loading; try again later.")
        if name != self.name or self.state != ModelVersionStatus.AVAILABLE or version not in (None, self.version):
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request}")

    def signature_def_map(self, name, version=None):
        self._resolve(name, version)
        return self.signature_defs

    def predict(self, name, version, signature_name, inputs, output_filter=()):
        """Run a signature on numpy inputs; returns (signature key, {output name: numpy array})."""
        self._resolve(name, version)
        key = signature_name or DEFAULT_SIGNATURE
        if key not in self.signatures:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{key}" not found.')
        fn = self.signatures[key]
        specs = fn.structured_input_signature[1]
        expected = ",".join(sorted(specs))
        for alias in inputs:
            if alias not in specs:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"input tensor alias not found in signature: {alias}. "
                                   f"Inputs expected to be in the set {{{expected}}}.")
        missing = sorted(set(specs) - set(inputs))
        if missing:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input size does not match signature: {len(inputs)}!={len(specs)} "
                               f"len({{{','.join(sorted(inputs))}}}) != len({{{expected}}}). "
                               f"Sent extra: {{}}. Missing but required: {{{','.join(missing)}}}.")
        outputs_known = sorted(fn.structured_outputs)
        for alias in output_filter:
            if alias not in outputs_known:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"output tensor alias not found in signature: {alias} Outputs expected to be "
                                   f"in the set {{{','.join(outputs_known)}}}.")
        tensors = {}
        for i, alias in enumerate(sorted(specs)):
            spec, value = specs[alias], inputs[alias]
            try:
                tensor = tf.convert_to_tensor(value)
            except (TypeError, ValueError) as e:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"input {alias}: {e}") from e
            if tensor.dtype != spec.dtype:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Expects arg[{i}] to be {dtype_name(spec.dtype)} but "
                                   f"{dtype_name(tensor.dtype)} is provided")
            if not spec.shape.is_compatible_with(tensor.shape):
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"input {alias}: shape {tensor.shape} is incompatible with {spec.shape}")
            tensors[alias] = tensor
        try:
            result = fn(**tensors)
        except tf.errors.OpError as e:
            raise ServingError(GRPC_CODES.get(e.error_code, grpc.StatusCode.UNKNOWN), e.message) from e
        wanted = output_filter or outputs_known
        return key, {alias: result[alias].numpy() for alias in wanted}


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata; the other methods keep the base class's UNIMPLEMENTED."""

    def __init__(self, model):
        self.model = model

    def Predict(self, request, context):
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        try:
            try:
                inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            except (TypeError, ValueError) as e:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Malformed input tensor: {e}") from e
            key, outputs = self.model.predict(spec.name, version, spec.signature_name, inputs,
                                              list(request.output_filter))
        except ServingError as e:
            context.abort(e.code, e.message)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = self.model.name
        response.model_spec.version.value = self.model.version
        response.model_spec.signature_name = key
        for alias, value in outputs.items():
            response.outputs[alias].CopyFrom(tf.make_tensor_proto(value))
        return response

    def GetModelMetadata(self, request, context):
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        fields = list(request.metadata_field)
        if fields != ["signature_def"]:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "GetModelMetadataRequest must specify at least one metadata_field" if not fields
                          else f"Metadata field {fields[0]} is not supported")
        try:
            defs = self.model.signature_def_map(spec.name, version)
        except ServingError as e:
            context.abort(e.code, e.message)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = self.model.name
        response.model_spec.version.value = self.model.version
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature_def in defs.items():
            signature_map.signature_def[key].CopyFrom(signature_def)
        response.metadata["signature_def"].Pack(signature_map)
        return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus; HandleReloadConfigRequest keeps the base class's UNIMPLEMENTED."""

    def __init__(self, model):
        self.model = model

    def GetModelStatus(self, request, context):
        spec = request.model_spec
        try:
            version, state, code, message = self.model.status(
                spec.name, spec.version.value if spec.HasField("version") else None)
        except ServingError as e:
            context.abort(e.code, e.message)
        response = get_model_status_pb2.GetModelStatusResponse()
        entry = response.model_version_status.add(version=version, state=state)
        entry.status.error_code, entry.status.error_message = code.value[0], message
        return response


def from_json(value):
    """JSON value -> Python value, turning {"b64": ...} into bytes anywhere in it."""
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def to_json(value, alias):
    """numpy value -> JSON value; bytes become text, or {"b64": ...} for outputs named *_bytes."""
    if isinstance(value, list):
        return [to_json(v, alias) for v in value]
    if isinstance(value, bytes):
        if alias.endswith("_bytes"):
            return {"b64": base64.b64encode(value).decode()}
        return value.decode("utf-8", "replace")
    return value


def is_named(value):
    return isinstance(value, dict) and set(value) != {"b64"}


def rest_predict(model, name, version, body):
    """The REST predict API: row ("instances") or columnar ("inputs") format."""
    if ("instances" in body) == ("inputs" in body):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           "Missing 'inputs' or 'instances' key" if "instances" not in body
                           else "Not both 'inputs' and 'instances' can be specified")
    key = body.get("signature_name") or DEFAULT_SIGNATURE
    ready = model.state == ModelVersionStatus.AVAILABLE and key in model.signatures
    specs = model.signatures[key].structured_input_signature[1] if ready else {}
    single = sorted(specs)[0] if specs else "?"  # model.predict reports the precise error
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list) or not rows:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "'instances' must be a non-empty list")
        if all(is_named(r) for r in rows):
            inputs = {k: [from_json(r.get(k)) for r in rows] for k in rows[0]}
        else:
            inputs = {single: [from_json(r) for r in rows]}
    else:
        columns = body["inputs"]
        inputs = ({k: from_json(v) for k, v in columns.items()} if is_named(columns)
                  else {single: from_json(columns)})
    arrays = {}
    for alias, value in inputs.items():  # JSON has no dtypes: take them from the signature
        spec = specs.get(alias)
        dtype = None if spec is None else object if spec.dtype == tf.string else spec.dtype.as_numpy_dtype
        try:
            arrays[alias] = np.array(value, dtype=dtype)
        except (TypeError, ValueError) as e:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"input {alias}: {e}") from e
        if dtype is object:
            wrong = next((x for x in arrays[alias].ravel() if not isinstance(x, (str, bytes))), None)
            if wrong is not None:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"JSON Value: {json.dumps(wrong)} is not of expected type: string")
    key, outputs = model.predict(name, version, key, arrays)
    values = {alias: to_json(value.tolist(), alias) for alias, value in outputs.items()}
    if "inputs" in body:
        return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    batch = {len(v) if isinstance(v, list) else -1 for v in values.values()}
    if len(batch) != 1 or -1 in batch:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Output tensors have inconsistent batch sizes")
    return {"predictions": [{alias: v[i] for alias, v in values.items()} for i in range(batch.pop())]}


def make_rest_handler(model):
    route = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?"
                       r"(?P<verb>/metadata|:predict|:classify|:regress)?$")

    class Handler(BaseHTTPRequestHandler):
        """The REST API; errors are {"error": ...} with the real server's HTTP codes."""

        def _reply(self, code, payload):
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self, method):
            match = route.match(self.path.split("?", 1)[0])
            if not match:
                return self._reply(404, {"error": f"Malformed request: {method} {self.path}"})
            name, verb = match["name"], match["verb"]
            version = int(match["version"]) if match["version"] else None
            try:
                if method == "GET" and verb is None:
                    v, state, code, message = model.status(name, version)
                    return self._reply(200, {"model_version_status": [{
                        "version": str(v), "state": ModelVersionStatus.State.Name(state),
                        "status": {"error_code": code.name, "error_message": message}}]})
                if method == "GET" and verb == "/metadata":
                    signature_map = get_model_metadata_pb2.SignatureDefMap(
                        signature_def=model.signature_def_map(name, version))
                    metadata = json_format.MessageToDict(signature_map, preserving_proto_field_name=True)
                    metadata["@type"] = "type.googleapis.com/tensorflow.serving.SignatureDefMap"
                    return self._reply(200, {"model_spec": {"name": name, "signature_name": "",
                                                            "version": str(model.version)},
                                             "metadata": {"signature_def": metadata}})
                if method == "POST" and verb == ":predict":
                    length = int(self.headers.get("Content-Length") or 0)
                    try:
                        body = json.loads(self.rfile.read(length) or b"null")
                    except ValueError as e:
                        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"JSON Parse error: {e}") from e
                    if not isinstance(body, dict):
                        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "JSON Value is not an object")
                    return self._reply(200, rest_predict(model, name, version, body))
                if method == "POST" and verb in (":classify", ":regress"):
                    raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"{verb[1:]} is not implemented")
                return self._reply(404, {"error": f"Malformed request: {method} {self.path}"})
            except ServingError as e:
                return self._reply(HTTP_CODES.get(e.code, 500), {"error": e.message})

        def do_GET(self):
            self._handle("GET")

        def do_POST(self):
            self._handle("POST")

        def log_message(self, *args):  # the real server does not log each request
            pass

    return Handler


def parse_args(argv=None):
    name = os.environ.get("MODEL_NAME", "model")
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=8500, help="gRPC port")
    parser.add_argument("--rest_api_port", type=int, default=8501, help="REST port (0 disables REST)")
    parser.add_argument("--host", default="0.0.0.0", help="bind address for both ports")
    parser.add_argument("--model_name", default=name)
    parser.add_argument("--model_base_path",
                        default=os.path.join(os.environ.get("MODEL_BASE_PATH", "/models"), name))
    parser.add_argument("--max_num_load_retries", type=int, default=0,
                        help="retries of a failed load, LOADING meanwhile (the real server's default is 5)")
    parser.add_argument("--load_retry_interval_micros", type=int, default=60_000_000,
                        help="wait between load retries")
    args, ignored = parser.parse_known_args(argv)  # e.g. --enable_batching: accepted, not implemented
    args.ignored = ignored
    return args


def start_servers(model, host, port, rest_api_port):
    """Open the gRPC port and (unless 0) the REST port for `model`; returns both servers."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         options=[("grpc.max_receive_message_length", -1),
                                  ("grpc.max_send_message_length", -1)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(model), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(model), server)
    if server.add_insecure_port(f"{host}:{port}") == 0:  # older grpcio returns 0, newer raise
        raise RuntimeError(f"cannot bind gRPC port {host}:{port}")
    server.start()
    log.info("Running gRPC ModelServer at %s:%d ...", host, port)
    httpd = None
    if rest_api_port:
        httpd = ThreadingHTTPServer((host, rest_api_port), make_rest_handler(model))
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, name="rest", daemon=True).start()
        log.info("Exporting HTTP/REST API at:%s:%d ...", host, rest_api_port)
    return server, httpd


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def exit_now(signum, _frame):  # no drain, like the real server
        log.info("received signal %d, exiting", signum)
        os._exit(0)

    signal.signal(signal.SIGTERM, exit_now)
    signal.signal(signal.SIGINT, exit_now)
    if args.ignored:
        log.warning("ignoring unsupported flags: %s", " ".join(args.ignored))
    model = ServedModel(args.model_name, args.model_base_path)
    try:
        server, _ = start_servers(model, args.host, args.port, args.rest_api_port)
    except (RuntimeError, OSError) as e:
        log.error("%s", e)
        return 1
    retries = (args.max_num_load_retries, args.load_retry_interval_micros / 1e6)
    threading.Thread(target=model.load, args=retries, name="loader", daemon=True).start()  # ports are open
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main())
