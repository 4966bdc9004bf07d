"""The signature gate: a new model must not break the clients of the one that serves now.

Both signatures are read from the servers themselves (GetModelMetadata), as a client sees them:
the candidate replica and one replica of what serves. InfraValidator only checks that calls
succeed; a retrained model that renamed an output passes that and breaks every client.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import grpc

from ..errors import IncompatibleSignature
from ..model.savedmodel import signature_from_proto
from ..serving.signature import Signature, breaking_changes

log = logging.getLogger(__name__)


def served_signature(address: str, model_name: str, signature_name: str = "serving_default") -> Signature:
    from ..serving.client import ServingClient

    with ServingClient(address) as client:
        return signature_from_proto(signature_name, client.signature_def(model_name, signature_name))


def check_signature_change(
    serving: str,
    candidate: str,
    *,
    model_name: str,
    signature_name: str = "serving_default",
    allow: bool = False,
    dial: Mapping[str, str] | None = None,
) -> list[str]:
    """The breaking changes from the replica ``serving`` to ``candidate`` (addresses; ``dial``
    maps them to where to connect). Raises IncompatibleSignature on any, unless ``allow``.

    A serving replica that does not answer is not compared (logged): a broken model must not
    stand in the way of its replacement.
    """
    dial = dial or {}
    try:
        before = served_signature(dial.get(serving, serving), model_name, signature_name)
    except grpc.RpcError as exc:
        log.warning("signature not compared: serving replica %s did not answer GetModelMetadata (%s)", serving, exc)
        return []
    after = served_signature(dial.get(candidate, candidate), model_name, signature_name)
    changes = breaking_changes(before, after)
    if changes and not allow:
        raise IncompatibleSignature(
            f"the candidate's signature {signature_name!r} of model {model_name!r} breaks clients of the "
            f"one serving now ({serving}):\n  - " + "\n  - ".join(changes) + "\nthe current model keeps "
            "serving; re-export the model with the old names, dtypes and shapes, or set "
            "allow_signature_change=true once every client is ready for the new signature"
        )
    return changes
