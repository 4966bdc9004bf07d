"""The ``local`` target: replicas as containers on this machine's Docker engine.

A revision is the image digest. ``deploy`` starts the new revision beside the old one, waits
until every new replica serves the model, and only then removes the old revision: a failed
rollout removes what it started and leaves the previous model serving.
"""

from __future__ import annotations

import logging

from ..errors import RegistryError, RolloutError, TargetError
from ..images import registry_host
from ..serving_client import wait_until_available

log = logging.getLogger(__name__)

LABEL_MODEL = "io.tfserving-deploy.serving-model"
LABEL_IMAGE = "io.tfserving-deploy.image"
LABEL_REPLICA = "io.tfserving-deploy.replica"
GRPC_PORT, REST_PORT = "8500/tcp", "8501/tcp"


def revision_of(image: str) -> str:
    """A short, stable name for a digest reference: ``repo@sha256:abcd...`` -> ``abcd1234abcd``."""
    if "@sha256:" not in image:
        raise TargetError(f"deploy by digest: {image!r} is not a repo@sha256:... reference; run push_image first")
    return image.rsplit(":", 1)[1][:12]


class LocalDockerTarget:
    def __init__(self, client, *, bind_host: str = "127.0.0.1"):
        self.client = client
        self.bind_host = bind_host

    # -- ensure_cluster ------------------------------------------------------------------------

    def ensure_ready(self, image_repository: str) -> dict:
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

    # -- deploy ----------------------------------------------------------------------------------

    def deploy(self, image: str, *, model_name: str, version: int, replicas: int, ready_timeout: float = 300.0) -> dict:
        revision = revision_of(image)
        self._pull(image)
        mine = self._containers(model_name)
        current = [c for c in mine if c.labels.get(LABEL_IMAGE) == image]
        others = [c for c in mine if c.labels.get(LABEL_IMAGE) != image]

        keep, started = [], []
        for c in current:  # converge this revision: keep running replicas inside the wanted count
            index = int(c.labels.get(LABEL_REPLICA, "-1"))
            if c.status == "running" and 0 <= index < replicas:
                keep.append(c)
            else:
                log.info("removing stale container %s (%s)", c.name, c.status)
                c.remove(force=True)
        kept_indexes = {int(c.labels[LABEL_REPLICA]) for c in keep}
        try:
            for index in range(replicas):
                if index not in kept_indexes:
                    started.append(self._run_replica(image, model_name, revision, index))
            ready = keep + started
            wait_until_available(self._addresses(ready), model_name, version, timeout=ready_timeout)
        except (RolloutError, TargetError) as exc:
            logs = "".join(_tail(c) for c in started)
            for c in started:
                c.remove(force=True)
            serving = sorted({c.labels.get(LABEL_IMAGE, "?") for c in others if c.status == "running"})
            raise RolloutError(
                f"{exc}\nrolled back: removed the {len(started)} new replica(s) of {image}; "
                f"still serving: {', '.join(serving) or 'nothing (first deployment)'}{logs}"
            ) from exc

        for c in others:
            log.info("removing previous revision container %s (%s)", c.name, c.labels.get(LABEL_IMAGE))
            c.remove(force=True)
        log.info(
            "revision %s: %d replica(s) serving (%d started, %d kept, %d old removed)",
            revision, len(ready), len(started), len(keep), len(others),
        )
        return {"image": image, "revision": revision, "started": len(started), "kept": len(keep), "removed": len(others)}

    def endpoints(self, model_name: str, image: str) -> list[str]:
        running = [c for c in self._containers(model_name) if c.labels.get(LABEL_IMAGE) == image and c.status == "running"]
        return self._addresses(running)

    # -- helpers ---------------------------------------------------------------------------------

    def _containers(self, model_name: str) -> list:
        containers = self.client.containers.list(all=True, filters={"label": f"{LABEL_MODEL}={model_name}"})
        return sorted(containers, key=lambda c: c.name)

    def _pull(self, image: str) -> None:
        import docker.errors

        repo, _, digest = image.partition("@")
        try:
            self.client.images.pull(repo, tag=digest)
        except docker.errors.APIError as exc:
            raise RegistryError(
                f"could not pull {image}: {exc.explanation or exc}; is the registry up and the digest pushed?"
            ) from exc

    def _run_replica(self, image: str, model_name: str, revision: str, index: int):
        name = f"tfs-{model_name}-{revision}-{index}"
        log.info("starting replica %s", name)
        try:
            return self.client.containers.run(
                image,
                name=name,
                detach=True,
                labels={LABEL_MODEL: model_name, LABEL_IMAGE: image, LABEL_REPLICA: str(index)},
                environment={"MODEL_NAME": model_name},
                ports={GRPC_PORT: (self.bind_host, None), REST_PORT: (self.bind_host, None)},
                restart_policy={"Name": "unless-stopped"},
            )
        except Exception as exc:
            raise TargetError(f"docker could not start replica {name} from {image}: {exc}") from exc

    def _addresses(self, containers: list) -> list[str]:
        addresses = []
        for c in containers:
            c.reload()
            bindings = (c.attrs["NetworkSettings"]["Ports"] or {}).get(GRPC_PORT) or []
            if c.status != "running" or not bindings:
                raise RolloutError(
                    f"replica {c.name} is {c.status} instead of running: its server exits at start "
                    f"(crash loop); see `docker logs {c.name}`"
                )
            addresses.append(f"{self.bind_host}:{bindings[0]['HostPort']}")
        return addresses


def _tail(container, lines: int = 15) -> str:
    try:
        text = container.logs(tail=lines).decode(errors="replace").strip()
    except Exception:  # the container may already be gone
        return ""
    return f"\n--- last log lines of {container.name} ---\n{text}" if text else ""


def check_registry(host: str, *, timeout: float = 5.0) -> None:
    """A registry answers ``GET /v2/`` with 200, or 401 when it wants credentials."""
    import requests

    scheme = "http" if host.split(":")[0] in ("127.0.0.1", "localhost", "::1") else "https"
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
