"""The TF-free GetModelStatus speaks TF Serving's wire format and imports no TensorFlow.

Against a live server: test_serving_server.py (the drop-in server) and every target test.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tensorflow_serving.apis import get_model_status_pb2

from tfserving_deploy.model_status import GetModelStatusRequest, GetModelStatusResponse


def test_a_request_reads_as_tf_servings_own():
    request = GetModelStatusRequest()
    request.model_spec.name = "resnet"
    theirs = get_model_status_pb2.GetModelStatusRequest.FromString(request.SerializeToString())
    assert theirs.model_spec.name == "resnet"


def test_tf_servings_response_reads_the_same_every_field():
    theirs = get_model_status_pb2.GetModelStatusResponse()
    version = get_model_status_pb2.ModelVersionStatus
    theirs.model_version_status.add(version=1538687457, state=version.AVAILABLE)
    failed = theirs.model_version_status.add(version=1600000000, state=version.END)
    failed.status.error_code = 3  # INVALID_ARGUMENT
    failed.status.error_message = "Could not find SavedModel .pb or .pbtxt"
    ours = GetModelStatusResponse.FromString(theirs.SerializeToString())
    assert [(s.version, s.state, s.status.error_code, s.status.error_message) for s in ours.model_version_status] == [
        (1538687457, 30, 0, ""),
        (1600000000, 50, 3, "Could not find SavedModel .pb or .pbtxt"),
    ]


def test_status_checks_import_no_tensorflow():
    """What the change check, the waits and the local target's readiness import."""
    probe = (
        "import sys, json\n"
        "import tfserving_deploy.model_status, tfserving_airflow.sensors, tfserving_airflow.operators.model\n"
        "import tfserving_deploy.artifact, tfserving_deploy.targets.local, tfserving_deploy.targets.kubernetes\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_serving'))))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(result.stdout.splitlines()[-1]) == []
