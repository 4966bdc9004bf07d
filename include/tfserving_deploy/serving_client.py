"""A small gRPC client for TensorFlow Serving: model status, metadata and Predict.

Works against ``tensorflow_model_server`` and the project's drop-in server alike: it only uses
the public ``tensorflow.serving`` gRPC API.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from .errors import RolloutError

log = logging.getLogger(__name__)

STATE_NAMES = {0: "UNKNOWN", 10: "START", 20: "LOADING", 30: "AVAILABLE", 40: "UNLOADING", 50: "END"}


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str
    error: str = ""


class ServingClient:
    """One gRPC channel to one server (one replica). Use as a context manager."""

    def __init__(self, address: str, *, timeout: float = 10.0):
        self.address = address
        self.timeout = timeout
        self._channel = grpc.insecure_channel(address)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def model_status(self, model_name: str) -> list[VersionStatus]:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model_name
        response = self._models.GetModelStatus(request, timeout=self.timeout)
        return [
            VersionStatus(
                version=s.version,
                state=STATE_NAMES.get(s.state, str(s.state)),
                error=s.status.error_message,
            )
            for s in response.model_version_status
        ]

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


def wait_until_available(
    addresses: list[str],
    model_name: str,
    version: int,
    *,
    timeout: float = 300.0,
    poll_interval: float = 1.0,
    alive: Callable[[str], None] | None = None,
) -> None:
    """Block until every replica reports ``version`` AVAILABLE.

    Fails fast when a replica reports END (the model failed to load), or when ``alive(address)``
    raises (the replica's process is gone: a container that exited, a pod that crashed); a
    replica that is not listening yet counts as still starting. Bounded by ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    pending = dict.fromkeys(addresses, "not contacted yet")
    while pending:
        for address in list(pending):
            if alive is not None:
                alive(address)
            pending[address] = replica_state(address, model_name, version)
            if pending[address] == "AVAILABLE":
                del pending[address]
                log.info("replica %s: %s version %d AVAILABLE", address, model_name, version)
        if not pending:
            return
        if time.monotonic() >= deadline:
            detail = "; ".join(f"{a}: {s}" for a, s in pending.items())
            raise RolloutError(
                f"model {model_name!r} version {version} not AVAILABLE on every replica after "
                f"{timeout:.0f}s ({detail}); check the server logs, or raise the ready timeout "
                "for large models"
            )
        time.sleep(poll_interval)


def replica_state(address: str, model_name: str, version: int) -> str:
    """The replica's state for ``version`` as a word; raises RolloutError on END."""
    try:
        with ServingClient(address, timeout=5.0) as client:
            statuses = client.model_status(model_name)
    except grpc.RpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return f"not answering yet ({exc.code().name})"
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return f"model not loaded yet ({exc.details()})"
        raise RolloutError(
            f"replica {address} rejected GetModelStatus for {model_name!r}: {exc.code().name}: {exc.details()}"
        ) from exc
    for status in statuses:
        if status.version != version:
            continue
        if status.state == "END":
            raise RolloutError(
                f"replica {address}: model {model_name!r} version {version} ended up in state END "
                f"(failed to load): {status.error or 'no error message'}; the model does not load "
                "in this serving image"
            )
        return status.state
    served = ", ".join(f"{s.version}={s.state}" for s in statuses) or "none"
    ended = next((s for s in statuses if s.state == "END"), None)
    if ended is not None:  # the server gave up on the model it found (or found none): no wait helps
        raise RolloutError(
            f"replica {address}: model {model_name!r} has no version {version} and ended in state END "
            f"({ended.error or 'no error message'}); the image holds another version, or none"
        )
    return f"version {version} not listed (serving {served})"
