"""The permissions the deploying identity needs, and the least-privilege Role that grants them.

Pure data, like manifests.py: commit the Role with the rest (GitOps). The kubernetes target
reviews exactly these verbs (SelfSubjectAccessReview) before it changes anything.

The invariant: the Role grants what a deploy with the given params uses, nothing more.

* ``DEPLOY_ACCESS`` is what every deploy uses; a Role without one of these is refused up front.
* ``EXTRAS`` each buy one thing; the target requires an extra only when its params use it
  (``cleanup`` unless ``keep_failed_first_deploy``, ``port-forward`` unless ``pod_access=pod-ip``),
  and ``measure`` never: without it the candidate is not measured and sizing keeps its documented
  defaults (a namespaced Role cannot read memory any other way: the kubelet's summary and its
  cAdvisor metrics are ``nodes/proxy``, cluster-wide, and TF Serving's metrics hold no memory).
* The model's own Deployment, Service and PodDisruptionBudget (``tfs-<model>``) are read,
  patched and deleted by name (``resourceNames``): the identity cannot touch another app's objects
  in the namespace. Create and list cannot be limited by name (the API authorizes them before
  there is a name), nor can the candidate pod be: its name carries the image digest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from ...errors import InvalidParameter
from .manifests import MANAGED_BY, object_name

DEFAULT_MODELS = ("resnet",)  # the DAG's default model_name


class Access(NamedTuple):
    verb: str
    group: str
    resource: str  # resource[/subresource]
    named: bool = False  # only the model's own object (resourceNames: tfs-<model>)


def _model_objects(verbs: tuple[str, ...]) -> tuple[Access, ...]:
    kinds = (("apps", "deployments"), ("", "services"), ("policy", "poddisruptionbudgets"))
    return tuple(Access(verb, group, kind, named=verb != "create") for group, kind in kinds for verb in verbs)


DEPLOY_ACCESS = (
    *_model_objects(("get", "create", "patch")),
    Access("get", "", "pods"),
    Access("list", "", "pods"),
    Access("create", "", "pods"),  # the candidate (serviceAccountName default, no token: see README)
    Access("delete", "", "pods"),  # the candidate, once validated or failed
    Access("list", "", "events"),  # why a pod did not start, in the error
    Access("get", "", "pods/log"),  # the last lines of a replica that died, in the error
)


@dataclass(frozen=True)
class Extra:
    """Verbs beyond ``DEPLOY_ACCESS`` that buy one thing, and what a deploy does without them."""

    access: tuple[Access, ...]
    buys: str
    without: str


EXTRAS = {
    "cleanup": Extra(
        _model_objects(("delete",)),
        "a failed first deploy (and the rollback of a first deploy) removes the model's Deployment, "
        "Service and PodDisruptionBudget",
        "set keep_failed_first_deploy: they are kept for inspection",
    ),
    "port-forward": Extra(
        # websocket upgrades are authorized as create since v1.31, as get before
        (Access("get", "", "pods/portforward"), Access("create", "", "pods/portforward")),
        "validation reaches each pod through the API server when the worker cannot route to pod IPs",
        "set pod_access=pod-ip (the worker must route to pod IPs)",
    ),
    "measure": Extra(
        (Access("get", "", "pods/exec"), Access("create", "", "pods/exec")),
        "the candidate's peak memory is read inside it (its cgroup), so the replicas' memory is sized from it; "
        "exec also reaches every other pod in the namespace",
        "memory keeps the defaults (sizing says so); the load time is still measured",
    ),
}
DEFAULT_EXTRAS = ("cleanup", "port-forward")  # what the DAG's default params use


def required_extras(*, keep_failed_first_deploy: bool, pod_access: str) -> tuple[str, ...]:
    """The extras a deploy with these params cannot do without (``measure`` is never one)."""
    return tuple(
        name
        for name, used in (("cleanup", not keep_failed_first_deploy), ("port-forward", pod_access != "pod-ip"))
        if used
    )


def access_for(extras: tuple[str, ...] | list[str]) -> list[Access]:
    unknown = sorted(set(extras) - set(EXTRAS))
    if unknown:
        raise InvalidParameter(f"unknown Role extras {unknown}; choose from {', '.join(EXTRAS)}")
    return [*DEPLOY_ACCESS, *(access for name in extras for access in EXTRAS[name].access)]


def deployer_role(
    namespace: str,
    *,
    models: tuple[str, ...] | list[str] = DEFAULT_MODELS,
    extras: tuple[str, ...] | list[str] = DEFAULT_EXTRAS,
    name: str = "tfserving-deployer",
) -> dict:
    """The least-privilege Role for the deploying identity in ``namespace`` (bind it to the
    Airflow connection's service account or user), for deploys of ``models`` using ``extras``;
    the Namespace itself must then exist."""
    if not models:
        raise InvalidParameter("deployer_role needs at least one model name: the Role names the model's objects")
    rules: dict[tuple[str, str, bool], list[str]] = {}
    for access in access_for(extras):
        rules.setdefault((access.group, access.resource, access.named), []).append(access.verb)
    names = sorted({object_name(model) for model in models})
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": MANAGED_BY}},
        "rules": [
            {
                "apiGroups": [group],
                "resources": [resource],
                **({"resourceNames": list(names)} if named else {}),
                "verbs": verbs,
            }
            for (group, resource, named), verbs in rules.items()
        ],
    }
