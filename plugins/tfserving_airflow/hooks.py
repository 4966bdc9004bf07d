"""Turn Airflow connections into the clients the library needs. Credentials stay in connections."""

from __future__ import annotations

from tfserving_deploy.errors import TargetError

TARGETS = ("local",)


def docker_client(docker_conn_id: str | None = None, base_url: str | None = None):
    """A high-level ``docker.DockerClient`` on the provider's (logged-in) API client.

    With ``docker_conn_id`` the provider logs in to that connection's registry, so pushes and
    pulls use its credentials without them ever reaching the task's arguments or logs.
    """
    import docker
    from airflow.providers.docker.hooks.docker import DockerHook

    hook = DockerHook(docker_conn_id=docker_conn_id, base_url=base_url or "unix://var/run/docker.sock")
    try:
        api = hook.api_client
    except Exception as exc:  # the provider wraps "engine down" in AirflowException
        raise TargetError(
            f"Docker engine at {base_url or 'unix://var/run/docker.sock'} is not reachable ({exc}); "
            "start dockerd (`make services`) or set docker_url to a running engine"
        ) from exc
    client = docker.DockerClient.__new__(docker.DockerClient)
    client.api = api
    return client


def get_target(name: str, docker_conn_id: str | None = None, docker_url: str | None = None):
    """The deployment target named by the DAG's ``target`` param."""
    if name == "local":
        from tfserving_deploy.targets.local import LocalDockerTarget

        return LocalDockerTarget(docker_client(docker_conn_id, docker_url))
    raise TargetError(f"target {name!r} is not supported; choose one of {', '.join(TARGETS)}")
