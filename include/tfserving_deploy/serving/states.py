"""The states of a model version on a server, as TF Serving names and numbers them; no gRPC
needed to name one (readiness probes read them from the REST API's JSON)."""

from __future__ import annotations

from enum import Enum


class ModelState(Enum):
    """A model version's state on a server: TF Serving's ``ModelVersionStatus.State``
    (tensorflow_serving/apis/get_model_status.proto), with its wire numbers."""

    UNKNOWN = 0
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50  # unloaded, or failed to load (the status says why): the server does not retry

    @classmethod
    def of(cls, number: int) -> ModelState:
        """The state a wire number stands for; a number this enum does not know is UNKNOWN."""
        try:
            return cls(number)
        except ValueError:
            return cls.UNKNOWN
