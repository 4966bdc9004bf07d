"""One model, its highest numeric version, loaded in the background: states, signatures, Predict."""

import logging
import os
import time

import grpc
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_status_pb2, prediction_log_pb2

from .limits import DEFAULT_MAX_REQUEST_BATCH_SIZE
from .metrics import Metrics

log = logging.getLogger("tf_serving")
ModelVersionStatus = get_model_status_pb2.ModelVersionStatus
DEFAULT_SIGNATURE = "serving_default"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000  # the real server's limit
GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}  # TF error codes share these numbers
HTTP_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
}


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

    def __init__(self, name, base_path, max_request_batch_size=DEFAULT_MAX_REQUEST_BATCH_SIZE):
        self.name, self.base_path = name, base_path
        self.max_request_batch_size = max_request_batch_size  # rows per Predict (limits.py)
        self.version, self.state, self.error = 0, ModelVersionStatus.LOADING, (grpc.StatusCode.OK, "")
        self.signatures = {}  # signature key -> loaded concrete function
        self.signature_defs = {}  # signature key -> SignatureDef proto, as read from saved_model.pb
        self.warmup_records = 0  # replayed before AVAILABLE, from <version>/assets.extra
        self.metrics = Metrics(name)  # requests served (warmup not counted), for --monitoring_config_file
        self._loaded = None  # keeps the loaded object (and its variables) alive

    def _set_state(self, state, code=grpc.StatusCode.OK, message=""):
        self.state, self.error = state, (code, message)
        log.info(
            "model %s version %s: %s%s",
            self.name,
            self.version,
            ModelVersionStatus.State.Name(state),
            f" ({message})" if message else "",
        )

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
            log.warning(
                "Loading servable %s version %s failed: %s; retrying in %g s (retry %d of %d)",
                self.name,
                self.version,
                failure[1],
                retry_interval,
                attempt + 1,
                max_retries,
            )
            time.sleep(retry_interval)

    def _load_once(self):
        """None once AVAILABLE, else the (gRPC code, message) of the failure."""
        try:
            versions = [
                int(d)
                for d in os.listdir(self.base_path)
                if d.isdigit() and os.path.isdir(os.path.join(self.base_path, d))
            ]
        except OSError:
            versions = []
        if not versions:
            return (
                grpc.StatusCode.NOT_FOUND,
                f"No versions of servable {self.name} found under base path {self.base_path}. "
                "Did you forget to name your leaf directory as a number (eg. '/1/')?",
            )
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
                raise ServingError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f'Serving signature key "{DEFAULT_SIGNATURE}" not found in {export_dir}.',
                )
            self.warmup_records = replay_warmup(export_dir, dict(loaded.signatures))
        except ServingError as e:
            return e.code, e.message
        except tf.errors.OpError as e:
            return GRPC_CODES.get(e.error_code, grpc.StatusCode.UNKNOWN), e.message
        except Exception as e:
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
        check_batch_size(inputs, self.max_request_batch_size)
        return run_signature(self.signatures, signature_name, inputs, output_filter)


def check_batch_size(inputs, limit):
    """Refuse inputs of more than ``limit`` rows: each row costs a model run and an answer's row."""
    for alias, value in inputs.items():
        shape = getattr(value, "shape", ())
        if shape and shape[0] > limit:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Task size {shape[0]} of input {alias} is larger than maximum input batch size {limit} "
                "(--max_request_batch_size): split the request",
            )


def run_signature(signatures, signature_name, inputs, output_filter=()):
    """Check numpy inputs against a loaded signature and run it, with the real server's errors."""
    key = signature_name or DEFAULT_SIGNATURE
    if key not in signatures:
        raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{key}" not found.')
    fn = signatures[key]
    specs = fn.structured_input_signature[1]
    expected = ",".join(sorted(specs))
    for alias in inputs:
        if alias not in specs:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input tensor alias not found in signature: {alias}. Inputs expected to be in the set {{{expected}}}.",
            )
    missing = sorted(set(specs) - set(inputs))
    if missing:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input size does not match signature: {len(inputs)}!={len(specs)} "
            f"len({{{','.join(sorted(inputs))}}}) != len({{{expected}}}). "
            f"Sent extra: {{}}. Missing but required: {{{','.join(missing)}}}.",
        )
    outputs_known = sorted(fn.structured_outputs)
    for alias in output_filter:
        if alias not in outputs_known:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"output tensor alias not found in signature: {alias} Outputs expected to be "
                f"in the set {{{','.join(outputs_known)}}}.",
            )
    tensors = {}
    for i, alias in enumerate(sorted(specs)):
        spec, value = specs[alias], inputs[alias]
        try:
            tensor = tf.convert_to_tensor(value)
        except (TypeError, ValueError) as e:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"input {alias}: {e}") from e
        if tensor.dtype != spec.dtype:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Expects arg[{i}] to be {dtype_name(spec.dtype)} but {dtype_name(tensor.dtype)} is provided",
            )
        if not spec.shape.is_compatible_with(tensor.shape):
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input {alias}: shape {tensor.shape} is incompatible with {spec.shape}",
            )
        tensors[alias] = tensor
    try:
        result = fn(**tensors)
    except tf.errors.OpError as e:
        raise ServingError(GRPC_CODES.get(e.error_code, grpc.StatusCode.UNKNOWN), e.message) from e
    wanted = output_filter or outputs_known
    return key, {alias: result[alias].numpy() for alias in wanted}


def replay_warmup(export_dir, signatures):
    """Run the model's warmup requests (a TFRecord of PredictionLog) before it is AVAILABLE, as the
    real server does; a bad record fails the load. Returns how many were replayed."""
    path = os.path.join(export_dir, WARMUP_FILE)
    if not os.path.isfile(path):
        return 0
    started, count = time.monotonic(), 0
    for record in tf.data.TFRecordDataset(path):
        count += 1
        if count > MAX_WARMUP_RECORDS:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}",
            )
        entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        kind = entry.WhichOneof("log_type")
        if kind != "predict_log":
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"Unsupported log_type for warmup: {kind}")
        request = entry.predict_log.request
        inputs = {alias: tf.make_ndarray(tensor) for alias, tensor in request.inputs.items()}
        run_signature(signatures, request.model_spec.signature_name, inputs, list(request.output_filter))
    log.info(
        "Finished reading warmup data for model at %s. Number of warmup records read: %d. "
        "Elapsed time (microseconds): %d.",
        path,
        count,
        (time.monotonic() - started) * 1e6,
    )
    return count
