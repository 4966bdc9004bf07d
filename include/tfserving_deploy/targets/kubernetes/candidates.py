"""The candidate: one pod of the new image beside the Deployment, for validation before promotion.

Its ``app.kubernetes.io/name`` differs from the Deployment's pods, so the Service never selects it:
it gets no traffic. Its name comes from the digest, so a retry finds the same pod.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ...errors import RolloutError, TargetError
from ...serving.server_config import ServerConfig
from ...serving.sizing import PEAK_COMMAND, Measurement, parse_peak, seconds_between
from . import objects
from .api import KubernetesApi
from .manifests import candidate_labels, candidate_pod_manifest
from .rollout import RolloutFailed, RolloutWatch

log = logging.getLogger(__name__)


class Candidates:
    def __init__(self, api: KubernetesApi, watch: RolloutWatch, resources: dict, server: ServerConfig):
        self.api, self.watch, self.resources, self.server = api, watch, resources, server

    def start(
        self,
        image: str,
        *,
        model_name: str,
        version: int,
        ready_timeout: float,
        run: str | None = None,
        on_measured: Callable[[Measurement], None] | None = None,
    ) -> list[str]:
        """The candidate's gRPC address once it is ready. A candidate that fails is removed, and the
        RolloutError quotes its events. Only this run's older candidates are replaced.
        ``on_measured`` gets its load time and peak memory once it is ready."""
        pod = candidate_pod_manifest(
            image,
            model_name=model_name,
            version=version,
            namespace=self.api.namespace,
            resources=self.resources,
            run=run,
            server=self.server,
        )
        name = pod["metadata"]["name"]
        where = f"{self.api.namespace}/{name}"
        deadline = time.monotonic() + ready_timeout
        for other in self.api.pods(candidate_labels(model_name, run)):
            if other["metadata"]["name"] != name:
                self.api.delete_pod(other["metadata"]["name"])
        live = self.api.read_pod(name)
        if live is not None and (
            live["metadata"].get("deletionTimestamp") or objects.phase(live) in ("Failed", "Succeeded")
        ):
            self.api.delete_pod(name)  # a leftover that cannot become ready: start afresh
            self._wait_gone(name, deadline)
            live = None
        if live is None and not self.api.create_pod(pod):
            log.info("candidate pod %s was created concurrently; waiting for it", where)
        unschedulable_since: dict[str, float] = {}
        while True:
            live = self.api.read_pod(name)
            try:
                if live is None:
                    raise RolloutFailed(f"candidate pod {where} disappeared while starting (deleted by someone?)")
                self.watch.check_pod(live, f"candidate pod {where}", unschedulable_since)
                if objects.is_ready(live) and (live.get("status") or {}).get("podIP"):
                    log.info("candidate pod %s of %s is ready", where, image)
                    if on_measured is not None:
                        on_measured(self.measure(live))
                    return [objects.pod_grpc_address(live)]
                if time.monotonic() >= deadline:
                    raise RolloutFailed(
                        f"candidate pod {where} of {image} not ready after {ready_timeout:g}s"
                        f"{self.watch.pod_detail(live)}; raise ready_timeout for large models"
                    )
            except RolloutFailed as failure:
                self.api.delete_pod(name)
                raise RolloutError(f"{failure}\nremoved the candidate pod {where}; what serves is unchanged") from None
            time.sleep(self.watch.poll_interval)

    def measure(self, pod: dict) -> Measurement:
        """The ready candidate's load time (the kubelet's container start to its Ready condition:
        readiness is the model AVAILABLE, probed every few seconds, so it may read a few seconds
        long) and its cgroup's peak memory, read inside it through ``pods/exec``: the Role's optional
        ``measure`` extra (``rbac``). Without it the API's refusal is the note, and memory keeps the defaults."""
        name = pod["metadata"]["name"]
        notes, load, peak = [], None, None
        started, ready = objects.serving_started_at(pod), objects.condition(pod, "Ready").get("lastTransitionTime")
        try:
            load = seconds_between(started or "", ready or "")
        except ValueError as exc:
            notes.append(f"load time: pod {name}'s start {started!r} and Ready at {ready!r} are unusable ({exc})")
        try:
            peak = parse_peak(self.api.exec_in_pod(name, PEAK_COMMAND))
        except (TargetError, ValueError, IndexError) as exc:
            notes.append(f"peak memory: could not read it inside pod {self.api.namespace}/{name} ({exc})")
        return Measurement(load, peak, tuple(notes), where=f"candidate pod {self.api.namespace}/{name}")

    def stop(self, model_name: str, run: str | None = None) -> int:
        """Delete the model's candidate pods (only ``run``'s, when given); returns how many there were."""
        candidates = self.api.pods(candidate_labels(model_name, run))
        for pod in candidates:
            self.api.delete_pod(pod["metadata"]["name"])
        return len(candidates)

    def _wait_gone(self, name: str, deadline: float) -> None:
        while self.api.read_pod(name):
            if time.monotonic() >= deadline:
                raise TargetError(f"pod {self.api.namespace}/{name} is still terminating; retry once it is gone")
            time.sleep(self.watch.poll_interval)
