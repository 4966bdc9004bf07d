"""What Kubernetes asks a serving pod: is the model AVAILABLE (readiness), and, when not, why.

TF Serving's REST status endpoint answers HTTP 200 in every state, so readiness must read the
state itself; the probe prints the status when it fails, so the pod's "Readiness probe failed"
event carries the state and the load error.
"""

from __future__ import annotations

import re

from ...defaults import REST_PORT
from ...serving.states import ModelState


def readiness_command(model_name: str) -> list[str]:
    """Exit 0 only when the REST API lists ``model_name`` and every version is AVAILABLE.

    Plain bash and its ``/dev/tcp``: the stock ``tensorflow/serving`` image has no python, curl
    or wget. An httpGet probe would pass while LOADING (the API answers 200 then), and a TCP
    probe only says that a port is open. On failure it prints the model's status, so the pod's
    "Readiness probe failed" event carries the state and the load error (END: see
    ``model_load_failure``).
    """
    request = f"GET /v1/models/{model_name} HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n"
    script = (
        f"exec 3<>/dev/tcp/127.0.0.1/{REST_PORT} || exit 1; printf '{request}' >&3; body=$(cat <&3); "
        'case "$body" in *LOADING*|*START*|*\\"END\\"*) ;; *\\"AVAILABLE\\"*) exit 0;; esac; '
        "body=${body#*$'\\r\\n\\r\\n'}; set -f; echo ${body}; exit 1"
    )
    return ["bash", "-c", script]


_END_STATE = re.compile(rf'"state"\s*:\s*"{ModelState.END.name}"')  # the REST API names the states
_ERROR_MESSAGE = re.compile(r'"error_message"\s*:\s*"((?:[^"\\]|\\.)*)"')


def model_load_failure(probe_output: str) -> str | None:
    """The load error when ``readiness_command``'s output says the model ended in END (a load
    that failed for good: no retry brings it back), else None."""
    if not _END_STATE.search(probe_output or ""):
        return None
    found = _ERROR_MESSAGE.search(probe_output)
    return found.group(1).replace('\\"', '"') if found else "no error message"
