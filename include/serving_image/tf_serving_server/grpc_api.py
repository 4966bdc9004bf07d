"""The gRPC services: PredictionService (Predict, GetModelMetadata) and ModelService (GetModelStatus)."""

import time

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from .model import ServingError


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata; the other methods keep the base class's UNIMPLEMENTED."""

    def __init__(self, model):
        self.model = model

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
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
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
