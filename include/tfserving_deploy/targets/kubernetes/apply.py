"""Create-or-patch, re-runnable without server-side apply.

Each object is read, created when absent (a 409 there means another run won the race; its live
state is then compared like any other), and merge-patched only when a field this target owns
differs, so an identical re-run writes nothing. What served before an image change (replicas,
pod template, annotations) is kept in the ``previous-spec`` annotation, for rollback.

Why not server-side apply (measured on the v1.34 cluster; docs/readme-apiretry.md): an identical
apply leaves the object as it was (same resourceVersion and managedFields) but is still a PATCH
per object per run, which the audit log records as a write; a same-revision re-run would write
its new per-run metadata; an apply that omits ``previous-spec`` deletes it; ``kubectl scale``'s
replicas make it a 409 conflict unless forced (forced, it does what the merge patch does); and
fields that today's create/patch wrote stay owned by that ``Update`` entry. Keeping "no write"
and the rollback history would need this read and compare anyway.
"""

from __future__ import annotations

import copy
import json
import logging

from ...errors import TargetError
from ..results import Change
from .api import KubernetesApi
from .manifests import (
    ANNOTATION_META,
    ANNOTATION_PREVIOUS_IMAGE,
    ANNOTATION_PREVIOUS_SPEC,
    ANNOTATION_RESTORED_FROM,
    INTERNAL_LB_ANNOTATIONS,
)
from .objects import contains, image_of, owned_annotations

log = logging.getLogger(__name__)

HISTORY_ANNOTATIONS = (ANNOTATION_PREVIOUS_IMAGE, ANNOTATION_PREVIOUS_SPEC, ANNOTATION_RESTORED_FROM)


# Service fields only some exposures set: a re-run with another service_type or without source
# ranges must remove them (a merge patch keeps whatever it does not mention).
SERVICE_OPTIONAL = {"annotations": dict.fromkeys(INTERNAL_LB_ANNOTATIONS), "spec": {"loadBalancerSourceRanges": None}}


def apply_service(api: KubernetesApi, desired: dict) -> Change:
    core = api.core
    return _apply(
        api,
        desired,
        core.read_namespaced_service,
        core.create_namespaced_service,
        core.patch_namespaced_service,
        optional=SERVICE_OPTIONAL,
    )


def apply_disruption_budget(api: KubernetesApi, desired: dict) -> Change:
    policy = api.policy
    return _apply(
        api,
        desired,
        policy.read_namespaced_pod_disruption_budget,
        policy.create_namespaced_pod_disruption_budget,
        policy.patch_namespaced_pod_disruption_budget,
    )


def _apply(api: KubernetesApi, desired: dict, read, create, patch, optional: dict | None = None) -> Change:
    """Create, or patch the fields this target owns (labels, annotations, spec) when they differ;
    ``optional`` owned fields that ``desired`` leaves out are removed."""
    kind, name = desired["kind"], desired["metadata"]["name"]
    live = _read_or_create(api, kind, desired, read, create)
    if live is None:
        return Change.CREATED
    optional = optional or {}
    owned = {
        "metadata": {
            "labels": desired["metadata"].get("labels", {}),
            "annotations": {**optional.get("annotations", {}), **desired["metadata"].get("annotations", {})},
        },
        "spec": {**optional.get("spec", {}), **desired["spec"]},
    }
    if contains(live, owned):
        return Change.UNCHANGED
    api.patch(f"patch {kind} {api.namespace}/{name}", patch, name, owned)
    return Change.UPDATED


def apply_deployment(api: KubernetesApi, desired: dict) -> tuple[Change, dict | None, dict]:
    """(what changed, what the live Deployment was before a patch, the owned annotations it now carries)."""
    name = desired["metadata"]["name"]
    live = _read_or_create(
        api, "Deployment", desired, api.apps.read_namespaced_deployment, api.apps.create_namespaced_deployment
    )
    if live is None:
        return Change.CREATED, None, desired["metadata"]["annotations"]
    owned_live = owned_annotations(live)
    wanted = desired["metadata"]["annotations"]
    stale = {k: None for k in owned_live if k.startswith(ANNOTATION_META) and k not in wanted}  # dropped metadata
    owned = {
        "metadata": {"labels": desired["metadata"]["labels"], "annotations": desired["metadata"]["annotations"]},
        "spec": {k: v for k, v in desired["spec"].items() if k != "selector"},  # the selector is immutable
    }
    # The same revision (pod template, replicas, image, version) already serves: keep the
    # metadata it was deployed with (which run, from which artifact) and write nothing. The
    # metadata varies per run (run date, run id), so comparing it would patch on every re-run.
    revision = {
        **owned,
        "metadata": {
            **owned["metadata"],
            "annotations": {k: v for k, v in wanted.items() if not k.startswith(ANNOTATION_META)},
        },
    }
    if contains(live, revision):
        return Change.UNCHANGED, None, owned_live
    before = {
        "replicas": live["spec"].get("replicas", 1),
        "template": live["spec"]["template"],
        "annotations": owned_live,
    }
    patch = copy.deepcopy(owned)
    patch["metadata"]["annotations"].update(stale)
    live_image = image_of(live["spec"]["template"])
    if live_image != image_of(desired["spec"]["template"]):  # remember what served, for rollback
        served = {k: v for k, v in owned_live.items() if k not in HISTORY_ANNOTATIONS}
        patch["metadata"]["annotations"].update(
            {
                ANNOTATION_PREVIOUS_IMAGE: live_image,
                ANNOTATION_PREVIOUS_SPEC: json.dumps({**before, "annotations": served}, separators=(",", ":")),
            }
        )
    api.patch(f"patch Deployment {api.namespace}/{name}", api.apps.patch_namespaced_deployment, name, patch)
    return Change.UPDATED, before, desired["metadata"]["annotations"]


def _read_or_create(api: KubernetesApi, kind: str, desired: dict, read, create) -> dict | None:
    """The live object, or None when this call created it. Reads first, so an identical re-run
    sends no write at all."""
    name = desired["metadata"]["name"]
    what = f"{kind} {api.namespace}/{name}"
    live = api.read(f"read {what}", read, name, api.namespace)
    if live is not None:
        return live
    if api.create(f"create {what}", create, api.namespace, desired):
        return None
    live = api.read(f"read {what}", read, name, api.namespace)
    if live is None:
        raise TargetError(f"{what} answered 409 AlreadyExists on create, then 404 on read: it is being deleted; retry")
    log.info("%s was created concurrently by someone else; comparing with it", what)
    return live
