"""The admission policy that holds the deploying identity to the pods this target makes.

RBAC grants verbs, not contents: ``create pods`` (the candidate) and ``create``/``patch
deployments`` in a namespace let the identity run a pod as any ServiceAccount there, with its
token, and mount any Secret there. A ValidatingAdmissionPolicy (GA since Kubernetes 1.30) can say
what those pods look like. For requests by the deploying identity only, in its namespace only,
every Pod it creates and every Deployment it writes must have a pod spec that:

* runs as ``POD_SERVICE_ACCOUNT`` (the namespace's ``default``) with no API token mounted;
* mounts only ``emptyDir`` volumes (no Secret, ConfigMap, hostPath, PVC or projected token);
* takes no environment from a Secret (``envFrom`` / ``valueFrom.secretKeyRef``).

Those are exactly the pods ``manifests.pod_spec`` makes. Privilege (host namespaces, root,
capabilities) is Pod Security's job: label the namespace ``pod-security.kubernetes.io/enforce:
restricted`` (the serving pods meet it). Pure data, like rbac.py: a cluster admin applies it.
"""

from __future__ import annotations

import json

from .manifests import MANAGED_BY, POD_SERVICE_ACCOUNT

SPEC = "request.kind.kind == 'Pod' ? object.spec : object.spec.template.spec"
CONTAINERS = "variables.spec.containers + variables.spec.?initContainers.orValue([])"
NO_SECRET_ENV = (
    "variables.containers.all(c, !c.?envFrom.orValue([]).exists(e, has(e.secretRef)) && "
    "!c.?env.orValue([]).exists(e, has(e.valueFrom) && has(e.valueFrom.secretKeyRef)))"
)


def policy_name(namespace: str) -> str:
    return f"tfserving-deployer-pods.{namespace}"


def deployer_pod_policy(namespace: str, username: str, *, service_account: str = POD_SERVICE_ACCOUNT) -> list[dict]:
    """[ValidatingAdmissionPolicy, its binding] for the identity ``username`` (a ServiceAccount's is
    ``system:serviceaccount:<namespace>:<name>``) deploying into ``namespace``."""
    name = policy_name(namespace)
    labels = {"app.kubernetes.io/managed-by": MANAGED_BY}
    account = json.dumps(service_account)  # a CEL string literal
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]},
                    {
                        "apiGroups": ["apps"],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["deployments"],
                    },
                ]
            },
            "matchConditions": [
                {"name": "the-deploying-identity", "expression": f"request.userInfo.username == {json.dumps(username)}"}
            ],
            "variables": [{"name": "spec", "expression": SPEC}, {"name": "containers", "expression": CONTAINERS}],
            "validations": [
                {
                    "expression": f"variables.spec.?serviceAccountName.orValue('default') == {account}",
                    "message": f"pods made by the tfserving deployer run as ServiceAccount {service_account}",
                    "reason": "Forbidden",
                },
                {
                    "expression": "variables.spec.?automountServiceAccountToken.orValue(true) == false",
                    "message": "pods made by the tfserving deployer set automountServiceAccountToken: false",
                    "reason": "Forbidden",
                },
                {
                    "expression": "variables.spec.?volumes.orValue([]).all(v, has(v.emptyDir))",
                    "message": "pods made by the tfserving deployer mount emptyDir volumes only",
                    "reason": "Forbidden",
                },
                {
                    "expression": NO_SECRET_ENV,
                    "message": "pods made by the tfserving deployer take no environment from Secrets",
                    "reason": "Forbidden",
                },
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}},
        },
    }
    return [policy, binding]
