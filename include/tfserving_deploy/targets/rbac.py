"""The permissions the deploying identity needs, and the least-privilege Role that grants them.

Pure data, like manifests.py: commit the Role with the rest (GitOps). The kubernetes target
reviews exactly these verbs (SelfSubjectAccessReview) before it changes anything.
"""

from __future__ import annotations

from .manifests import MANAGED_BY

# (verb, API group, resource[/subresource]) the deploying identity needs in its namespace; the
# kubernetes target reviews exactly these (SelfSubjectAccessReview) before it changes anything.
REQUIRED_ACCESS = [
    ("get", "apps", "deployments"),
    ("create", "apps", "deployments"),
    ("patch", "apps", "deployments"),
    ("get", "", "services"),
    ("create", "", "services"),
    ("patch", "", "services"),
    ("get", "", "pods"),
    ("list", "", "pods"),
    ("create", "", "pods"),  # the candidate
    ("delete", "", "pods"),
    ("list", "", "events"),
    ("get", "", "pods/log"),  # the last lines of a replica that died, in the error
    # the candidate's peak memory, read inside it (sizing); websocket exec needs create since 1.31, get before
    ("get", "", "pods/exec"),
    ("create", "", "pods/exec"),
    ("get", "policy", "poddisruptionbudgets"),
    ("create", "policy", "poddisruptionbudgets"),
    ("patch", "policy", "poddisruptionbudgets"),
]
CLEANUP_ACCESS = [  # a failed first deploy is removed
    ("delete", "apps", "deployments"),
    ("delete", "", "services"),
    ("delete", "policy", "poddisruptionbudgets"),
]
PORT_FORWARD_ACCESS = [("get", "", "pods/portforward"), ("create", "", "pods/portforward")]  # pods from outside


def required_access(*, cleanup: bool = True, port_forward: bool = True) -> list[tuple[str, str, str]]:
    return REQUIRED_ACCESS + (CLEANUP_ACCESS if cleanup else []) + (PORT_FORWARD_ACCESS if port_forward else [])


def deployer_role(namespace: str, name: str = "tfserving-deployer") -> dict:
    """The least-privilege Role for the deploying identity in ``namespace`` (bind it to the
    Airflow connection's service account or user); the Namespace itself must then exist."""
    rules: dict[tuple[str, str], list[str]] = {}
    for verb, group, resource in required_access():
        rules.setdefault((group, resource), []).append(verb)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": MANAGED_BY}},
        "rules": [
            {"apiGroups": [group], "resources": [resource], "verbs": verbs}
            for (group, resource), verbs in rules.items()
        ],
    }
