"""``KubernetesTarget``: one Deployment and one Service per model, in one namespace.

A facade over the parts that do the work: ``api`` (every call, one retry policy), ``access``
(namespace, RBAC review), ``apply`` (create-or-patch), ``rollout`` (watching, diagnosis),
``rollback`` and ``candidates``. A failed rollout is undone inside ``deploy``; ``rollback`` restores
what served before the last image change later too (a failed validation).

Pods are named by their gRPC address ``<podIP>:8500`` (``endpoints``, ``serving_state``);
``reachable`` makes such addresses dialable from here. ``pod_access``: ``pod-ip`` dials pod IPs
(Airflow inside the cluster's network), ``port-forward`` relays through the API server (Airflow
outside it, e.g. a laptop or another VPC), ``auto`` tries a pod IP once and falls back.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import socket
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any

from ...defaults import REST_PORT
from ...errors import TargetError
from ...image.references import is_loopback, registry_host
from ...serving.server_config import ServerConfig
from ...serving.sizing import Measurement, Sizing
from ..results import BalancerWatch, Change, DeployResult, ServingState
from . import objects
from .access import check_access, ensure_namespace
from .api import KubernetesApi
from .apply import apply_deployment, apply_disruption_budget, apply_service
from .candidates import Candidates
from .manifests import (
    ANNOTATION_META,
    ANNOTATION_VERSION,
    LIVENESS_INITIAL_DELAY_SECONDS,
    MANAGED_BY,
    PROGRESS_DEADLINE_SECONDS,
    check_model_name,
    check_resources,
    deployment_manifest,
    disruption_budget_manifest,
    metadata_annotations,
    object_name,
    public_exposure,
    selector_labels,
    service_manifest,
    write_manifests,
)
from .portforward import PodPortForward
from .rbac import required_extras
from .rollback import Rollback
from .rollout import RolloutFailed, RolloutWatch
from .settings import KubernetesSettings

log = logging.getLogger(__name__)

POD_DIAL_TIMEOUT = 3.0  # seconds to decide whether pod IPs are routable from here


class KubernetesTarget:
    """Deploys to the cluster behind ``api_client`` (a ``kubernetes.client.ApiClient``).

    ``unschedulable_grace``: how long a pod may stay Unschedulable before the rollout fails;
    with the cluster autoscaler or GKE Autopilot a pending pod is how new nodes get requested.
    ``access``: where another process (one that waits for the load balancer) finds this
    cluster's credentials, by name (``BalancerWatch.access``); never a secret.
    """

    def __init__(
        self,
        api_client,
        *,
        settings: KubernetesSettings | None = None,
        server: ServerConfig | None = None,
        field_manager: str = "tfserving-deploy",
        poll_interval: float = 2.0,
        unschedulable_grace: float = 90.0,
        api_attempts: int = 5,
        retry_backoff: float = 0.5,
        progress_deadline_seconds: int = PROGRESS_DEADLINE_SECONDS,
        access: Mapping[str, Any] | None = None,
        **options,
    ):
        """``settings`` (default: the declared defaults), any of its fields replaced by ``options``."""
        settings = dataclasses.replace(settings or KubernetesSettings(), **options)
        self.settings = settings
        self.api = KubernetesApi(
            api_client, settings.namespace, field_manager=field_manager, attempts=api_attempts, backoff=retry_backoff
        )
        self.namespace, self.service_type, self.manifest_dir = (
            settings.namespace,
            settings.service_type,
            settings.manifest_dir,
        )
        self.source_ranges = settings.load_balancer_source_ranges
        self.resources = check_resources(settings.resources)
        self.keep_failed_first_deploy, self.pod_access = settings.keep_failed_first_deploy, settings.pod_access
        self.progress_deadline_seconds = progress_deadline_seconds
        self.server = server or ServerConfig()
        self.access = dict(access or {})
        self.watch = RolloutWatch(self.api, poll_interval=poll_interval, unschedulable_grace=unschedulable_grace)
        self.candidates = Candidates(self.api, self.watch, self.resources, self.server)
        self.rollbacks = Rollback(self.api, self.watch, keep_failed_first_deploy=settings.keep_failed_first_deploy)
        self._pods_routable: bool | None = {"pod-ip": True, "port-forward": False}.get(settings.pod_access)

    @property
    def api_host(self) -> str:
        return self.api.host

    @staticmethod
    def check_model_name(model_name: str) -> None:
        """It names the Deployment, the Service and their labels (DNS and label grammar)."""
        check_model_name(model_name)

    def ensure_ready(self, image_repository: str, *, model_name: str) -> dict:
        """The API answers, the namespace exists, and the identity holds every verb a deploy of
        ``model_name`` with these settings uses (``rbac``); says which optional extras it lacks."""
        version = self.api.server_version()
        created = ensure_namespace(self.api)
        required = required_extras(keep_failed_first_deploy=self.keep_failed_first_deploy, pod_access=self.pod_access)
        optional = check_access(self.api, model_name, required=required)
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
            "role_extras": {**dict.fromkeys(required, True), **optional},
        }

    def render(
        self,
        image: str,
        *,
        model_name: str,
        version: int,
        replicas: int,
        metadata: dict | None = None,
        sizing: Sizing | None = None,
    ) -> list[dict]:
        """[Deployment, Service, PodDisruptionBudget]; also written as YAML to ``manifest_dir`` when set.
        ``sizing`` (from the candidate's measurement) gives the pods' resources and startup budget;
        the progress deadline then covers at least one wave's ready timeout."""
        resources, startup, deadline = self.resources, LIVENESS_INITIAL_DELAY_SECONDS, self.progress_deadline_seconds
        if sizing is not None:
            resources, startup = check_resources(sizing.resources), sizing.startup_seconds
            deadline = max(deadline, math.ceil(sizing.ready_timeout))
        deployment = deployment_manifest(
            image,
            model_name=model_name,
            version=version,
            replicas=replicas,
            namespace=self.namespace,
            resources=resources,
            metadata=metadata,
            progress_deadline_seconds=deadline,
            startup_seconds=startup,
            server=self.server,
            max_surge=self.settings.max_surge,
        )
        service = service_manifest(
            model_name=model_name,
            namespace=self.namespace,
            service_type=self.service_type,
            source_ranges=self.source_ranges,
        )
        objects = [deployment, service, disruption_budget_manifest(model_name=model_name, namespace=self.namespace)]
        if self.manifest_dir:
            log.info("wrote %s", ", ".join(write_manifests(self.manifest_dir, model_name, objects)))
        return objects

    def start_candidate(
        self,
        image: str,
        *,
        model_name: str,
        version: int,
        ready_timeout: float = 300.0,
        run: str | None = None,
        on_measured: Callable[[Measurement], None] | None = None,
    ) -> list[str]:
        return self.candidates.start(
            image, model_name=model_name, version=version, ready_timeout=ready_timeout, run=run, on_measured=on_measured
        )

    def stop_candidate(self, model_name: str, run: str | None = None) -> int:
        return self.candidates.stop(model_name, run)

    def deploy(
        self,
        image: str,
        *,
        model_name: str,
        version: int,
        replicas: int,
        ready_timeout: float = 600.0,
        metadata: dict | None = None,
        on_change: Callable[[], None] | None = None,
        sizing: Sizing | None = None,
    ) -> DeployResult:
        """``metadata`` (e.g. the model's sha256, the run date) is kept in Deployment annotations
        and comes back from ``serving_state``; it is written with a new revision, and a re-deploy
        of the revision already serving keeps the metadata it was deployed with.

        ``on_change`` is called as soon as the model that serves starts changing: after the
        Deployment is written, before the rollout is waited for, so whoever dies during the wait
        has recorded that this run changed what serves. A retry whose revision an earlier try
        already wrote (the same metadata) counts as that change too."""
        sizing = self._keep_sizing_of_the_serving_revision(model_name, image, sizing)
        deployment, service, budget = self.render(
            image, model_name=model_name, version=version, replicas=replicas, metadata=metadata, sizing=sizing
        )
        service_change = apply_service(self.api, service)
        apply_disruption_budget(self.api, budget)
        deployment_change, before, live_annotations = apply_deployment(self.api, deployment)
        name = deployment["metadata"]["name"]
        detail = f"Deployment {self.namespace}/{name} {deployment_change.value}, Service {service_change.value}"
        log.info("%s", detail)
        changed_image = before is not None and objects.image_of(before["template"]) != image
        written_by_this_run = bool(metadata) and {
            k: v for k, v in live_annotations.items() if k.startswith(ANNOTATION_META)
        } == metadata_annotations(metadata)
        promoted = deployment_change is Change.CREATED or changed_image or written_by_this_run
        if promoted and on_change:
            on_change()
        try:
            available = self.watch.wait(model_name, image, replicas, ready_timeout)
        except RolloutFailed as failure:
            raise self.rollbacks.undo(failure, model_name, image, deployment_change, before, ready_timeout) from None
        return DeployResult(
            image=image,
            model_version=version,
            promoted=promoted,
            change=deployment_change,
            replicas=available,
            revision=f"{self.namespace}/{name}",
            detail=detail,
            sizing=sizing,
        )

    def _keep_sizing_of_the_serving_revision(self, model_name: str, image: str, sizing: Sizing | None):
        """A re-deploy of the image the Deployment already runs keeps the memory (unless given
        explicitly) and startup budget it was rolled out with: a fresh measurement differs by a
        few MiB or seconds, and a changed pod template would restart every pod for nothing."""
        live = self.api.read_deployment(object_name(model_name)) if sizing is not None else None
        if sizing is None or live is None or objects.image_of(live["spec"]["template"]) != image:
            return sizing
        container = objects.serving_container(live["spec"]["template"]) or {}
        resources = sizing.resources if sizing.explicit_resources else container.get("resources") or sizing.resources
        startup = (container.get("livenessProbe") or {}).get("initialDelaySeconds", sizing.startup_seconds)
        reason = (
            f"{image} already serves: it keeps the sizing it was rolled out with "
            f"(resources {resources}, liveness after {startup}s)"
        )
        log.info("sizing: %s", reason)
        return dataclasses.replace(
            sizing, resources=resources, startup_seconds=int(startup), reasons=[*sizing.reasons, reason]
        )

    def rollback(
        self, model_name: str, reason: str = "", *, image: str | None = None, ready_timeout: float = 300.0
    ) -> str:
        """Restore what served before the last image change and wait for it. Safe to repeat: with
        ``image`` (the one that failed validation) nothing happens once the Deployment no longer
        runs it, and a Deployment already restored is left alone. Says what was restored."""
        log.warning("rolling back model %r%s", model_name, f": {reason}" if reason else "")
        return self.rollbacks.restore_previous(model_name, ready_timeout, failed_image=image)

    def serving_state(self, model_name: str) -> ServingState | None:
        """What serves ``model_name`` now: image, ready replicas, their addresses and the deploy
        metadata; None when nothing does, or a rollout is caught half-way."""
        deployment = self.api.read_deployment(object_name(model_name))
        if deployment is None:
            return None
        image = objects.image_of(deployment["spec"]["template"])
        ready = [p for p in self.api.pods(selector_labels(model_name)) if objects.is_ready(p)]
        if image is None or not ready or {objects.image_of(p) for p in ready} != {image}:
            return None
        annotations = deployment["metadata"].get("annotations") or {}
        metadata = {k[len(ANNOTATION_META) :]: v for k, v in annotations.items() if k.startswith(ANNOTATION_META)}
        version = str(annotations.get(ANNOTATION_VERSION) or "")
        return ServingState(
            image=image,
            replicas=len(ready),
            addresses=tuple(objects.pod_grpc_address(p) for p in ready),
            model_version=int(version) if version.isdigit() else None,
            metadata=metadata,
        )

    def balancer_watch(self, model_name: str) -> BalancerWatch | None:
        """The Service's load balancer (``LoadBalancer``, ``InternalLoadBalancer``); None for a
        ``ClusterIP`` Service: the ready pods are the endpoints."""
        if not self.service_type.endswith("LoadBalancer"):
            return None
        return BalancerWatch(self.namespace, object_name(model_name), self.access)

    def endpoints(self, model_name: str, image: str) -> list[str]:
        """The gRPC address of every ready pod running ``image`` (validate each one: one gRPC
        connection through an L4 load balancer stays on one pod); [] while none is ready."""
        pods = [p for p in self.api.pods(selector_labels(model_name)) if objects.image_of(p) == image]
        return [
            objects.pod_grpc_address(p) for p in pods if objects.is_ready(p) and (p.get("status") or {}).get("podIP")
        ]

    def explain_replica(self, model_name: str, address: str) -> str:
        """What became of the pod at ``address`` (after a failed validation): its state, last exit,
        log lines and events, or that no pod holds the address any more."""
        managed = self.api.pods({"app.kubernetes.io/managed-by": MANAGED_BY})
        pod = next(
            (p for p in managed if (p.get("status") or {}).get("podIP") and objects.pod_grpc_address(p) == address),
            None,
        )
        if pod is None:
            if self.balancer_watch(model_name) and address == self.load_balancer_address(model_name):
                return "the load balancer: see the pods' own lines"
            return f"no pod holds {address} any more: it was deleted or replaced (kill, eviction, scale-down)"
        crashed = objects.last_termination(pod)
        logs = f"; last log lines: {self.watch.logs(pod, previous=bool(crashed))}" if crashed else ""
        return (
            f"pod {pod['metadata']['name']}: {objects.pod_state(pod)}{crashed}{logs}; events: {self.watch.events(pod)}"
        )

    def load_balancer_address(self, model_name: str) -> str | None:
        """``host:8500`` of the Service's load balancer; None while it is being provisioned."""
        name = object_name(model_name)
        service = self.api.read_service(name)
        if service is None:
            raise TargetError(f"Service {self.namespace}/{name} does not exist; deploy model {model_name!r} first")
        return objects.load_balancer_address(service)

    def exposure_warning(self, model_name: str) -> str | None:
        """What the live Service lets in (``manifests.public_exposure``); None without a Service."""
        service = self.api.read_service(object_name(model_name))
        return None if service is None else public_exposure(service)

    @contextmanager
    def reachable(self, addresses: list[str]) -> Iterator[dict[str, str]]:
        """``{address: what to dial}`` for the given addresses, valid inside the ``with``.

        A pod's address maps to itself when this machine reaches pod IPs, else to a local
        port-forward through the API server; other addresses (a load balancer) map to themselves.
        """
        managed = self.api.pods({"app.kubernetes.io/managed-by": MANAGED_BY})
        pods = {p["status"]["podIP"]: p for p in managed if (p.get("status") or {}).get("podIP")}
        with ExitStack() as forwards:
            dial = {}
            for address in addresses:
                host, _, port = address.rpartition(":")
                pod = pods.get(host.strip("[]"))
                if pod is None or self._reaches_pods(address):
                    dial[address] = address
                    continue
                name = pod["metadata"]["name"]
                forward = forwards.enter_context(PodPortForward(self.api.client, self.namespace, name, int(port)))
                log.info("pod %s (%s) is reached through a port-forward at %s", name, address, forward.address)
                dial[address] = forward.address
            yield dial

    def metrics_address(self, address: str) -> str | None:
        """A pod's REST ``host:8501`` (its Prometheus metrics), from its gRPC address; None for
        an address no pod holds (the load balancer)."""
        host = address.rpartition(":")[0]
        managed = self.api.pods({"app.kubernetes.io/managed-by": MANAGED_BY})
        if not any((p.get("status") or {}).get("podIP") == host.strip("[]") for p in managed):
            return None
        return f"{host}:{REST_PORT}"

    def _reaches_pods(self, address: str) -> bool:
        """Whether pod IPs are routable from here: decided once, by dialing one pod."""
        if self._pods_routable is None:
            host, _, port = address.rpartition(":")
            try:
                socket.create_connection((host.strip("[]"), int(port)), timeout=POD_DIAL_TIMEOUT).close()
                self._pods_routable = True
            except OSError as exc:
                log.info(
                    "pod IP %s is not reachable from here (%s): using port-forwards through %s",
                    address,
                    exc,
                    self.api_host,
                )
                self._pods_routable = False
        return self._pods_routable
