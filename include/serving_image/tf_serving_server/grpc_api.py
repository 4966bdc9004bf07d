"""The gRPC services: PredictionService (Predict, GetModelMetadata) and ModelService (GetModelStatus)."""

import math
import time

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from .limits import DEFAULT_MAX_MESSAGE_BYTES
from .model import ServingError


def decode_tensor(alias, proto, max_bytes):
    """A TensorProto as a numpy array, refused when its declared shape would decode to more than
    ``max_bytes``: decoding repeats the last value to fill the shape, so a proto of a few bytes
    could declare gigabytes."""
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(size < 0 for size in dims):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Malformed input tensor {alias}: negative dimension")
    itemsize = np.dtype(tf.as_dtype(proto.dtype).as_numpy_dtype).itemsize  # strings: 8, one reference each
    elements = math.prod(dims)
    if elements * itemsize > max_bytes:
        raise ServingError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"input tensor {alias} declares {elements} elements, more than {max_bytes} bytes "
            "(--max_message_bytes): send a smaller batch",
        )
    return tf.make_ndarray(proto)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata; the other methods keep the base class's UNIMPLEMENTED."""

    def __init__(self, model, max_tensor_bytes=DEFAULT_MAX_MESSAGE_BYTES):
        self.model, self.max_tensor_bytes = model, max_tensor_bytes

    def Predict(self, request, context):
        started, status = time.perf_counter(), "OK"
        try:
            return self._predict(request, context)
        except ServingError as e:
            status = e.code.name
            context.abort(e.code, e.message)
        finally:
            latency_us = (time.perf_counter() - started) * 1e6
            self.model.metrics.record(request.model_spec.name, "predict", "GRPC", status, latency_us)

    def _predict(self, request, context):
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        try:
            inputs = {k: decode_tensor(k, v, self.max_tensor_bytes) for k, v in request.inputs.items()}
        except (TypeError, ValueError) as e:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Malformed input tensor: {e}") from e
        key, outputs = self.model.predict(spec.name, version, spec.signature_name, inputs, list(request.output_filter))
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
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "GetModelMetadataRequest must specify at least one metadata_field"
                if not fields
                else f"Metadata field {fields[0]} is not supported",
            )
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
                spec.name, spec.version.value if spec.HasField("version") else None
            )
        except ServingError as e:
            context.abort(e.code, e.message)
        response = get_model_status_pb2.GetModelStatusResponse()
        entry = response.model_version_status.add(version=version, state=state)
        entry.status.error_code, entry.status.error_message = code.value[0], message
        return response
