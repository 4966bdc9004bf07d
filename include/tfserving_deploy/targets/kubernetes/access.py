"""Before anything changes: the namespace exists (created when the identity may), and the real
authorizer says yes to every verb a deploy needs (SelfSubjectAccessReview), so a missing
permission fails up front, named, not half-way through a rollout."""

from __future__ import annotations

import logging

from ...errors import AccessDenied
from .api import ApiCallError, KubernetesApi
from .manifests import object_name
from .rbac import EXTRAS, Access, access_for

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


def check_access(api: KubernetesApi, model_name: str, *, required: tuple[str, ...]) -> dict[str, bool]:
    """Refuse up front (AccessDenied, every missing verb named) when the identity lacks a verb of
    ``DEPLOY_ACCESS`` or of the ``required`` extras, for ``model_name``'s own objects. The other
    extras are asked about too: ``{extra: granted}`` for them, and what a deploy does without each
    one is logged (they are never required: see ``rbac``)."""
    denied = _denied(api, model_name, access_for(required))
    if denied:
        raise AccessDenied(
            f"the identity used for the Kubernetes API at {api.host} may not {'; '.join(denied)} in "
            f"namespace {api.namespace}; grant these verbs with a Role and RoleBinding in that namespace "
            "(rbac.deployer_role renders it)"
        )
    granted = {}
    for name, extra in EXTRAS.items():
        if name in required:
            continue
        granted[name] = not _denied(api, model_name, list(extra.access), stop_at_first=True)
        if not granted[name]:
            log.warning(
                "the identity may not %s in namespace %s (the Role's %r extra): %s",
                " or ".join(f"{a.verb} {a.resource}" for a in extra.access),
                api.namespace,
                name,
                extra.without,
            )
    return granted


def _denied(api: KubernetesApi, model_name: str, wanted: list[Access], *, stop_at_first: bool = False) -> list[str]:
    """What the real authorizer refuses of ``wanted``, each as "verb resource (why)"."""
    denied = []
    for access in wanted:
        name = object_name(model_name) if access.named else None
        status = api.review_access(access.verb, access.group, access.resource, name)
        if not status.get("allowed"):
            why = status.get("reason") or status.get("evaluationError")
            what = f"{access.verb} {access.resource}" + (f" {name}" if name else "")
            denied.append(what + (f" ({why})" if why else ""))
            if stop_at_first:
                break
    return denied
