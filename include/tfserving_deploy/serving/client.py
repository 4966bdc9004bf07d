"""A small gRPC client for TensorFlow Serving: metadata and Predict (status: ``model_status``).

Works against ``tensorflow_model_server`` and the project's drop-in server alike: it only uses
the public ``tensorflow.serving`` gRPC API. Importing it imports TensorFlow (seconds): status
checks, which run far more often, use ``model_status`` instead.
"""

from __future__ import annotations

import grpc

from ..native_logs import import_tensorflow
from .status import VersionStatus, model_status

import_tensorflow()  # tensorflow_serving.apis imports TensorFlow: through the one import that keeps stderr clean
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc  # noqa: E402


class ServingClient:
    """One gRPC channel to one server (one replica). Use as a context manager."""

    def __init__(self, address: str, *, timeout: float = 10.0):
        self.address = address
        self.timeout = timeout
        self._channel = grpc.insecure_channel(address)
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def watch_connectivity(self, callback) -> None:
        """``callback(grpc.ChannelConnectivity)`` on every state change (READY: a new connection)."""
        self._channel.subscribe(callback, try_to_connect=False)

    def model_status(self, model_name: str) -> list[VersionStatus]:
        """GetModelStatus on a channel of its own (``model_status.model_status``: no TensorFlow needed)."""
        return model_status(self.address, model_name, timeout=self.timeout)

    def signature_def(self, model_name: str, signature_name: str = "serving_default"):
        """The served SignatureDef proto, as the server reports it."""
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = model_name
        request.metadata_field.append("signature_def")
        response = self._predictions.GetModelMetadata(request, timeout=self.timeout)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return signature_map.signature_def[signature_name]

    def predict(self, model_name: str, inputs: dict, *, signature_name: str = "serving_default"):
        """``inputs`` maps input aliases to TensorProtos; returns the PredictResponse."""
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = signature_name
        for alias, tensor in inputs.items():
            request.inputs[alias].CopyFrom(tensor)
        return self._predictions.Predict(request, timeout=self.timeout)
