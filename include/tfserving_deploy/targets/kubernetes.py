"""The ``kubernetes`` target: one Deployment and one Service per model, in one namespace.

Re-runnable without server-side apply: each object is read, created when absent (a 409 there
means another run won the race), and merge-patched only when a field this target owns
differs, so an identical re-run writes nothing. The rollout is watched through the Deployment
status and the pods that run the new image; it fails early on what waiting will not heal
(image pull errors, crash loops, unschedulable pods, the progress deadline), quoting the pod's
events. A failed rollout is undone: the Deployment goes back to the spec it had before, and a
first-ever deployment is deleted (unless ``keep_failed_first_deploy``).

What served before the last image change (replicas, pod template, annotations) is kept in the
``tfserving-deploy/previous-spec`` annotation, so ``rollback`` can restore it later too, e.g.
when validation fails after a successful rollout.

Like the ``local`` target it also runs a *candidate*: one pod of the new image that the
Service does not select, for validation before promotion.

The caller builds the ``kubernetes.client.ApiClient`` (from a kubeconfig, the provider's hook,
or a GKE endpoint + CA + token); this module only talks to the API through it, and works on
the API's JSON as dicts (``_preload_content=False``), the same shape as the manifests.
"""

from __future__ import annotations

import copy
import json
import logging
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from ..errors import RolloutError, TargetError
from ..images import is_loopback, registry_host
from .portforward import PodPortForward
from .manifests import (
    ANNOTATION_META,
    ANNOTATION_PREFIX,
    ANNOTATION_PREVIOUS_IMAGE,
    ANNOTATION_PREVIOUS_SPEC,
    ANNOTATION_RESTORED_FROM,
    ANNOTATION_VERSION,
    CONTAINER_NAME,
    GRPC_PORT,
    MANAGED_BY,
    PROGRESS_DEADLINE_SECONDS,
    SERVICE_TYPES,
    candidate_labels,
    candidate_pod_manifest,
    check_resources,
    deployment_manifest,
    load_balancer_address as service_address,
    model_load_failure,
    object_name,
    required_access,
    selector_labels,
    service_manifest,
    write_manifests,
)

log = logging.getLogger(__name__)

POD_ACCESS = ("auto", "pod-ip", "port-forward")
POD_DIAL_TIMEOUT = 3.0  # seconds to decide whether pod IPs are routable from here

MERGE_PATCH = "application/merge-patch+json"  # lists are replaced whole
REQUEST_TIMEOUT = 30.0
RETRYABLE_STATUSES = {409, 429, 500, 502, 503, 504}
HISTORY_ANNOTATIONS = (ANNOTATION_PREVIOUS_IMAGE, ANNOTATION_PREVIOUS_SPEC, ANNOTATION_RESTORED_FROM)
_PULL_HINT = (
    "check that the digest was pushed and that the nodes may pull from that registry "
    "(imagePullSecrets, or registry read access for the node service account)"
)
WAITING_FAILURES = {  # container waiting reasons that do not heal by waiting -> what to do
    "ErrImagePull": _PULL_HINT,
    "ImagePullBackOff": _PULL_HINT,
    "InvalidImageName": _PULL_HINT,
    "ErrImageNeverPull": _PULL_HINT,
    "CrashLoopBackOff": "the server exits soon after start; see `kubectl -n {namespace} logs {pod} --previous`",
    "CreateContainerConfigError": "the container could not be created; see the events",
    "CreateContainerError": "the container could not be created; see the events",
    "RunContainerError": "the container could not be started; see the events",
}


class ApiCallError(TargetError):
    """The API answered a call with an error status (kept as ``status``)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class _RolloutFailed(Exception):
    """A rollout that will not succeed; the message says why, quoting the pod's events."""


class KubernetesTarget:
    """Deploys to the cluster behind ``api_client``.

    Pods are named by their gRPC address ``<podIP>:8500`` (``endpoints``, ``serving_state``);
    ``reachable`` makes such addresses dialable from here. ``pod_access``: ``pod-ip`` dials pod
    IPs (Airflow inside the cluster's network), ``port-forward`` relays through the API server
    (Airflow outside it, e.g. a laptop or another VPC), ``auto`` tries a pod IP once and falls
    back to port-forwarding.

    ``unschedulable_grace``: how long a pod may stay Unschedulable before the rollout fails;
    with the cluster autoscaler or GKE Autopilot a pending pod is how new nodes get requested.
    """

    def __init__(
        self,
        api_client,
        *,
        namespace: str = "tfserving",
        service_type: str = "LoadBalancer",
        resources: dict | None = None,
        keep_failed_first_deploy: bool = False,
        manifest_dir: str | None = None,
        field_manager: str = "tfserving-deploy",
        poll_interval: float = 2.0,
        unschedulable_grace: float = 90.0,
        api_attempts: int = 5,
        retry_backoff: float = 0.5,
        progress_deadline_seconds: int = PROGRESS_DEADLINE_SECONDS,
        pod_access: str = "auto",
    ):
        from kubernetes import client

        if service_type not in SERVICE_TYPES:
            raise TargetError(f"service_type {service_type!r} is not one of {', '.join(SERVICE_TYPES)}")
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.authorization = client.AuthorizationV1Api(api_client)
        self.version_api = client.VersionApi(api_client)
        self.namespace = namespace
        self.service_type = service_type
        self.resources = check_resources(resources)
        self.keep_failed_first_deploy = keep_failed_first_deploy
        self.manifest_dir = manifest_dir
        self.field_manager = field_manager
        self.poll_interval = poll_interval
        self.unschedulable_grace = unschedulable_grace
        self.api_attempts = max(1, api_attempts)
        self.retry_backoff = retry_backoff
        self.progress_deadline_seconds = progress_deadline_seconds
        if pod_access not in POD_ACCESS:
            raise TargetError(f"pod_access {pod_access!r} is not one of {', '.join(POD_ACCESS)}")
        self.pod_access = pod_access
        self._pods_routable: bool | None = {"pod-ip": True, "port-forward": False}.get(pod_access)

    @property
    def api_host(self) -> str:
        return self.api_client.configuration.host

    # -- ensure_ready ----------------------------------------------------------------------------

    def ensure_ready(self, image_repository: str) -> dict:
        version = self._api("read the server version", self.version_api.get_code)
        created = self._ensure_namespace()
        self._check_access()
        registry = registry_host(image_repository) or "docker.io"
        if is_loopback(registry):
            log.warning(
                "image_repository %s is on this machine's loopback: cluster nodes can pull from it only "
                "if their container runtime mirrors that address (kind/k3d local registries do)",
                image_repository,
            )
        return {
            "api_host": self.api_host,
            "server_version": version.get("gitVersion"),
            "namespace": self.namespace,
            "namespace_created": created,
            "registry": registry,
        }

    def _ensure_namespace(self) -> bool:
        """True when this call created the namespace."""
        ns = self.namespace
        try:
            if self._read(f"read Namespace {ns}", self.core.read_namespace, ns) is not None:
                return False
        except ApiCallError as exc:
            if exc.status != 403:
                raise
            log.info("may not read Namespace %s (HTTP 403): assuming it exists; the access review decides", ns)
            return False
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
        created = self._create(f"create Namespace {ns}", self.core.create_namespace, body)
        log.info("namespace %s %s", ns, "created" if created else "was created concurrently")
        return created

    def _check_access(self) -> None:
        denied = []
        needed = required_access(cleanup=not self.keep_failed_first_deploy, port_forward=self.pod_access != "pod-ip")
        for verb, group, resource in needed:
            kind, _, subresource = resource.partition("/")
            attributes = {"namespace": self.namespace, "verb": verb, "group": group, "resource": kind,
                          **({"subresource": subresource} if subresource else {})}
            review = {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attributes},
            }
            answer = self._api(
                f"review access to {verb} {resource}", self.authorization.create_self_subject_access_review, review
            )
            status = answer.get("status") or {}
            if not status.get("allowed"):
                why = status.get("reason") or status.get("evaluationError")
                denied.append(f"{verb} {resource}" + (f" ({why})" if why else ""))
        if denied:
            raise TargetError(
                f"the identity used for the Kubernetes API at {self.api_host} may not {'; '.join(denied)} in "
                f"namespace {self.namespace}; grant these verbs with a Role and RoleBinding in that namespace"
            )

    # -- render ----------------------------------------------------------------------------------

    def render(
        self, image: str, *, model_name: str, version: int, replicas: int, metadata: dict | None = None
    ) -> list[dict]:
        """[Deployment, Service]; also written as YAML to ``manifest_dir`` when set."""
        deployment = deployment_manifest(
            image, model_name=model_name, version=version, replicas=replicas,
            namespace=self.namespace, resources=self.resources, metadata=metadata,
            progress_deadline_seconds=self.progress_deadline_seconds,
        )
        service = service_manifest(model_name=model_name, namespace=self.namespace, service_type=self.service_type)
        if self.manifest_dir:
            paths = write_manifests(self.manifest_dir, model_name, deployment, service)
            log.info("wrote %s", ", ".join(paths))
        return [deployment, service]

    # -- candidate (validate before promote) -----------------------------------------------------

    def start_candidate(self, image: str, *, model_name: str, version: int, ready_timeout: float = 300.0) -> list[str]:
        """One pod of ``image`` that the Service does not select; returns its gRPC address once
        ready. A candidate that fails is removed and the RolloutError quotes its events."""
        pod = candidate_pod_manifest(
            image, model_name=model_name, version=version, namespace=self.namespace, resources=self.resources
        )
        name = pod["metadata"]["name"]
        where = f"{self.namespace}/{name}"
        deadline = time.monotonic() + ready_timeout
        for other in self._candidates(model_name):
            if other["metadata"]["name"] != name:
                self._delete_pod(other["metadata"]["name"])
        live = self._read(f"read Pod {where}", self.core.read_namespaced_pod, name, self.namespace)
        if live is not None and (live["metadata"].get("deletionTimestamp") or _phase(live) in ("Failed", "Succeeded")):
            self._delete_pod(name)  # a leftover that cannot become ready: start afresh
            self._wait_gone(name, deadline)
            live = None
        if live is None:
            if not self._create(f"create Pod {where}", self.core.create_namespaced_pod, self.namespace, pod):
                log.info("candidate pod %s was created concurrently; waiting for it", where)
        unschedulable_since: dict[str, float] = {}
        while True:
            live = self._read(f"read Pod {where}", self.core.read_namespaced_pod, name, self.namespace)
            try:
                if live is None:
                    raise _RolloutFailed(f"candidate pod {where} disappeared while starting (deleted by someone?)")
                self._raise_on_pod_failure(live, f"candidate pod {where}", unschedulable_since)
                if _is_ready(live) and (live.get("status") or {}).get("podIP"):
                    log.info("candidate pod %s of %s is ready", where, image)
                    return [pod_grpc_address(live)]
                if time.monotonic() >= deadline:
                    raise _RolloutFailed(
                        f"candidate pod {where} of {image} not ready after {ready_timeout:g}s{self._pod_detail(live)}; "
                        "raise ready_timeout for large models"
                    )
            except _RolloutFailed as failure:
                self._delete_pod(name)
                raise RolloutError(f"{failure}\nremoved the candidate pod {where}; what serves is unchanged") from None
            time.sleep(self.poll_interval)

    def stop_candidate(self, model_name: str) -> int:
        """Delete the model's candidate pods; returns how many there were."""
        candidates = self._candidates(model_name)
        for pod in candidates:
            self._delete_pod(pod["metadata"]["name"])
        return len(candidates)

    # -- deploy / rollback -----------------------------------------------------------------------

    def deploy(
        self, image: str, *, model_name: str, version: int, replicas: int,
        ready_timeout: float = 600.0, metadata: dict | None = None,
    ) -> dict:
        """``metadata`` (e.g. the model's sha256, the run date) is kept in Deployment annotations
        and comes back from ``serving_state``; it is written with a new revision, and a re-deploy
        of the revision already serving keeps the metadata it was deployed with."""
        deployment, service = self.render(
            image, model_name=model_name, version=version, replicas=replicas, metadata=metadata
        )
        service_change = self._apply_service(service)
        deployment_change, before = self._apply_deployment(deployment)
        name = deployment["metadata"]["name"]
        log.info("Deployment %s/%s %s, Service %s", self.namespace, name, deployment_change, service_change)
        try:
            available = self._wait_for_rollout(model_name, image, replicas, ready_timeout)
        except _RolloutFailed as failure:
            raise self._undo(failure, model_name, image, deployment_change, before, ready_timeout) from None
        return {
            "deployment": f"{self.namespace}/{name}",
            "image": image,
            # this run changed what serves: a failed validation may roll back to what served before
            "promoted": deployment_change == "created" or (before is not None and _image_of(before["template"]) != image),
            "model_version": version,
            "deployment_change": deployment_change,
            "service_change": service_change,
            "available_replicas": available,
        }

    def rollback(
        self, model_name: str, reason: str = "", *, image: str | None = None, ready_timeout: float = 300.0
    ) -> str:
        """Restore what served before the last image change and wait for it.

        A first-ever deployment has nothing to go back to: it is deleted (unless
        ``keep_failed_first_deploy``). Safe to repeat: with ``image`` (the one that failed
        validation) nothing happens once the Deployment no longer runs it, and a Deployment
        already restored is left alone. Returns a sentence saying what was restored.
        """
        log.warning("rolling back model %r%s", model_name, f": {reason}" if reason else "")
        return self._restore_previous(model_name, ready_timeout, failed_image=image)

    def serving_state(self, model_name: str) -> dict | None:
        """What serves ``model_name`` now: image, ready replicas, their addresses and the deploy
        metadata; None when nothing does, or a rollout is caught half-way."""
        deployment = self._read_deployment(model_name)
        if deployment is None:
            return None
        image = _image_of(deployment["spec"]["template"])
        ready = [p for p in self._model_pods(model_name) if _is_ready(p)]
        if not ready or {_image_of(p) for p in ready} != {image}:
            return None
        annotations = deployment["metadata"].get("annotations") or {}
        metadata = {k[len(ANNOTATION_META):]: v for k, v in annotations.items() if k.startswith(ANNOTATION_META)}
        if annotations.get(ANNOTATION_VERSION):
            metadata["model-version"] = annotations[ANNOTATION_VERSION]
        addresses = [pod_grpc_address(p) for p in ready]
        return {"image": image, "replicas": len(ready), "addresses": addresses, "metadata": metadata}

    def _apply_service(self, desired: dict) -> str:
        name = desired["metadata"]["name"]
        what = f"Service {self.namespace}/{name}"
        live = self._read_or_create(
            what, desired, self.core.read_namespaced_service, self.core.create_namespaced_service
        )
        if live is None:
            return "created"
        owned = {"metadata": {"labels": desired["metadata"]["labels"]}, "spec": desired["spec"]}
        if _contains(live, owned):
            return "unchanged"
        self._patch(f"patch {what}", self.core.patch_namespaced_service, name, owned)
        return "patched"

    def _apply_deployment(self, desired: dict) -> tuple[str, dict | None]:
        """("created" | "patched" | "unchanged", what the live Deployment was before a patch)."""
        name = desired["metadata"]["name"]
        what = f"Deployment {self.namespace}/{name}"
        live = self._read_or_create(
            what, desired, self.apps.read_namespaced_deployment, self.apps.create_namespaced_deployment
        )
        if live is None:
            return "created", None
        owned_live = _owned_annotations(live)
        wanted = desired["metadata"]["annotations"]
        stale = {k: None for k in owned_live if k.startswith(ANNOTATION_META) and k not in wanted}  # dropped metadata
        owned = {
            "metadata": {"labels": desired["metadata"]["labels"], "annotations": desired["metadata"]["annotations"]},
            "spec": {k: v for k, v in desired["spec"].items() if k != "selector"},  # the selector is immutable
        }
        # The same revision (pod template, replicas, image, version) already serves: keep the
        # metadata it was deployed with (which run, from which artifact) and write nothing. The
        # metadata varies per run (run date, run id), so comparing it would patch on every re-run.
        revision = {**owned, "metadata": {**owned["metadata"], "annotations": {
            k: v for k, v in wanted.items() if not k.startswith(ANNOTATION_META)}}}
        if _contains(live, revision):
            return "unchanged", None
        before = {
            "replicas": live["spec"].get("replicas", 1),
            "template": live["spec"]["template"],
            "annotations": owned_live,
        }
        patch = copy.deepcopy(owned)
        patch["metadata"]["annotations"].update(stale)
        live_image = _image_of(live["spec"]["template"])
        if live_image != _image_of(desired["spec"]["template"]):  # remember what served, for rollback
            served = {k: v for k, v in owned_live.items() if k not in HISTORY_ANNOTATIONS}
            patch["metadata"]["annotations"].update({
                ANNOTATION_PREVIOUS_IMAGE: live_image,
                ANNOTATION_PREVIOUS_SPEC: json.dumps({**before, "annotations": served}, separators=(",", ":")),
            })
        self._patch(f"patch {what}", self.apps.patch_namespaced_deployment, name, patch)
        return "patched", before

    def _read_or_create(self, what: str, desired: dict, read, create) -> dict | None:
        """The live object, or None when this call created it.

        Reads first, so an identical re-run sends no write at all; a 409 on create means another
        run created it meanwhile, and its live state is compared like any other.
        """
        name = desired["metadata"]["name"]
        live = self._read(f"read {what}", read, name, self.namespace)
        if live is not None:
            return live
        if self._create(f"create {what}", create, self.namespace, desired):
            return None
        live = self._read(f"read {what}", read, name, self.namespace)
        if live is None:
            raise TargetError(
                f"{what} answered 409 AlreadyExists on create, then 404 on read: it is being deleted; retry"
            )
        log.info("%s was created concurrently by someone else; comparing with it", what)
        return live

    # -- waiting for a rollout -------------------------------------------------------------------

    def _wait_for_rollout(self, model_name: str, image: str, replicas: int, timeout: float) -> int:
        """Poll until ``replicas`` pods of ``image`` are available; returns how many are ready."""
        name = object_name(model_name)
        where = f"{self.namespace}/{name}"
        deadline = time.monotonic() + timeout
        unschedulable_since: dict[str, float] = {}
        while True:
            deployment = self._read_deployment(model_name)
            if deployment is None:
                raise _RolloutFailed(f"Deployment {where} disappeared during the rollout (deleted by someone?)")
            pods = [p for p in self._model_pods(model_name) if _image_of(p) == image]
            for pod in pods:
                which = f"Deployment {where}: pod {pod['metadata']['name']}"
                self._raise_on_pod_failure(pod, which, unschedulable_since)
            self._raise_on_deployment_failure(deployment, pods)
            done, progress = _progress(deployment, pods, replicas)
            if done:
                log.info("Deployment %s rolled out %s: %s", where, image, progress)
                return sum(_is_ready(p) for p in pods)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                waiting = next((p for p in pods if not _is_ready(p)), None)
                raise _RolloutFailed(
                    f"Deployment {where}: {image} not rolled out after {timeout:g}s ({progress})"
                    f"{self._pod_detail(waiting)}; raise ready_timeout for large models, or see "
                    f"`kubectl -n {self.namespace} describe deployment {name}`"
                )
            time.sleep(min(self.poll_interval, remaining))

    def _raise_on_pod_failure(self, pod: dict, which: str, unschedulable_since: dict[str, float]) -> None:
        """Fail on what waiting will not heal; ``which`` names the pod in the message."""
        pod_name = pod["metadata"]["name"]
        reason, message = _waiting_failure(pod)
        if reason:
            hint = WAITING_FAILURES[reason].format(namespace=self.namespace, pod=pod_name)
            raise _RolloutFailed(
                f"{which} is {reason}{': ' + message if message else ''}{_last_termination(pod)}; "
                f"events: {self._events(pod)}; {hint}"
            )
        if _phase(pod) == "Running" and not _is_ready(pod):
            load_error = self._model_load_failure(pod)
            if load_error:
                raise _RolloutFailed(
                    f"{which}: the model failed to load (state END): {load_error}; the server does not retry "
                    "after END: fix the model files (a SavedModel with a serving_default signature under "
                    "/models/<model_name>/<version>) and deploy again"
                )
        scheduled = _condition(pod, "PodScheduled")
        if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
            since = unschedulable_since.setdefault(pod_name, time.monotonic())
            if time.monotonic() - since >= self.unschedulable_grace:
                requests = (pod["spec"]["containers"][0].get("resources") or {}).get("requests")
                raise _RolloutFailed(
                    f"{which} is Unschedulable: {scheduled.get('message', '')}; events: {self._events(pod)}; "
                    f"no node can fit it: lower the resources requests ({requests}), or add nodes / enable the "
                    "cluster autoscaler"
                )

    def _raise_on_deployment_failure(self, deployment: dict, pods: list[dict]) -> None:
        if not _observed(deployment):
            return  # the conditions may still describe the previous revision
        where = f"{self.namespace}/{deployment['metadata']['name']}"
        for condition in (deployment.get("status") or {}).get("conditions") or []:
            kind, status, reason = condition.get("type"), condition.get("status"), condition.get("reason")
            if kind == "Progressing" and status == "False" and reason == "ProgressDeadlineExceeded":
                waiting = next((p for p in pods if not _is_ready(p)), None)
                raise _RolloutFailed(
                    f"Deployment {where}: ProgressDeadlineExceeded: {condition.get('message', '')}"
                    f"{self._pod_detail(waiting)}; the new pods did not become ready within progressDeadlineSeconds "
                    "(readiness waits for the model to be AVAILABLE): see the pod's logs"
                )
            if kind == "ReplicaFailure" and status == "True":
                raise _RolloutFailed(
                    f"Deployment {where}: ReplicaFailure {reason}: {condition.get('message', '')}; the ReplicaSet "
                    "could not create pods (a ResourceQuota or an admission policy refused them)"
                )

    def _pod_detail(self, pod: dict | None) -> str:
        if pod is None:
            return ""
        pod_name = pod["metadata"]["name"]
        return f"; pod {pod_name}: {_pod_state(pod)}; events: {self._events(pod)}"

    def _events(self, pod: dict, last: int = 5) -> str:
        """The pod's latest events as ``Type Reason: message``."""
        try:
            events = self._pod_events(pod)
        except TargetError as exc:
            return f"(could not list them: {exc})"
        quoted = [
            f"{e.get('type', '?')} {e.get('reason', '?')}: {(e.get('message') or '').strip()}" for e in events[-last:]
        ]
        return " | ".join(quoted) or "none"

    def _pod_events(self, pod: dict) -> list[dict]:
        """This pod's events (not those of an earlier pod of the same name), oldest first."""
        name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
        listing = self._api(
            f"list events of pod {self.namespace}/{name}", self.core.list_namespaced_event,
            self.namespace, field_selector=f"involvedObject.name={name},involvedObject.uid={uid}",
        )
        return sorted(listing.get("items") or [], key=_event_time)

    def _model_load_failure(self, pod: dict) -> str | None:
        """The load error if the pod's latest failed readiness probe says the model is in END."""
        for event in reversed(self._pod_events(pod)):
            if event.get("reason") == "Unhealthy" and "Readiness probe failed" in (event.get("message") or ""):
                return model_load_failure(event["message"])
        return None

    # -- undoing a rollout -----------------------------------------------------------------------

    def _undo(
        self, failure: _RolloutFailed, model_name: str, image: str, change: str, before: dict | None, timeout: float
    ) -> RolloutError:
        """Undo what this deploy changed; the RolloutError says what failed and what was restored."""
        try:
            if change == "created":
                restored = self._remove_first_deployment(model_name)
            elif change == "patched":
                restored = self._restore_spec(model_name, before, timeout, replaced_image=image)
            else:  # this run wrote nothing: an earlier run left this revision in place
                restored = self._restore_previous(model_name, timeout, failed_image=image)
        except TargetError as exc:
            return RolloutError(f"{failure}\nrollback failed too: {exc}")
        return RolloutError(f"{failure}\nrolled back: {restored}")

    def _restore_previous(self, model_name: str, timeout: float, *, failed_image: str | None) -> str:
        """Go back to the ``previous-spec`` annotation recorded at the last image change."""
        name = object_name(model_name)
        where = f"{self.namespace}/{name}"
        live = self._read_deployment(model_name)
        if live is None:
            return f"nothing to restore: Deployment {where} does not exist"
        live_image = _image_of(live["spec"]["template"])
        if failed_image and live_image != failed_image:
            return f"nothing to roll back: Deployment {where} runs {live_image}, not {failed_image}"
        annotations = live["metadata"].get("annotations") or {}
        if not annotations.get(ANNOTATION_PREVIOUS_SPEC):
            if annotations.get(ANNOTATION_RESTORED_FROM):
                return (
                    f"nothing older to roll back to: Deployment {where} already runs {live_image}, restored "
                    f"in place of {annotations[ANNOTATION_RESTORED_FROM]}"
                )
            return self._remove_first_deployment(model_name)
        previous = json.loads(annotations[ANNOTATION_PREVIOUS_SPEC])
        return self._restore_spec(model_name, previous, timeout, replaced_image=live_image)

    def _restore_spec(self, model_name: str, snapshot: dict, timeout: float, *, replaced_image: str) -> str:
        """Patch the Deployment back to ``snapshot`` (replicas, template, owned annotations) and wait."""
        name = object_name(model_name)
        where = f"{self.namespace}/{name}"
        live = self._read_deployment(model_name)
        if live is None:
            return f"nothing to restore: Deployment {where} does not exist"
        image = _image_of(snapshot["template"])
        annotations = {key: None for key in _owned_annotations(live)}  # null deletes in a merge patch
        annotations.update(snapshot["annotations"])
        annotations[ANNOTATION_RESTORED_FROM] = replaced_image
        patch = {
            "metadata": {"annotations": annotations},
            "spec": {"replicas": snapshot["replicas"], "template": snapshot["template"]},
        }
        self._patch(f"patch Deployment {where} back to {image}", self.apps.patch_namespaced_deployment, name, patch)
        try:
            available = self._wait_for_rollout(model_name, image, snapshot["replicas"], timeout)
        except _RolloutFailed as exc:
            raise TargetError(f"restoring {image} did not finish: {exc}") from None
        version = snapshot["annotations"].get(ANNOTATION_VERSION) or "unknown"
        return f"restored {image} (model version {version}), {available}/{snapshot['replicas']} available"

    def _remove_first_deployment(self, model_name: str) -> str:
        where = f"{self.namespace}/{object_name(model_name)}"
        if self.keep_failed_first_deploy:
            return (
                f"kept Deployment and Service {where} for inspection (keep_failed_first_deploy); it was the "
                f"first deployment of {model_name!r}, so nothing served before it"
            )
        for kind, call in (
            ("Deployment", self.apps.delete_namespaced_deployment),
            ("Service", self.core.delete_namespaced_service),
        ):
            try:
                self._api(
                    f"delete {kind} {where}", call, object_name(model_name), self.namespace,
                    expect=(404,), propagation_policy="Background",
                )
            except ApiCallError as exc:
                if exc.status != 404:
                    raise
        return (
            f"deleted Deployment and Service {where}: it was the first deployment of {model_name!r}, "
            "nothing served before it"
        )

    # -- pods and addresses ----------------------------------------------------------------------

    def endpoints(self, model_name: str, image: str) -> list[str]:
        """The gRPC address of every ready pod running ``image`` (validate each one: one gRPC
        connection through an L4 load balancer stays on one pod); [] while none is ready."""
        pods = [p for p in self._model_pods(model_name) if _image_of(p) == image]
        return [pod_grpc_address(p) for p in pods if _is_ready(p) and (p.get("status") or {}).get("podIP")]

    def load_balancer_address(self, model_name: str) -> str | None:
        """``host:8500`` of the Service's load balancer; None while the cloud is still provisioning it."""
        name = object_name(model_name)
        what = f"read Service {self.namespace}/{name}"
        service = self._read(what, self.core.read_namespaced_service, name, self.namespace)
        if service is None:
            raise TargetError(f"Service {self.namespace}/{name} does not exist; deploy model {model_name!r} first")
        return service_address(service)

    def _read_deployment(self, model_name: str) -> dict | None:
        name = object_name(model_name)
        return self._read(
            f"read Deployment {self.namespace}/{name}", self.apps.read_namespaced_deployment, name, self.namespace
        )

    @contextmanager
    def reachable(self, addresses: list[str]) -> Iterator[dict[str, str]]:
        """``{address: what to dial}`` for the given addresses, valid inside the ``with``.

        A pod's address maps to itself when this machine reaches pod IPs, else to a local
        port-forward through the API server; other addresses (a load balancer) map to themselves.
        """
        pods = {
            pod_grpc_address(p): p for p in self._pods_labelled({"app.kubernetes.io/managed-by": MANAGED_BY})
            if (p.get("status") or {}).get("podIP")
        }
        with ExitStack() as forwards:
            dial = {}
            for address in addresses:
                pod = pods.get(address)
                if pod is None or self._reaches_pods(address):
                    dial[address] = address
                    continue
                forward = forwards.enter_context(
                    PodPortForward(self.api_client, self.namespace, pod["metadata"]["name"], GRPC_PORT)
                )
                log.info("pod %s (%s) is reached through a port-forward at %s", pod["metadata"]["name"], address,
                         forward.address)
                dial[address] = forward.address
            yield dial

    def _reaches_pods(self, address: str) -> bool:
        """Whether pod IPs are routable from here: decided once, by dialing one pod."""
        if self._pods_routable is None:
            host, _, port = address.rpartition(":")
            try:
                socket.create_connection((host.strip("[]"), int(port)), timeout=POD_DIAL_TIMEOUT).close()
                self._pods_routable = True
            except OSError as exc:
                log.info("pod IP %s is not reachable from here (%s): using port-forwards through %s",
                         address, exc, self.api_host)
                self._pods_routable = False
        return self._pods_routable

    def _model_pods(self, model_name: str) -> list[dict]:
        """The pods the Deployment (and the Service) select, not terminating, by name."""
        return self._pods_labelled(selector_labels(model_name))

    def _candidates(self, model_name: str) -> list[dict]:
        return self._pods_labelled(candidate_labels(model_name))

    def _pods_labelled(self, labels: dict) -> list[dict]:
        listing = self._api(
            f"list pods labelled {labels} in {self.namespace}", self.core.list_namespaced_pod,
            self.namespace, label_selector=",".join(f"{k}={v}" for k, v in labels.items()),
        )
        pods = [p for p in listing.get("items") or [] if not p["metadata"].get("deletionTimestamp")]
        return sorted(pods, key=lambda p: p["metadata"]["name"])

    def _delete_pod(self, name: str) -> None:
        """Candidates get no traffic: no grace period needed."""
        try:
            self._api(
                f"delete Pod {self.namespace}/{name}", self.core.delete_namespaced_pod, name, self.namespace,
                expect=(404,), grace_period_seconds=0,
            )
        except ApiCallError as exc:
            if exc.status != 404:
                raise

    def _wait_gone(self, name: str, deadline: float) -> None:
        while self._read(f"read Pod {self.namespace}/{name}", self.core.read_namespaced_pod, name, self.namespace):
            if time.monotonic() >= deadline:
                raise TargetError(f"pod {self.namespace}/{name} is still terminating; retry once it is gone")
            time.sleep(self.poll_interval)

    # -- API calls -------------------------------------------------------------------------------

    def _api(self, what: str, call, *args, expect: tuple[int, ...] = (), **kwargs) -> dict:
        """One API call, answered as a dict (the API's JSON).

        Transient answers (409, 429, 5xx, connection errors) are retried with backoff, a bounded
        number of times; statuses in ``expect`` are raised at once as ApiCallError for the caller.
        """
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        kwargs.update(_preload_content=False, _request_timeout=REQUEST_TIMEOUT)
        delay = self.retry_backoff
        for attempt in range(1, self.api_attempts + 1):
            try:
                return json.loads(call(*args, **kwargs).data or b"{}")
            except ApiException as exc:
                if exc.status in expect or exc.status not in RETRYABLE_STATUSES or attempt == self.api_attempts:
                    raise self._api_error(what, exc, attempt) from exc
                problem = f"HTTP {exc.status} {_status_message(exc)}"
            except (HTTPError, OSError) as exc:
                if attempt == self.api_attempts:
                    raise TargetError(
                        f"Kubernetes API at {self.api_host} is not reachable ({type(exc).__name__}: {exc}) for "
                        f"{what}; check the cluster endpoint, that the cluster is running and the network path "
                        "to it (VPN, authorized networks)"
                    ) from exc
                problem = type(exc).__name__
            log.warning(
                "%s: %s (attempt %d of %d); retrying in %.2fs", what, problem, attempt, self.api_attempts, delay
            )
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _api_error(self, what: str, exc, attempts: int) -> ApiCallError:
        host, message = self.api_host, _status_message(exc)
        if exc.status == 401:
            text = (
                f"Kubernetes API at {host} rejected the credentials (HTTP 401) for {what}: {message}; the token "
                "is missing or expired: refresh the Kubernetes/GKE connection"
            )
        elif exc.status == 403:
            text = (
                f"Kubernetes API at {host} forbids {what} (HTTP 403): {message}; grant the deploying identity "
                f"that permission (a Role and RoleBinding in namespace {self.namespace})"
            )
        elif exc.status == 0:
            text = f"Kubernetes API at {host}: {exc.reason} for {what}; check the cluster CA certificate and endpoint"
        elif exc.status in RETRYABLE_STATUSES and attempts > 1:
            text = (
                f"{what} failed with HTTP {exc.status} from {host} after {attempts} attempts: {message}; the API "
                "server is overloaded or unhealthy: retry later"
            )
        else:
            text = f"{what} failed with HTTP {exc.status} from {host}: {message}"
        return ApiCallError(text, exc.status)

    def _read(self, what: str, call, *args) -> dict | None:
        """A GET that may find nothing (404 -> None)."""
        try:
            return self._api(what, call, *args, expect=(404,))
        except ApiCallError as exc:
            if exc.status == 404:
                return None
            raise

    def _create(self, what: str, call, *args) -> bool:
        """Create; False when the object already exists (409)."""
        try:
            self._api(what, call, *args, expect=(409,), field_manager=self.field_manager)
            return True
        except ApiCallError as exc:
            if exc.status == 409:
                return False
            raise

    def _patch(self, what: str, call, name: str, body: dict) -> dict:
        return self._api(
            what, call, name, self.namespace, body, _content_type=MERGE_PATCH, field_manager=self.field_manager
        )


async def load_balancer_address_async(api_client, model_name: str, *, namespace: str = "tfserving") -> str | None:
    """``load_balancer_address`` for a ``kubernetes_asyncio`` ApiClient, for triggers that poll in the event loop."""
    import aiohttp
    from kubernetes_asyncio import client
    from kubernetes_asyncio.client.exceptions import ApiException

    name, host = object_name(model_name), api_client.configuration.host
    try:
        service = await client.CoreV1Api(api_client).read_namespaced_service(
            name, namespace, _request_timeout=REQUEST_TIMEOUT
        )
    except ApiException as exc:
        if exc.status == 404:
            raise TargetError(f"Service {namespace}/{name} does not exist; deploy model {model_name!r} first") from exc
        raise TargetError(
            f"read Service {namespace}/{name} failed with HTTP {exc.status} from {host}: {exc.reason}"
        ) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise TargetError(f"Kubernetes API at {host} is not reachable ({type(exc).__name__}: {exc})") from exc
    return service_address(api_client.sanitize_for_serialization(service))


# -- reading API objects (dicts) -----------------------------------------------------------------


def pod_grpc_address(pod: dict) -> str:
    ip = pod["status"]["podIP"]
    return f"[{ip}]:{GRPC_PORT}" if ":" in ip else f"{ip}:{GRPC_PORT}"


def _image_of(pod_or_template: dict) -> str | None:
    """The serving container's image in a Pod or a pod template."""
    for container in (pod_or_template.get("spec") or {}).get("containers") or []:
        if container.get("name") == CONTAINER_NAME:
            return container.get("image")
    return None


def _owned_annotations(obj: dict) -> dict:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return {k: v for k, v in annotations.items() if k.startswith(ANNOTATION_PREFIX)}


def _contains(live, desired) -> bool:
    """True when every field of ``desired`` has the same value in ``live``, which may hold more
    (server-side defaults). Lists must match element by element."""
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(key in live and _contains(live[key], v) for key, v in desired.items())
    if isinstance(desired, list):
        return isinstance(live, list) and len(live) == len(desired) and all(map(_contains, live, desired))
    return live == desired


def _observed(deployment: dict) -> bool:
    """Has the Deployment controller seen the latest spec (``kubectl rollout status``'s first check)?"""
    observed = (deployment.get("status") or {}).get("observedGeneration") or 0
    return observed >= deployment["metadata"]["generation"]


def _progress(deployment: dict, pods: list[dict], replicas: int) -> tuple[bool, str]:
    """Done as ``kubectl rollout status`` sees it, and ``replicas`` ready pods run the image."""
    if not _observed(deployment):
        return False, f"the Deployment controller has not seen generation {deployment['metadata']['generation']} yet"
    status = deployment.get("status") or {}
    updated, available = status.get("updatedReplicas") or 0, status.get("availableReplicas") or 0
    total, ready = status.get("replicas") or 0, sum(_is_ready(p) for p in pods)
    done = updated >= replicas and available >= replicas and total <= updated and ready >= replicas
    return done, f"{updated}/{replicas} updated, {available}/{replicas} available, {ready} ready pod(s) run the image"


def _phase(pod: dict) -> str:
    return (pod.get("status") or {}).get("phase") or "Unknown"


def _condition(obj: dict, kind: str) -> dict:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == kind), {})


def _is_ready(pod: dict) -> bool:
    return _condition(pod, "Ready").get("status") == "True"


def _container_statuses(pod: dict) -> list[dict]:
    status = pod.get("status") or {}
    return (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])


def _waiting_failure(pod: dict) -> tuple[str | None, str]:
    for container in _container_statuses(pod):
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in WAITING_FAILURES:
            return waiting["reason"], waiting.get("message") or ""
    return None, ""


def _last_termination(pod: dict) -> str:
    for container in _container_statuses(pod):
        ended = (container.get("lastState") or {}).get("terminated")
        if ended:
            return (
                f" (last exit: {ended.get('reason', '?')}, code {ended.get('exitCode', '?')}, "
                f"{container.get('restartCount', 0)} restarts)"
            )
    return ""


def _pod_state(pod: dict) -> str:
    words = [_phase(pod)]
    for container in _container_statuses(pod):
        waiting = (container.get("state") or {}).get("waiting")
        if waiting:
            words.append(f"waiting: {waiting.get('reason')}")
    ready = _condition(pod, "Ready")
    if ready.get("status") != "True":
        words.append(f"not ready{': ' + ready['message'] if ready.get('message') else ''}")
    return ", ".join(words)


def _event_time(event: dict) -> str:
    created = (event.get("metadata") or {}).get("creationTimestamp")
    return event.get("lastTimestamp") or event.get("eventTime") or created or ""


def _status_message(exc) -> str:
    """The ``message`` of the API's Status answer, else the HTTP reason."""
    try:
        return str(json.loads(exc.body)["message"])[:300]
    except (TypeError, ValueError, KeyError):
        return str(exc.reason or "")
