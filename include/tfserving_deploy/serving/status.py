"""Is a model version AVAILABLE on a replica? gRPC ``GetModelStatus`` without importing TensorFlow.

``tensorflow_serving.apis`` imports TensorFlow (about 5 s), and status checks run on every
refresh, in the change check and in every readiness wait. Their messages come from ``protos``
(TF Serving's names and field numbers, no TensorFlow): the same bytes on the wire. Predict and
metadata keep the real stubs (``serving_client``), where TensorFlow is needed anyway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from ..errors import RolloutError
from .protos import CLASSES
from .states import ModelState

log = logging.getLogger(__name__)

METHOD = "/tensorflow.serving.ModelService/GetModelStatus"
GetModelStatusRequest = CLASSES["GetModelStatusRequest"]
GetModelStatusResponse = CLASSES["GetModelStatusResponse"]


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: ModelState
    error: str = ""


@dataclass(frozen=True)
class ReplicaState:
    """What a replica says of one model version: its state, or (``detail``) why it says none yet
    (not answering, the model or the version not listed), then UNKNOWN."""

    state: ModelState
    detail: str = ""

    @property
    def available(self) -> bool:
        return self.state is ModelState.AVAILABLE

    def __str__(self) -> str:
        return self.detail or self.state.name


def model_status(address: str, model_name: str, *, timeout: float = 10.0) -> list[VersionStatus]:
    """Every version the replica at ``address`` knows of ``model_name``, with its state."""
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(
            METHOD,
            request_serializer=GetModelStatusRequest.SerializeToString,
            response_deserializer=GetModelStatusResponse.FromString,
        )
        request = GetModelStatusRequest()
        request.model_spec.name = model_name
        response = call(request, timeout=timeout)
    return [
        VersionStatus(s.version, ModelState.of(s.state), s.status.error_message) for s in response.model_version_status
    ]


def replica_state(address: str, model_name: str, version: int) -> ReplicaState:
    """The replica's state for ``version``; raises RolloutError on END."""
    unknown = ModelState.UNKNOWN
    try:
        statuses = model_status(address, model_name, timeout=5.0)
    except grpc.RpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return ReplicaState(unknown, f"not answering yet ({exc.code().name})")
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return ReplicaState(unknown, f"model not loaded yet ({exc.details()})")
        raise RolloutError(
            f"replica {address} rejected GetModelStatus for {model_name!r}: {exc.code().name}: {exc.details()}"
        ) from exc
    for status in statuses:
        if status.version != version:
            continue
        if status.state is ModelState.END:
            raise RolloutError(
                f"replica {address}: model {model_name!r} version {version} ended up in state END "
                f"(failed to load): {status.error or 'no error message'}; the model does not load "
                "in this serving image"
            )
        return ReplicaState(status.state)
    served = ", ".join(f"{s.version}={s.state.name}" for s in statuses) or "none"
    ended = next((s for s in statuses if s.state is ModelState.END), None)
    if ended is not None:  # the server gave up on the model it found (or found none): no wait helps
        raise RolloutError(
            f"replica {address}: model {model_name!r} has no version {version} and ended in state END "
            f"({ended.error or 'no error message'}); the image holds another version, or none"
        )
    return ReplicaState(unknown, f"version {version} not listed (serving {served})")


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
    pending = dict.fromkeys(addresses, ReplicaState(ModelState.UNKNOWN, "not contacted yet"))
    while pending:
        for address in list(pending):
            if alive is not None:
                alive(address)
            pending[address] = replica_state(address, model_name, version)
            if pending[address].available:
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
