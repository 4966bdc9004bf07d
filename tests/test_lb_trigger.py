"""The LoadBalancer wait: the trigger's ``run()`` on the real cluster of ``make cluster``, and how the
DAG's ``wait_for_endpoint`` defers to it and reads its events.

The trigger reaches the API server through a kubeconfig holding a ServiceAccount's token and the
cncf provider's real ``AsyncKubernetesHook``; addresses come from the cluster's LoadBalancer
controller (cluster/loadbalancer.py). A Service stays pending for real when it asks for an address
that another Service holds, or names a ``loadBalancerClass`` that no controller here implements.
Only API server hiccups (503) come from the fault proxy.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import socket
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSensorTimeout, TaskDeferred
from api_faults import FaultProxy
from kubernetes import client as k8s
from local_cluster import (
    LB_POOL,
    fresh_namespace,
    service_account_token,
    write_token_kubeconfig,
)

from tfserving_airflow.sensors import WaitForEndpointSensor, address_from_event
from tfserving_airflow.triggers import LoadBalancerTrigger

SERVICE = "tfs-resnet"
OTHER_CLASS = "example.com/no-such-load-balancer"  # no controller implements it: pending for ever
HELD_IP = str(list(LB_POOL.hosts())[-2])  # requested explicitly; the controller hands out lowest first


@pytest.fixture
def ns(admin):
    with fresh_namespace(admin, "lb") as name:
        yield name


@pytest.fixture
def kubeconfig(admin, ns, tmp_path):
    """A ServiceAccount that may read Services in the namespace, as the sensor needs."""
    token = service_account_token(
        admin, ns, "waiter", [{"apiGroups": [""], "resources": ["services"], "verbs": ["get"]}]
    )
    return str(write_token_kubeconfig(tmp_path / "kubeconfig", token, ns))


def create_service(admin, ns, name=SERVICE, *, type_="LoadBalancer", **spec) -> None:
    body = {
        "metadata": {"name": name},
        "spec": {
            "type": type_,
            "selector": {"app": name},
            "ports": [{"name": "grpc", "port": 8500}, {"name": "http", "port": 8501}],
            **spec,
        },
    }
    k8s.CoreV1Api(admin).create_namespaced_service(ns, body)


async def first_event(trigger: LoadBalancerTrigger, limit: float = 15.0) -> dict:
    events = trigger.run()
    try:
        return (await asyncio.wait_for(events.__anext__(), limit)).payload
    finally:
        await events.aclose()


def trigger_for(ns: str, kubeconfig: str, **kwargs) -> LoadBalancerTrigger:
    kwargs = {"timeout": 30, "poll_interval": 0.2, **kwargs}
    return LoadBalancerTrigger(namespace=ns, service_name=SERVICE, config_file=kubeconfig, **kwargs)


# -- the trigger -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_pending_then_assigned_ip(admin, ns, kubeconfig, capsys):
    """The address this Service asks for is held by another; once that one goes, it gets it."""
    create_service(admin, ns, "holder", loadBalancerIP=HELD_IP)
    create_service(admin, ns, loadBalancerIP=HELD_IP)
    waiting = asyncio.create_task(first_event(trigger_for(ns, kubeconfig), limit=30))
    await asyncio.sleep(1.5)
    assert not waiting.done()
    k8s.CoreV1Api(admin).delete_namespaced_service("holder", ns)
    event = await waiting
    assert event == {"status": "success", "address": f"{HELD_IP}:8500"}
    assert capsys.readouterr().out.count("has no ingress yet") >= 3  # the trigger's log while pending
    events = k8s.CoreV1Api(admin).list_namespaced_event(ns, field_selector=f"involvedObject.name={SERVICE}").items
    assert {"AllocationFailed", "EnsuredLoadBalancer"} <= {e.reason for e in events}


@pytest.mark.asyncio
async def test_hostname_ingress(admin, ns, kubeconfig):
    """A cloud that hands out names (AWS ELB): played by writing the status of a Service of its class."""
    create_service(admin, ns, loadBalancerClass=OTHER_CLASS)
    status = {"status": {"loadBalancer": {"ingress": [{"hostname": "a1b2.elb.us-east-1.amazonaws.com"}]}}}
    k8s.CoreV1Api(admin).patch_namespaced_service_status(SERVICE, ns, status)
    event = await first_event(trigger_for(ns, kubeconfig))
    assert event == {"status": "success", "address": "a1b2.elb.us-east-1.amazonaws.com:8500"}


@pytest.mark.asyncio
async def test_never_assigned_times_out_with_an_explanation(admin, ns, kubeconfig):
    create_service(admin, ns, loadBalancerClass=OTHER_CLASS)
    event = await first_event(trigger_for(ns, kubeconfig, timeout=1.5, poll_interval=0.3))
    assert event["status"] == "timeout"
    assert f"service {SERVICE!r} in namespace {ns!r} got no ingress IP/hostname within 2 s" in event["message"]
    assert f"kubectl describe service {SERVICE} -n {ns}" in event["message"]


@pytest.mark.asyncio
async def test_missing_service_is_an_error(ns, kubeconfig):
    event = await first_event(trigger_for(ns, kubeconfig))
    assert event["status"] == "error" and event["transient"] is False
    assert f"Service {SERVICE!r} not found in namespace {ns!r}" in event["message"]
    assert "https://10.200.0.1:6443" in event["message"]


@pytest.mark.asyncio
async def test_forbidden_is_an_error_naming_the_rbac_rule(admin, ns, tmp_path):
    create_service(admin, ns)
    token = service_account_token(admin, ns, "nobody", None)  # no Role at all: RBAC says no
    kubeconfig = str(write_token_kubeconfig(tmp_path / "nobody", token, ns))
    event = await first_event(trigger_for(ns, kubeconfig))
    assert event["status"] == "error" and "HTTP 403" in event["message"]
    assert f"grant `get` on `services` in {ns!r}" in event["message"] and kubeconfig in event["message"]


@pytest.mark.asyncio
async def test_api_server_hiccups_are_waited_out(admin, ns, kubeconfig, tmp_path):
    import yaml

    create_service(admin, ns)
    with FaultProxy() as proxy:
        config = yaml.safe_load(Path(kubeconfig).read_text())
        config["clusters"][0]["cluster"] = {"server": proxy.url}
        proxied = tmp_path / "proxied"
        proxied.write_text(yaml.safe_dump(config))
        proxy.fail("GET", rf"/services/{SERVICE}$", 503, times=2)
        event = await first_event(trigger_for(ns, str(proxied)))
    assert event["status"] == "success" and event["address"].rsplit(":", 1)[0] in {str(ip) for ip in LB_POOL.hosts()}
    assert len(proxy.injected) == 2


@pytest.mark.asyncio
async def test_service_that_is_not_a_load_balancer_fails_at_once(admin, ns, kubeconfig):
    create_service(admin, ns, type_="ClusterIP")
    event = await first_event(trigger_for(ns, kubeconfig))
    assert event["status"] == "error" and "of type ClusterIP, not LoadBalancer" in event["message"]


@pytest.mark.asyncio
async def test_unreachable_api_is_a_transient_error(tmp_path):
    import yaml

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig.yaml"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "x",
                "clusters": [{"name": "x", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}],
                "users": [{"name": "x", "user": {}}],
            }
        )
    )
    event = await first_event(trigger_for("any", str(kubeconfig)))
    assert event["status"] == "error" and event["transient"] is True
    assert f"could not reach the Kubernetes API at http://127.0.0.1:{port}" in event["message"]


@pytest.mark.asyncio
async def test_kubernetes_connection_is_used_by_id(admin, ns, kubeconfig, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_LOCAL_CLUSTER", json.dumps({"conn_type": "kubernetes", "extra": {"kube_config_path": kubeconfig}})
    )
    create_service(admin, ns)
    trigger = LoadBalancerTrigger(
        namespace=ns, service_name=SERVICE, kubernetes_conn_id="local_cluster", poll_interval=0.2, timeout=30
    )
    event = await first_event(trigger)
    assert event["status"] == "success" and event["address"].endswith(":8500")


@pytest.mark.asyncio
async def test_missing_connection_is_an_error_naming_it():
    trigger = LoadBalancerTrigger(namespace="any", service_name=SERVICE, kubernetes_conn_id="no_such_conn")
    event = await first_event(trigger)
    assert event["status"] == "error" and "kubernetes connection 'no_such_conn'" in event["message"]


def test_serialize_round_trips_and_holds_no_secret():
    trigger = LoadBalancerTrigger(
        namespace="serving",
        service_name=SERVICE,
        timeout=300,
        poll_interval=5,
        cluster_url="https://34.118.0.10",
        ssl_ca_cert="LS0tLS1CRUdJTi",
        gcp_conn_id="gcp",
        impersonation_chain=("sa@p.iam.gserviceaccount.com",),
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

    trigger = LoadBalancerTrigger(
        namespace="serving",
        service_name=SERVICE,
        cluster_url="https://34.118.0.10",
        ssl_ca_cert="LS0tLS1CRUdJTi",
        gcp_conn_id="gcp",
    )
    hook = trigger.hook()
    assert isinstance(hook, GKEKubernetesAsyncHook)
    assert (hook._cluster_url, hook._ssl_ca_cert, hook._hook_kwargs["gcp_conn_id"]) == (
        "https://34.118.0.10",
        "LS0tLS1CRUdJTi",
        "gcp",
    )
    with pytest.raises(ValueError, match="both cluster_url and ssl_ca_cert"):
        LoadBalancerTrigger(namespace="serving", service_name=SERVICE, cluster_url="https://34.118.0.10")


# -- the DAG's wait_for_endpoint: what it does with the trigger ------------------------------------


def wait_for_endpoint(namespace: str = "serving", **kwargs) -> WaitForEndpointSensor:
    return WaitForEndpointSensor(
        task_id="wait_for_endpoint",
        settings={"target": "kubernetes", "namespace": namespace, "model_name": "resnet", "replicas": "2"},
        image="127.0.0.1:5000/resnet-serving@sha256:" + "0" * 64,
        model={"version": 1},
        **kwargs,
    )


def test_wait_for_endpoint_defers_the_load_balancer_wait_with_its_timeout(ns, kubeconfig, monkeypatch):
    from tfserving_deploy.targets.kubernetes.manifests import object_name

    monkeypatch.setenv(  # the target it asks whether a balancer exists connects through it
        "AIRFLOW_CONN_KUBERNETES_DEFAULT",
        json.dumps({"conn_type": "kubernetes", "extra": {"kube_config_path": kubeconfig}}),
    )
    with pytest.raises(TaskDeferred) as deferred:
        wait_for_endpoint(ns, timeout=900, poke_interval=20).execute({})
    trigger = deferred.value.trigger
    assert isinstance(trigger, LoadBalancerTrigger) and deferred.value.method_name == "execute_complete"
    kwargs = trigger.serialize()[1]
    assert (kwargs["namespace"], kwargs["service_name"], kwargs["port"]) == (ns, object_name("resnet"), 8500)
    assert (kwargs["timeout"], kwargs["poll_interval"], kwargs["kubernetes_conn_id"]) == (900, 20, "kubernetes_default")
    assert deferred.value.timeout.total_seconds() > 900  # a backstop only; the trigger explains its own timeout


def test_the_event_becomes_the_address():
    assert address_from_event({"status": "success", "address": "127.0.0.5:8500"}) == "127.0.0.5:8500"


def test_a_timeout_event_fails_with_the_triggers_explanation():
    with pytest.raises(AirflowSensorTimeout, match="got no ingress IP/hostname within 600 s"):
        address_from_event(
            {
                "status": "timeout",
                "message": "LoadBalancer for service 'tfs-resnet' in namespace "
                "'serving' got no ingress IP/hostname within 600 s",
            },
        )


def test_error_events_fail_at_once_unless_transient():
    with pytest.raises(AirflowFailException, match="not found"):
        address_from_event({"status": "error", "message": "Service 'tfs-resnet' not found", "transient": False})
    with pytest.raises(AirflowException, match="could not reach") as err:
        address_from_event({"status": "error", "message": "could not reach the Kubernetes API", "transient": True})
    assert not isinstance(err.value, AirflowFailException)  # the task's retries apply
