"""Before anything changes: the namespace exists (created when the identity may), and the real
authorizer says yes to every verb a deploy needs (SelfSubjectAccessReview), so a missing
permission fails up front, named, not half-way through a rollout."""

from __future__ import annotations

import logging

from ...errors import AccessDenied
from ..rbac import required_access
from .api import ApiCallError, KubernetesApi

log = logging.getLogger(__name__)


def ensure_namespace(api: KubernetesApi) -> bool:
    """True when this call created the namespace."""
    try:
        if api.read_namespace() is not None:
            return False
    except ApiCallError as exc:
        if exc.status != 403:
            raise
        log.info("may not read Namespace %s (HTTP 403): assuming it exists; the access review decides", api.namespace)
        return False
    created = api.create_namespace()
    log.info("namespace %s %s", api.namespace, "created" if created else "was created concurrently")
    return created


def check_access(api: KubernetesApi, *, cleanup: bool, port_forward: bool) -> None:
    denied = []
    for verb, group, resource in required_access(cleanup=cleanup, port_forward=port_forward):
        status = api.review_access(verb, group, resource)
        if not status.get("allowed"):
            why = status.get("reason") or status.get("evaluationError")
            denied.append(f"{verb} {resource}" + (f" ({why})" if why else ""))
    if denied:
        raise AccessDenied(
            f"the identity used for the Kubernetes API at {api.host} may not {'; '.join(denied)} in "
            f"namespace {api.namespace}; grant these verbs with a Role and RoleBinding in that namespace"
        )
