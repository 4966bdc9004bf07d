"""Watching a rollout, and saying why it will not finish.

The Deployment's status (as ``kubectl rollout status`` reads it) and the pods running the new
image decide. What waiting will not heal fails at once, quoting the pod's events: image pull
errors, crash loops, a model that ended in END (read from the readiness probe's event), pods no
node can hold (after a grace period: an autoscaler may add a node), the progress deadline.
"""

from __future__ import annotations

import logging
import time

from . import objects
from .api import KubernetesApi
from .manifests import object_name, selector_labels
from .probes import model_load_failure

log = logging.getLogger(__name__)

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


class RolloutFailed(Exception):
    """A rollout that will not succeed; the message says why, quoting the pod's events."""


class RolloutWatch:
    def __init__(self, api: KubernetesApi, *, poll_interval: float = 2.0, unschedulable_grace: float = 90.0):
        self.api, self.poll_interval, self.unschedulable_grace = api, poll_interval, unschedulable_grace

    def wait(self, model_name: str, image: str, replicas: int, timeout: float) -> int:
        """Poll until ``replicas`` pods of ``image`` are available; returns how many are ready."""
        name, ns = object_name(model_name), self.api.namespace
        where = f"{ns}/{name}"
        deadline = time.monotonic() + timeout
        unschedulable_since: dict[str, float] = {}
        while True:
            deployment = self.api.read_deployment(name)
            if deployment is None:
                raise RolloutFailed(f"Deployment {where} disappeared during the rollout (deleted by someone?)")
            pods = [p for p in self.api.pods(selector_labels(model_name)) if objects.image_of(p) == image]
            for pod in pods:
                self.check_pod(pod, f"Deployment {where}: pod {pod['metadata']['name']}", unschedulable_since)
            self._check_deployment(deployment, pods)
            done, progress = objects.progress(deployment, pods, replicas)
            if done:
                log.info("Deployment %s rolled out %s: %s", where, image, progress)
                return sum(objects.is_ready(p) for p in pods)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                waiting = next((p for p in pods if not objects.is_ready(p)), None)
                raise RolloutFailed(
                    f"Deployment {where}: {image} not rolled out after {timeout:g}s ({progress})"
                    f"{self.pod_detail(waiting)}; raise ready_timeout for large models, or see "
                    f"`kubectl -n {ns} describe deployment {name}`"
                )
            time.sleep(min(self.poll_interval, remaining))

    def check_pod(self, pod: dict, which: str, unschedulable_since: dict[str, float]) -> None:
        """Fail on what waiting will not heal; ``which`` names the pod in the message."""
        pod_name = pod["metadata"]["name"]
        reason, message = _waiting_failure(pod)
        if reason:
            hint = WAITING_FAILURES[reason].format(namespace=self.api.namespace, pod=pod_name)
            raise RolloutFailed(
                f"{which} is {reason}{': ' + message if message else ''}{objects.last_termination(pod)}; "
                f"events: {self.events(pod)}; {hint}"
            )
        crashed = objects.last_termination(pod)
        if crashed:  # a serving process that died while the revision rolls out: seen at its first crash
            raise RolloutFailed(
                f"{which}: its server died{crashed}; last log lines: {self.logs(pod, previous=True)}; events: "
                f"{self.events(pod)}; see `kubectl -n {self.api.namespace} logs {pod_name} --previous`"
            )
        if objects.phase(pod) == "Running" and not objects.is_ready(pod):
            load_error = self._model_load_failure(pod)
            if load_error:
                raise RolloutFailed(
                    f"{which}: the model failed to load (state END): {load_error}; the server does not retry "
                    "after END: fix the model files (a SavedModel with a serving_default signature under "
                    "/models/<model_name>/<version>) and deploy again"
                )
        scheduled = objects.condition(pod, "PodScheduled")
        if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
            since = unschedulable_since.setdefault(pod_name, time.monotonic())
            if time.monotonic() - since >= self.unschedulable_grace:
                requests = (pod["spec"]["containers"][0].get("resources") or {}).get("requests")
                raise RolloutFailed(
                    f"{which} is Unschedulable: {scheduled.get('message', '')}; events: {self.events(pod)}; "
                    f"no node can fit it: lower the resources requests ({requests}), or add nodes / enable the "
                    "cluster autoscaler"
                )

    def _check_deployment(self, deployment: dict, pods: list[dict]) -> None:
        if not objects.observed(deployment):
            return  # the conditions may still describe the previous revision
        where = f"{self.api.namespace}/{deployment['metadata']['name']}"
        for condition in (deployment.get("status") or {}).get("conditions") or []:
            kind, status, reason = condition.get("type"), condition.get("status"), condition.get("reason")
            if kind == "Progressing" and status == "False" and reason == "ProgressDeadlineExceeded":
                waiting = next((p for p in pods if not objects.is_ready(p)), None)
                raise RolloutFailed(
                    f"Deployment {where}: ProgressDeadlineExceeded: {condition.get('message', '')}"
                    f"{self.pod_detail(waiting)}; the new pods did not become ready within progressDeadlineSeconds "
                    "(readiness waits for the model to be AVAILABLE): see the pod's logs"
                )
            if kind == "ReplicaFailure" and status == "True":
                raise RolloutFailed(
                    f"Deployment {where}: ReplicaFailure {reason}: {condition.get('message', '')}; the ReplicaSet "
                    "could not create pods (a ResourceQuota or an admission policy refused them)"
                )

    def pod_detail(self, pod: dict | None) -> str:
        if pod is None:
            return ""
        return f"; pod {pod['metadata']['name']}: {objects.pod_state(pod)}; events: {self.events(pod)}"

    def events(self, pod: dict, last: int = 5) -> str:
        """The pod's latest events as ``Type Reason: message``."""
        from ...errors import TargetError

        try:
            events = self.api.pod_events(pod)
        except TargetError as exc:
            return f"(could not list them: {exc})"
        quoted = [
            f"{e.get('type', '?')} {e.get('reason', '?')}: {(e.get('message') or '').strip()}" for e in events[-last:]
        ]
        return " | ".join(quoted) or "none"

    def logs(self, pod: dict, *, previous: bool = False, lines: int = 10) -> str:
        from ...errors import TargetError

        try:
            text = self.api.pod_logs(pod, previous=previous, tail=lines).strip()
            if previous and text.startswith("unable to retrieve container logs"):
                # a fast crash loop: the kubelet already removed that run; the latest one is as telling
                text = self.api.pod_logs(pod, tail=lines).strip()
        except TargetError as exc:
            return f"(could not read them: {exc})"
        return " | ".join(text.splitlines()[-lines:]) or "none"

    def _model_load_failure(self, pod: dict) -> str | None:
        """The load error if the pod's latest failed readiness probe says the model is in END."""
        for event in reversed(self.api.pod_events(pod)):
            if event.get("reason") == "Unhealthy" and "Readiness probe failed" in (event.get("message") or ""):
                return model_load_failure(event["message"])
        return None


def _waiting_failure(pod: dict) -> tuple[str | None, str]:
    for container in objects.container_statuses(pod):
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in WAITING_FAILURES:
            return waiting["reason"], waiting.get("message") or ""
    return None, ""
