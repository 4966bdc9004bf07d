"""What validation asks of a candidate and of what serves."""

from __future__ import annotations

from dataclasses import dataclass

from ..serving.server_config import SERVING_SECTION
from ..settings import Settings, setting

MAX_BALANCE_CHECK_SECONDS = 600


@dataclass(frozen=True)
class ValidationSettings(Settings):
    expected_class: int | None = setting(
        None,
        "Optional class the validation cat photo must get (286 for the tutorial model).",
        minimum=0,
    )
    allow_signature_change: bool = setting(
        False,
        "Promote a model whose signature breaks clients of the one serving now (an input or output "
        "removed or renamed, another dtype, a narrower input shape). Off: such a model fails "
        "validate_candidate with the differences, and the current model keeps serving.",
    )
    balance_check_seconds: int = setting(
        120,
        "validate sends requests through the load balancer on one gRPC channel until every ready pod "
        "has answered, for at most this long, and fails if one got none. 0: no check.",
        minimum=0,
        maximum=MAX_BALANCE_CHECK_SECONDS,
        section=SERVING_SECTION,
    )
