"""The REST API on 8501: status, metadata and predict, in the real server's JSON (rest_server.py
is the HTTP layer under it). Error messages name the field and its JSON type, never a value from
the body."""

import base64
import json
import re
import time

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2

from .model import DEFAULT_SIGNATURE, HTTP_CODES, ModelVersionStatus, ServingError


def from_json(value):
    """JSON value -> Python value, turning {"b64": ...} into bytes anywhere in it."""
    if isinstance(value, dict) and set(value) == {"b64"}:
        try:
            return base64.b64decode(value["b64"])
        except (TypeError, ValueError) as e:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f'a "b64" value is not base64 text: {e}') from e
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


def json_type(value):
    """The JSON type of a decoded value, as the real server names it in errors."""
    names = {dict: "Object", list: "Array", str: "String", bool: "Bool", type(None): "Null"}
    return names.get(type(value), "Number")


def is_named(value):
    return isinstance(value, dict) and set(value) != {"b64"}


def rest_predict(model, name, version, body):
    """The REST predict API: row ("instances") or columnar ("inputs") format."""
    if ("instances" in body) == ("inputs" in body):
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "Missing 'inputs' or 'instances' key"
            if "instances" not in body
            else "Not both 'inputs' and 'instances' can be specified",
        )
    key = body.get("signature_name") or DEFAULT_SIGNATURE
    if not isinstance(key, str):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"'signature_name' must be a string, not {json_type(key)}")
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
        inputs = {k: from_json(v) for k, v in columns.items()} if is_named(columns) else {single: from_json(columns)}
    arrays = {}
    for alias, value in inputs.items():  # JSON has no dtypes: take them from the signature
        spec = specs.get(alias)
        dtype = None if spec is None else object if spec.dtype == tf.string else spec.dtype.as_numpy_dtype
        try:
            arrays[alias] = np.array(value, dtype=dtype)
        except (TypeError, ValueError, OverflowError) as e:  # OverflowError: an integer beyond the dtype
            expected = "a tensor" if spec is None else f"a {spec.dtype.name} tensor"
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, f"input {alias}: the JSON values are not {expected} of one shape"
            ) from e
        if dtype is object:
            wrong = next((x for x in arrays[alias].ravel() if not isinstance(x, (str, bytes))), None)
            if wrong is not None:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"JSON Value of type {json_type(wrong)} in input {alias} is not of expected type: string",
                )
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


ROUTE = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?(?P<verb>/metadata|:predict|:classify|:regress)?$"
)


def answer(model, method, path, body):
    """(HTTP status, JSON payload) for one request with ``body`` (bytes)."""
    started = time.perf_counter()
    match = ROUTE.match(path.split("?", 1)[0])
    if not match:
        return 404, {"error": f"Malformed request: {method} {path}"}
    code, payload = _answer(model, method, path, match, body)
    if match["verb"] == ":predict":  # Metrics drops names the server does not serve
        status = "OK" if code == 200 else next((c.name for c, h in HTTP_CODES.items() if h == code), "UNKNOWN")
        model.metrics.record(match["name"], "predict", "REST", status, (time.perf_counter() - started) * 1e6)
    return code, payload


def _answer(model, method, path, match, body):
    name, verb = match["name"], match["verb"]
    version = int(match["version"]) if match["version"] else None
    try:
        if method == "GET" and verb is None:
            return 200, status_json(model, name, version)
        if method == "GET" and verb == "/metadata":
            return 200, metadata_json(model, name, version)
        if method == "POST" and verb == ":predict":
            return 200, rest_predict(model, name, version, _json_object(body))
        if method == "POST" and verb in (":classify", ":regress"):
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"{verb[1:]} is not implemented")
        return 404, {"error": f"Malformed request: {method} {path}"}
    except ServingError as e:
        return HTTP_CODES.get(e.code, 500), {"error": e.message}
    except RecursionError:  # in the JSON parser or the walk over it
        return 400, {"error": "JSON Parse error: nested deeper than any tensor"}


def status_json(model, name, version):
    v, state, code, message = model.status(name, version)
    status = {"error_code": code.name, "error_message": message}
    return {
        "model_version_status": [{"version": str(v), "state": ModelVersionStatus.State.Name(state), "status": status}]
    }


def metadata_json(model, name, version):
    signature_map = get_model_metadata_pb2.SignatureDefMap(signature_def=model.signature_def_map(name, version))
    metadata = json_format.MessageToDict(signature_map, preserving_proto_field_name=True)
    metadata["@type"] = "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    return {
        "model_spec": {"name": name, "signature_name": "", "version": str(model.version)},
        "metadata": {"signature_def": metadata},
    }


def _json_object(data):
    try:
        body = json.loads(data or b"null")
    except json.JSONDecodeError as e:  # its message names the fault and the offset, never the text
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"JSON Parse error: {e.msg} at offset: {e.pos}") from e
    except ValueError as e:  # not UTF-8, or a number of more digits than Python converts
        message = "JSON Parse error: not UTF-8 JSON of bounded numbers"
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, message) from e
    if not isinstance(body, dict):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "JSON Value is not an object")
    return body
