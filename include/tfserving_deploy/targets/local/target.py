"""The ``local`` target: replicas as containers on this machine's Docker engine.

A revision is the image digest. ``deploy`` starts the new revision beside the old one, waits
until every new replica serves the model, and only then retires the old revision: a failed
rollout removes what it started and leaves the previous model serving. There is no load
balancer: every replica publishes its own ports, and they are the endpoints.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from ...errors import InvalidParameter, RegistryError, RolloutError, TargetError
from ...image.references import is_loopback, registry_host, require_digest
from ...serving.server_config import ServerConfig
from ...serving.sizing import PEAK_COMMAND, Measurement, Sizing, parse_peak, seconds_between
from ...serving.status import wait_until_available
from ..kubernetes.manifests import RUN_AS_USER
from ..results import BalancerWatch, Change, DeployResult, ServingState

log = logging.getLogger(__name__)

LABEL_MODEL = "io.tfserving-deploy.serving-model"
LABEL_CANDIDATE = "io.tfserving-deploy.candidate-model"
LABEL_IMAGE = "io.tfserving-deploy.image"
LABEL_REPLICA = "io.tfserving-deploy.replica"
LABEL_META = "io.tfserving-deploy.meta."
LABEL_RUN = "io.tfserving-deploy.run"  # a candidate's run (run_key)
LABEL_SERVER = "io.tfserving-deploy.server-config"  # ServerConfig.fingerprint: other flags, another revision
GRPC_PORT, REST_PORT = "8500/tcp", "8501/tcp"
MODEL_VERSION = "model-version"  # the metadata label that holds the served version
_CONTAINER_NAME_PART = re.compile(r"[a-zA-Z0-9_.-]{1,100}")  # Docker's name grammar, inside tfs-<model>-...


class LocalDockerTarget:
    """Serving replicas are running containers labelled with the model; the previous revision
    is kept *stopped* so that ``rollback`` can bring it back in seconds."""

    def __init__(
        self,
        client,
        *,
        bind_host: str = "127.0.0.1",
        memory_limit: str = "2g",
        cpus: float = 1.0,
        server: ServerConfig | None = None,
    ):
        self.client = client
        self.bind_host = bind_host
        self.memory_limit, self.cpus = memory_limit, cpus
        self.server = server or ServerConfig()

    @staticmethod
    def check_model_name(model_name: str) -> None:
        """Containers are named ``tfs-<model_name>-...``: Docker's name characters only."""
        if not _CONTAINER_NAME_PART.fullmatch(model_name):
            raise InvalidParameter(
                f"model_name {model_name!r} cannot name a Docker container (letters, digits, '_', '.', '-', "
                "at most 100 characters); rename the model"
            )

    # -- ensure_cluster ------------------------------------------------------------------------

    def ensure_ready(self, image_repository: str, *, model_name: str) -> dict:
        """The engine answers and the registry is reachable (any model may run on the engine)."""
        try:
            version = self.client.version()
        except Exception as exc:  # docker raises several unrelated types for "engine down"
            raise TargetError(
                f"Docker engine is not reachable ({exc}); start dockerd (`make services`) or point the "
                "docker connection at a running engine"
            ) from exc
        registry = registry_host(image_repository)
        if registry:
            check_registry(registry)
        return {"docker_version": version.get("Version"), "registry": registry or "docker.io"}

    # -- candidate (validate before promote) ---------------------------------------------------

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
        """One replica of ``image`` outside the serving set, for validation before promotion; it
        belongs to ``run`` (a ``run_key``), so runs side by side keep their own. ``on_measured``
        gets its load time and peak memory once it is ready."""
        name = f"tfs-{model_name}-candidate-{require_digest(image).short_digest}" + (f"-{run}" if run else "")
        self._pull(image)
        existing = self.client.containers.list(all=True, filters={"name": f"^{name}$"})
        for c in existing:
            if c.status != "running":
                c.remove(force=True)
        running = [c for c in existing if c.status == "running"]
        container = (
            running[0]
            if running
            else self._run(
                image, name, model_name, {LABEL_CANDIDATE: model_name, LABEL_IMAGE: image, LABEL_RUN: run or ""}
            )
        )
        try:
            addresses = self._addresses([container])
            wait_until_available(
                addresses, model_name, version, timeout=ready_timeout, alive=self._alive(addresses, [container])
            )
        except (RolloutError, TargetError) as exc:
            logs = _tail(container)
            container.remove(force=True)
            raise RolloutError(f"candidate {name} of {image} failed: {exc}{logs}") from exc
        if on_measured is not None:
            on_measured(_measure(container, reused=bool(running), available_at=datetime.now(UTC)))
        return addresses

    def stop_candidate(self, model_name: str, run: str | None = None) -> int:
        """Remove the model's candidates (only ``run``'s, when given); returns how many there were."""
        labels = [f"{LABEL_CANDIDATE}={model_name}"] + ([f"{LABEL_RUN}={run}"] if run else [])
        candidates = self.client.containers.list(all=True, filters={"label": labels})
        for c in candidates:
            c.remove(force=True)
        return len(candidates)

    # -- deploy / rollback ---------------------------------------------------------------------

    def deploy(
        self,
        image: str,
        *,
        model_name: str,
        version: int,
        replicas: int,
        ready_timeout: float = 300.0,
        metadata: dict | None = None,
        on_change: Callable[[], None] | None = None,
        sizing: Sizing | None = None,
    ) -> DeployResult:
        """The new revision starts beside the old one; what serves changes the moment its first
        container starts (both answer then), so ``on_change`` is called just before that. The
        old revision stops once every new replica is AVAILABLE. New replicas get ``sizing``'s
        memory limit (else the target's); a revision's replicas keep the metadata they were
        started with."""
        revision = f"{require_digest(image).short_digest}-{self.server.fingerprint()[:6]}"
        self._pull(image)
        mine = self._containers(model_name)
        current = [  # the same digest (pushed anywhere), started with the same server flags
            c
            for c in mine
            if _digest(c) == require_digest(image).digest and c.labels.get(LABEL_SERVER) == self.server.fingerprint()
        ]
        others = [c for c in mine if c not in current]
        meta = _as_labels({MODEL_VERSION: version, **(metadata or {})})
        running = [c for c in current if c.status == "running"]
        written_by_this_run = bool(metadata) and bool(running) and _metadata(running[0]) == meta
        promoted = not running or written_by_this_run  # this run changes (or an earlier try changed) what serves
        memory_limit = (sizing.memory_limit_bytes() if sizing else None) or self.memory_limit

        keep = _keep_running(current, replicas)
        kept_indexes = {int(c.labels[LABEL_REPLICA]) for c in keep}
        kept_meta = _metadata(keep[0]) if keep else meta  # a revision keeps the metadata it was deployed with
        labels = {LABEL_MODEL: model_name, LABEL_IMAGE: image, **{LABEL_META + k: v for k, v in kept_meta.items()}}
        started: list = []
        if promoted and on_change:
            on_change()
        try:
            for index in sorted(set(range(replicas)) - kept_indexes):
                name = f"tfs-{model_name}-{revision}-{index}"
                replica = {**labels, LABEL_REPLICA: str(index)}
                started.append(self._run(image, name, model_name, replica, memory_limit=memory_limit))
            ready = keep + started
            addresses = self._addresses(ready)
            wait_until_available(
                addresses, model_name, version, timeout=ready_timeout, alive=self._alive(addresses, ready)
            )
        except (RolloutError, TargetError) as exc:
            raise _undo(started, others, image, exc) from exc

        retired = _retire(others)
        detail = (
            f"{len(ready)} replica(s) serving: {len(started)} started, {len(keep)} kept, "
            f"{len(retired)} previous stopped (kept for rollback)"
        )
        log.info("revision %s: %s", revision, detail)
        return DeployResult(
            image=image,
            model_version=version,
            promoted=promoted,
            change=_change(existed=bool(mine), wrote=bool(started or retired) or len(current) != len(keep)),
            replicas=len(ready),
            revision=f"tfs-{model_name}-{revision}",
            detail=detail,
            sizing=sizing,
        )

    def rollback(
        self, model_name: str, reason: str = "", *, image: str | None = None, ready_timeout: float = 300.0
    ) -> str:
        """Bring the stopped previous revision back and remove the current one.

        With ``image`` (the one that failed), nothing happens unless that image is serving.
        """
        mine = self._containers(model_name)
        current = [c for c in mine if c.status == "running"]
        if image is not None and not any(_digest(c) == require_digest(image).digest for c in current):
            return f"nothing to roll back: {image} is not serving {model_name!r}"
        log.warning("rolling back model %r%s", model_name, f": {reason}" if reason else "")
        serving = {_digest(c) for c in current}
        stopped = [c for c in mine if c.status != "running" and _digest(c) not in serving]
        newest = max(stopped, key=lambda c: c.attrs.get("Created", ""), default=None)
        previous = [c for c in stopped if newest is not None and _digest(c) == _digest(newest)]
        if not previous:
            for c in current:
                c.remove(force=True)
            return f"no previous revision of {model_name!r}: removed the {len(current)} failed replica(s)"
        image = previous[0].labels.get(LABEL_IMAGE, "?")
        for c in previous:
            c.start()
        addresses = self._addresses(previous)
        version = int(previous[0].labels.get(LABEL_META + MODEL_VERSION, "0"))
        wait_until_available(addresses, model_name, version, timeout=ready_timeout)
        for c in current:
            c.remove(force=True)
        return f"restored {image} ({len(previous)} replica(s) serving)"

    def serving_state(self, model_name: str) -> ServingState | None:
        """What serves ``model_name`` now: image, running replicas and the deploy metadata."""
        running = [c for c in self._containers(model_name) if c.status == "running"]
        if len({_digest(c) for c in running}) != 1:
            return None  # nothing, or a rollout caught half-way
        meta = _metadata(running[0])
        version = meta.pop(MODEL_VERSION, None)
        return ServingState(
            image=running[0].labels.get(LABEL_IMAGE, ""),
            replicas=len(running),
            addresses=tuple(self._addresses(running)),
            model_version=int(version) if version and version.isdigit() else None,
            metadata=meta,
        )

    def balancer_watch(self, model_name: str) -> BalancerWatch | None:
        """No load balancer here: the replicas are the endpoints."""
        return None

    @contextmanager
    def reachable(self, addresses: list[str]) -> Iterator[dict[str, str]]:
        """Replicas publish their ports on this machine: every address is dialable as it is."""
        yield {address: address for address in addresses}

    def endpoints(self, model_name: str, image: str) -> list[str]:
        running = [
            c
            for c in self._containers(model_name)
            if _digest(c) == require_digest(image).digest and c.status == "running"
        ]
        return self._addresses(running)

    # -- helpers ---------------------------------------------------------------------------------

    def _containers(self, model_name: str) -> list:
        containers = self.client.containers.list(all=True, filters={"label": f"{LABEL_MODEL}={model_name}"})
        return sorted(containers, key=lambda c: c.name)

    def _pull(self, image: str) -> None:
        import docker.errors

        try:
            self.client.images.pull(image)  # repo@sha256:...
        except docker.errors.APIError as exc:
            raise RegistryError(
                f"could not pull {image}: {exc.explanation or exc}; is the registry up and the digest pushed?"
            ) from exc

    def _run(self, image: str, name: str, model_name: str, labels: dict, memory_limit: str | int | None = None):
        log.info("starting container %s", name)
        try:
            return self.client.containers.run(
                image,
                name=name,
                detach=True,
                labels={**labels, LABEL_SERVER: self.server.fingerprint()},
                entrypoint=self.server.command(),
                command=self.server.server_args(),
                environment={"MODEL_NAME": model_name, **self.server.files()},
                ports={GRPC_PORT: (self.bind_host, None), REST_PORT: (self.bind_host, None)},
                restart_policy={"Name": "unless-stopped"},
                # as on Kubernetes: not root, nothing writable but /tmp, no capabilities, bounded
                user=f"{RUN_AS_USER}:{RUN_AS_USER}",
                read_only=True,
                tmpfs={"/tmp": "size=256m"},
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                mem_limit=memory_limit or self.memory_limit,
                nano_cpus=int(self.cpus * 1e9),
            )
        except Exception as exc:
            raise TargetError(f"docker could not start {name} from {image}: {exc}") from exc

    def _alive(self, addresses: list[str], containers: list):
        """``alive(address)`` for ``wait_until_available``: raises the moment that replica's
        container is no longer running, with its exit code and last log lines."""
        by_address = dict(zip(addresses, containers))

        def alive(address: str) -> None:
            container = by_address[address]
            container.reload()
            if container.status != "running":
                raise RolloutError(f"replica {container.name} ({address}) {_ended(container)}{_tail(container)}")

        return alive

    def explain_replica(self, model_name: str, address: str) -> str:
        """What became of the replica at ``address`` (after a failed validation): its container's
        state, or that of the model's containers that stopped (an exited one has no port any more)."""
        containers = self._containers(model_name) + self.client.containers.list(
            all=True, filters={"label": f"{LABEL_CANDIDATE}={model_name}"}
        )
        for c in containers:
            bindings = ((c.attrs.get("NetworkSettings") or {}).get("Ports") or {}).get(GRPC_PORT) or []
            if any(f"{self.bind_host}:{b['HostPort']}" == address for b in bindings):
                return f"container {c.name} is {c.status}"
        crashed = [c for c in containers if c.status != "running" and (c.attrs.get("State") or {}).get("ExitCode")]
        stopped = [f"container {c.name} {_ended(c)}{_tail(c, 5)}" for c in crashed]
        return "; ".join(stopped) or f"no container of {model_name!r} holds {address} any more"

    def metrics_address(self, address: str) -> str | None:
        """The REST ``host:port`` (Prometheus metrics) of the replica whose gRPC port is ``address``
        (there is no load balancer here: every address is a replica's)."""
        for c in self._all_replicas():
            ports = (c.attrs.get("NetworkSettings") or {}).get("Ports") or {}
            if any(f"{self.bind_host}:{b['HostPort']}" == address for b in ports.get(GRPC_PORT) or []):
                return f"{self.bind_host}:{(ports.get(REST_PORT) or [{}])[0].get('HostPort')}"
        raise TargetError(f"no running replica has the gRPC address {address}; was it removed?")

    def exposure_warning(self, model_name: str) -> str | None:
        """Replicas publish their ports on ``bind_host``: loopback reaches this machine only."""
        if is_loopback(self.bind_host):
            return None
        return (
            f"the replicas of {model_name!r} publish their ports on {self.bind_host}: any address that routes to "
            "this machine reaches the model, and TF Serving authenticates nobody; bind to 127.0.0.1"
        )

    def _all_replicas(self) -> list:
        """Every serving replica and candidate this target started, of any model."""
        return self.client.containers.list(filters={"label": LABEL_MODEL}) + self.client.containers.list(
            filters={"label": LABEL_CANDIDATE}
        )

    def _addresses(self, containers: list) -> list[str]:
        addresses = []
        for c in containers:
            c.reload()
            bindings = (c.attrs["NetworkSettings"]["Ports"] or {}).get(GRPC_PORT) or []
            if c.status != "running" or not bindings:
                raise RolloutError(
                    f"replica {c.name} {_ended(c)} instead of running: its server stopped at start; "
                    f"see `docker logs {c.name}`{_tail(c)}"
                )
            addresses.append(f"{self.bind_host}:{bindings[0]['HostPort']}")
        return addresses


def _change(*, existed: bool, wrote: bool) -> Change:
    """What a deploy did to the model's containers: made the first, replaced some, or nothing."""
    if not existed:
        return Change.CREATED
    return Change.UPDATED if wrote else Change.UNCHANGED


def _keep_running(current: list, replicas: int) -> list:
    """Converge a revision: keep its running replicas inside the wanted count, remove the rest."""
    keep = []
    for c in current:
        index = int(c.labels.get(LABEL_REPLICA, "-1"))
        if c.status == "running" and 0 <= index < replicas:
            keep.append(c)
        else:
            log.info("removing stale container %s (%s)", c.name, c.status)
            c.remove(force=True)
    return keep


def _undo(started: list, others: list, image: str, exc: Exception) -> RolloutError:
    """Remove the replicas a failed deploy started; the error says why and what still serves."""
    logs = "".join(_tail(c) for c in started)
    for c in started:
        c.remove(force=True)
    serving = sorted({c.labels.get(LABEL_IMAGE, "?") for c in others if c.status == "running"})
    return RolloutError(
        f"{exc}\nrolled back: removed the {len(started)} new replica(s) of {image}; "
        f"still serving: {', '.join(serving) or 'nothing (first deployment)'}{logs}"
    )


def _retire(others: list) -> list:
    """Stop the revision that served (rollback restores it); remove anything older. Returns the stopped."""
    retired = [c for c in others if c.status == "running"]
    if retired:
        for c in others:
            if c.status != "running":
                c.remove(force=True)
        for c in retired:
            log.info("stopping previous revision container %s (kept for rollback)", c.name)
            c.stop(timeout=5)
    return retired


def _metadata(container) -> dict[str, str]:
    """The deploy metadata a replica was started with (its ``LABEL_META`` labels)."""
    return {k[len(LABEL_META) :]: v for k, v in container.labels.items() if k.startswith(LABEL_META)}


def _as_labels(metadata: dict) -> dict[str, str]:
    return {str(k): str(v) for k, v in metadata.items()}


def _digest(container) -> str:
    """The revision a container runs: its image's digest, whichever repository it was pulled from."""
    return container.labels.get(LABEL_IMAGE, "").partition("@")[2]


def _measure(container, *, reused: bool, available_at: datetime) -> Measurement:
    """The candidate's load time (its start to the model AVAILABLE) and its cgroup's peak memory,
    read inside it; what cannot be read is None, with the reason."""
    notes, load, peak = [], None, None
    if reused:
        notes.append(f"load time: not observed, {container.name} was already running (an earlier try started it)")
    else:
        started = (container.attrs.get("State") or {}).get("StartedAt", "")
        try:
            load = seconds_between(started, available_at)
        except ValueError as exc:
            notes.append(f"load time: container {container.name}'s start {started!r} is unusable ({exc})")
    try:
        code, output = container.exec_run(PEAK_COMMAND)
        text = output.decode(errors="replace").strip()
        if code != 0:
            raise ValueError(f"exit code {code}: {text[-200:]!r}")
        peak = parse_peak(text)
    except Exception as exc:  # docker's APIError (container gone, exec refused) or unreadable output
        notes.append(f"peak memory: could not read it inside container {container.name} ({exc})")
    return Measurement(load, peak, tuple(notes), where=f"candidate container {container.name}")


def _ended(container) -> str:
    """``exited with code 137 (OOM-killed)``: how a container stopped."""
    state = container.attrs.get("State") or {}
    why = "OOM-killed" if state.get("OOMKilled") else state.get("Error") or ""
    ended = f"exited with code {state.get('ExitCode', '?')}" + (f" ({why})" if why else "")
    return f"{ended}, status {container.status}"


def _tail(container, lines: int = 15) -> str:
    try:
        text = container.logs(tail=lines).decode(errors="replace").strip()
    except Exception:  # the container may already be gone
        return ""
    return f"\n--- last log lines of {container.name} ---\n{text}" if text else ""


def check_registry(host: str, *, timeout: float = 5.0) -> None:
    """A registry answers ``GET /v2/`` with 200, or 401 when it wants credentials."""
    import requests

    scheme = "http" if is_loopback(host) else "https"
    url = f"{scheme}://{host}/v2/"
    try:
        response = requests.get(url, timeout=timeout)
    except requests.RequestException as exc:
        raise RegistryError(
            f"registry {host} is not reachable at {url} ({exc.__class__.__name__}); start it "
            "(`make services` for the local one) or fix image_repository"
        ) from exc
    if response.status_code not in (200, 401):
        raise RegistryError(f"registry {host} answered {url} with HTTP {response.status_code}; is it an OCI registry?")
