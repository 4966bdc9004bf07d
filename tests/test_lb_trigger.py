"""The LoadBalancer wait: the trigger's ``run()`` and the sensor, against kmock's Kubernetes emulator.

The emulator serves real Kubernetes HTTP on 127.0.0.1; the trigger reaches it through a generated
kubeconfig and the cncf provider's real ``AsyncKubernetesHook``. No controller runs there, so the
tests play the cloud controller by writing ``status.loadBalancer.ingress`` themselves.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import socket

import pytest
import yaml
from kmock import KubernetesError
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSensorTimeout, TaskDeferred

from tfserving_airflow.sensors import WaitForLoadBalancerSensor
from tfserving_airflow.triggers import LoadBalancerTrigger

NAMESPACE, SERVICE = "serving", "tfs-resnet"
SERVICE_URL = f"/api/v1/namespaces/{NAMESPACE}/services/{SERVICE}"


def write_kubeconfig(path, server: str):
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": server}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "tester", "namespace": NAMESPACE}}],
        "users": [{"name": "tester", "user": {"token": "not-a-secret"}}],
    }))
    return str(path)


@pytest.fixture
def kubeconfig(kmock, tmp_path):
    return write_kubeconfig(tmp_path / "kubeconfig.yaml", str(kmock.url).rstrip("/"))


async def create_service(k8s, *, type_="LoadBalancer", port=8500):
    body = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": SERVICE, "namespace": NAMESPACE},
        "spec": {"type": type_, "selector": {"app": SERVICE}, "ports": [{"name": "grpc", "port": port}, {"name": "rest", "port": 8501}]},
    }
    async with k8s.post(f"/api/v1/namespaces/{NAMESPACE}/services", json=body) as response:
        assert response.status == 200, await response.text()


async def assign_ingress(k8s, ingress: dict, *, after_reads: int = 0):
    """What the cloud controller does once the load balancer exists (here: after the waiter looked N times)."""
    while len(k8s["get", SERVICE_URL]) < after_reads:
        await asyncio.sleep(0.02)
    patch = {"status": {"loadBalancer": {"ingress": [ingress]}}}
    async with k8s.patch(f"{SERVICE_URL}/status", json=patch, headers={"Content-Type": "application/merge-patch+json"}) as response:
        assert response.status == 200, await response.text()


async def first_event(trigger: LoadBalancerTrigger, limit: float = 15.0) -> dict:
    events = trigger.run()
    try:
        return (await asyncio.wait_for(events.__anext__(), limit)).payload
    finally:
        await events.aclose()


def trigger_for(kubeconfig: str, **kwargs) -> LoadBalancerTrigger:
    kwargs = {"timeout": 10, "poll_interval": 0.1, **kwargs}
    return LoadBalancerTrigger(namespace=NAMESPACE, service_name=SERVICE, config_file=kubeconfig, **kwargs)


# -- the trigger -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_pending_then_assigned_ip(kmock, kubeconfig):
    await create_service(kmock)
    controller = asyncio.create_task(assign_ingress(kmock, {"ip": "127.0.0.5"}, after_reads=3))

    event = await first_event(trigger_for(kubeconfig))
    await controller

    assert event == {"status": "success", "address": "127.0.0.5:8500"}
    assert len(kmock["get", SERVICE_URL]) >= 4  # three looks while pending, then one that found the address


@pytest.mark.asyncio
async def test_hostname_ingress(kmock, kubeconfig):
    await create_service(kmock)
    controller = asyncio.create_task(assign_ingress(kmock, {"hostname": "a1b2.elb.us-east-1.amazonaws.com"}, after_reads=1))
    event = await first_event(trigger_for(kubeconfig))
    await controller
    assert event == {"status": "success", "address": "a1b2.elb.us-east-1.amazonaws.com:8500"}


@pytest.mark.asyncio
async def test_never_assigned_times_out_with_an_explanation(kmock, kubeconfig):
    await create_service(kmock)
    event = await first_event(trigger_for(kubeconfig, timeout=0.6, poll_interval=0.2))
    assert event["status"] == "timeout"
    assert f"service {SERVICE!r} in namespace {NAMESPACE!r} got no ingress IP/hostname within 1 s" in event["message"]
    assert f"kubectl describe service {SERVICE} -n {NAMESPACE}" in event["message"]


@pytest.mark.asyncio
async def test_missing_service_is_an_error(kmock, kubeconfig):
    event = await first_event(trigger_for(kubeconfig))
    assert event["status"] == "error" and event["transient"] is False
    assert f"Service {SERVICE!r} not found in namespace {NAMESPACE!r}" in event["message"]
    assert kmock.url.host in event["message"]


@pytest.mark.asyncio
async def test_forbidden_is_an_error_naming_the_rbac_rule(kmock, kubeconfig):
    await create_service(kmock)
    kmock["get", SERVICE_URL] << KubernetesError(
        status=403, reason="Forbidden", message=f'services "{SERVICE}" is forbidden: User "tester" cannot get resource "services"')
    event = await first_event(trigger_for(kubeconfig))
    assert event["status"] == "error" and "HTTP 403" in event["message"]
    assert f"grant `get` on `services` in {NAMESPACE!r}" in event["message"] and kubeconfig in event["message"]


@pytest.mark.asyncio
async def test_api_server_hiccups_are_waited_out(kmock, kubeconfig):
    await create_service(kmock)
    await assign_ingress(kmock, {"ip": "127.0.0.5"})
    kmock["get", SERVICE_URL][:2] << KubernetesError(status=503, reason="ServiceUnavailable", message="etcd leader changed")
    event = await first_event(trigger_for(kubeconfig))
    assert event == {"status": "success", "address": "127.0.0.5:8500"}
    assert len(kmock["get", SERVICE_URL]) == 3


@pytest.mark.asyncio
async def test_service_that_is_not_a_load_balancer_fails_at_once(kmock, kubeconfig):
    await create_service(kmock, type_="ClusterIP")
    event = await first_event(trigger_for(kubeconfig))
    assert event["status"] == "error" and "of type ClusterIP, not LoadBalancer" in event["message"]


@pytest.mark.asyncio
async def test_unreachable_api_is_a_transient_error(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig.yaml", f"http://127.0.0.1:{port}")
    event = await first_event(trigger_for(kubeconfig))
    assert event["status"] == "error" and event["transient"] is True
    assert f"could not reach the Kubernetes API at http://127.0.0.1:{port}" in event["message"]


@pytest.mark.asyncio
async def test_kubernetes_connection_is_used_by_id(kmock, kubeconfig, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_KMOCK_CLUSTER", json.dumps({"conn_type": "kubernetes", "extra": {"kube_config_path": kubeconfig}}))
    await create_service(kmock)
    await assign_ingress(kmock, {"ip": "127.0.0.5"})
    trigger = LoadBalancerTrigger(namespace=NAMESPACE, service_name=SERVICE, kubernetes_conn_id="kmock_cluster", poll_interval=0.1)
    assert await first_event(trigger) == {"status": "success", "address": "127.0.0.5:8500"}


@pytest.mark.asyncio
async def test_missing_connection_is_an_error_naming_it():
    trigger = LoadBalancerTrigger(namespace=NAMESPACE, service_name=SERVICE, kubernetes_conn_id="no_such_conn")
    event = await first_event(trigger)
    assert event["status"] == "error" and "kubernetes connection 'no_such_conn'" in event["message"]


def test_serialize_round_trips_and_holds_no_secret():
    trigger = LoadBalancerTrigger(
        namespace=NAMESPACE, service_name=SERVICE, timeout=300, poll_interval=5,
        cluster_url="https://34.118.0.10", ssl_ca_cert="LS0tLS1CRUdJTi", gcp_conn_id="gcp", impersonation_chain=("sa@p.iam.gserviceaccount.com",),
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "tfserving_airflow.triggers.LoadBalancerTrigger"
    json.dumps(kwargs)  # stored in the metadata DB
    module, _, name = classpath.rpartition(".")
    again = getattr(importlib.import_module(module), name)(**kwargs)
    assert again.serialize() == (classpath, kwargs)
    assert kwargs["started_at"] == trigger.started_at  # the deadline survives a triggerer restart
    assert not {"token", "password", "api_key"} & set(kwargs)


def test_gke_access_goes_through_the_google_providers_async_hook():
    from airflow.providers.google.cloud.hooks.kubernetes_engine import GKEKubernetesAsyncHook

    trigger = LoadBalancerTrigger(namespace=NAMESPACE, service_name=SERVICE, cluster_url="https://34.118.0.10",
                                  ssl_ca_cert="LS0tLS1CRUdJTi", gcp_conn_id="gcp")
    hook = trigger.hook()
    assert isinstance(hook, GKEKubernetesAsyncHook)
    assert (hook._cluster_url, hook._ssl_ca_cert, hook._hook_kwargs["gcp_conn_id"]) == ("https://34.118.0.10", "LS0tLS1CRUdJTi", "gcp")
    with pytest.raises(ValueError, match="both cluster_url and ssl_ca_cert"):
        LoadBalancerTrigger(namespace=NAMESPACE, service_name=SERVICE, cluster_url="https://34.118.0.10")


# -- the sensor ------------------------------------------------------------------------------------


def sensor(**kwargs) -> WaitForLoadBalancerSensor:
    return WaitForLoadBalancerSensor(task_id="wait_for_lb", namespace=NAMESPACE, service_name=SERVICE, **kwargs)


def test_sensor_defers_to_the_trigger_with_its_timeout():
    task = sensor(kubernetes_conn_id="k8s", timeout=900, poke_interval=20)
    with pytest.raises(TaskDeferred) as deferred:
        task.execute({})
    trigger = deferred.value.trigger
    assert isinstance(trigger, LoadBalancerTrigger) and deferred.value.method_name == "execute_complete"
    kwargs = trigger.serialize()[1]
    assert (kwargs["timeout"], kwargs["poll_interval"], kwargs["kubernetes_conn_id"], kwargs["port"]) == (900, 20, "k8s", 8500)
    assert deferred.value.timeout.total_seconds() > 900  # a backstop only; the trigger explains its own timeout


def test_execute_complete_returns_the_address():
    assert sensor().execute_complete({}, {"status": "success", "address": "127.0.0.5:8500"}) == "127.0.0.5:8500"


def test_execute_complete_timeout_fails_with_the_triggers_explanation():
    with pytest.raises(AirflowSensorTimeout, match="got no ingress IP/hostname within 600 s"):
        sensor().execute_complete({}, {"status": "timeout", "message": "LoadBalancer for service 'tfs-resnet' in namespace "
                                                                     "'serving' got no ingress IP/hostname within 600 s"})


def test_execute_complete_errors_fail_at_once_unless_transient():
    with pytest.raises(AirflowFailException, match="not found"):
        sensor().execute_complete({}, {"status": "error", "message": "Service 'tfs-resnet' not found", "transient": False})
    with pytest.raises(AirflowException, match="could not reach") as err:
        sensor().execute_complete({}, {"status": "error", "message": "could not reach the Kubernetes API", "transient": True})
    assert not isinstance(err.value, AirflowFailException)  # the task's retries apply


@pytest.mark.asyncio
async def test_non_deferrable_poke_uses_the_sync_client(kmock, kubeconfig):
    task = sensor(config_file=kubeconfig, deferrable=False)
    with pytest.raises(AirflowFailException, match="not found in namespace"):
        await asyncio.to_thread(task.poke, {})

    await create_service(kmock)
    pending = await asyncio.to_thread(task.poke, {})
    assert not pending.is_done

    await assign_ingress(kmock, {"ip": "127.0.0.5"})
    done = await asyncio.to_thread(task.poke, {})
    assert done.is_done and done.xcom_value == "127.0.0.5:8500"


@pytest.mark.asyncio
async def test_non_deferrable_timeout_explains_itself(kmock, kubeconfig):
    await create_service(kmock)
    task = sensor(config_file=kubeconfig, deferrable=False, timeout=0.3, poke_interval=0.1)
    with pytest.raises(AirflowSensorTimeout, match="kubectl describe service tfs-resnet -n serving"):
        await asyncio.to_thread(task.execute, {})
