"""Validation and the change check from where pod IPs do not route: Airflow on a laptop, or in
another VPC than the cluster, reaches the API server and the load balancer, not the pods.

A network namespace made for the test plays that worker: its only routes lead to the API server
and the load-balancer pool. The same code then runs inside it (``ip netns exec``): the target finds
the pod IPs unreachable and reaches every pod through a port-forward of the API server.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import textwrap
import uuid

import pytest
from local_cluster import (
    API_HOST,
    LB_POOL,
    POD_CIDR,
    ROOT,
    SMALL,
    admin_client,
    fresh_namespace,
    publish_model_image,
    require_cluster,
    service_account_token,
    write_token_kubeconfig,
)
from savedmodels import make_string_model

from tfserving_deploy.targets.kubernetes.rbac import deployer_role

pytestmark = pytest.mark.integration
OUTSIDE_NET = "10.201.0.0/30"  # the worker's own link to this host: not part of the cluster


@pytest.fixture
def outside():
    """A network namespace with a veth link to this host and routes to the API server and the LB pool only."""
    name = f"tfsk-out-{uuid.uuid4().hex[:6]}"
    host_dev, ns_dev = f"tfo{name[-6:]}", f"tfi{name[-6:]}"

    def ip(*args, ns=None):
        command = (["ip", "netns", "exec", ns] if ns else []) + ["ip", *args]
        subprocess.run(command, check=True, capture_output=True)

    ip("netns", "add", name)
    try:
        ip("link", "add", host_dev, "type", "veth", "peer", "name", ns_dev)
        ip("link", "set", ns_dev, "netns", name)
        ip("addr", "add", "10.201.0.1/30", "dev", host_dev)
        ip("link", "set", host_dev, "up")
        ip("addr", "add", "10.201.0.2/30", "dev", ns_dev, ns=name)
        ip("link", "set", ns_dev, "up", ns=name)
        ip("link", "set", "lo", "up", ns=name)
        ip("route", "add", f"{API_HOST}/32", "via", "10.201.0.1", ns=name)
        ip("route", "add", str(LB_POOL), "via", "10.201.0.1", ns=name)
        yield name
    finally:
        subprocess.run(["ip", "link", "delete", host_dev], capture_output=True)
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)


SCRIPT = textwrap.dedent("""
    import json, sys
    from datetime import datetime, timezone
    from types import SimpleNamespace
    from airflow.sdk.exceptions import AirflowSkipException
    from tfserving_airflow.config import RunSettings
    from tfserving_airflow.connections import target_from
    from tfserving_airflow.operators import CheckForChangeOperator
    from tfserving_deploy.model.savedmodel import read_signature
    from tfserving_deploy.validation.checks import validate_replicas

    args = json.loads(sys.argv[1])
    options = {"target": "kubernetes", "kubernetes_conn_id": "outside", "namespace": args["namespace"]}
    target = target_from(RunSettings(options))
    serving = target.serving_state("resnet")
    with target.reachable(list(serving.addresses)) as dial:
        report = validate_replicas(list(serving.addresses), model_name="resnet", version=1,
                                   signature=read_signature(args["model_dir"]), model_dir=args["model_dir"],
                                   jpeg=b"cat.jpg", requests_per_replica=3, dial=dial)
    check = CheckForChangeOperator(task_id="check_for_change", settings={
        **options, "model_url": "https://models.example.com/unused.tar.gz", "model_sha256": args["sha256"],
        "model_name": "resnet", "replicas": 2})
    try:
        manual_run = SimpleNamespace(logical_date=None, run_after=datetime.now(timezone.utc))
        decision = check.execute({"dag_run": manual_run})
    except AirflowSkipException as skip:
        decision = {"skipped": str(skip)}
    print(json.dumps({"dial": dial, "report": report.to_dict(), "summary": report.summary(), "decision": decision}))
""")


def test_every_pod_is_validated_through_port_forwards_and_no_change_is_seen(outside, tmp_path):
    from local_cluster import token_client

    from tfserving_deploy.serving.server_config import ServerConfig
    from tfserving_deploy.targets.kubernetes import KubernetesTarget

    require_cluster()
    model_dir = make_string_model(tmp_path / "model" / "1")
    image = publish_model_image(model_dir, name="resnet", version=1)
    sha256 = "ab" * 32
    with admin_client() as admin, fresh_namespace(admin, "out") as ns:
        token = service_account_token(admin, ns, "deployer", deployer_role(ns)["rules"])
        target = KubernetesTarget(token_client(token), namespace=ns, resources=SMALL, poll_interval=0.5)
        target.deploy(
            image,
            model_name="resnet",
            version=1,
            replicas=2,
            ready_timeout=120,
            # what the deploy task records: the model and the server settings (the defaults here)
            metadata={"model-sha256": sha256, "server-config": ServerConfig().fingerprint()},
        )
        pods = target.endpoints("resnet", image)

        route = subprocess.run(
            ["ip", "netns", "exec", outside, "ip", "route", "get", pods[0].split(":")[0]],
            capture_output=True,
            text=True,
        )
        assert route.returncode != 0 and "unreachable" in route.stderr  # no way to the pods from there

        env = {
            **os.environ,
            "AIRFLOW_CONN_OUTSIDE": json.dumps(
                {
                    "conn_type": "kubernetes",
                    "extra": {"kube_config_path": str(write_token_kubeconfig(tmp_path / "kubeconfig", token))},
                }
            ),
        }
        args = json.dumps({"namespace": ns, "model_dir": str(model_dir), "sha256": sha256})
        run = subprocess.run(
            ["ip", "netns", "exec", outside, sys.executable, "-c", SCRIPT, args],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            cwd=ROOT,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        result = json.loads(run.stdout.strip().splitlines()[-1])

    assert sorted(result["dial"]) == sorted(pods)
    assert all(address.startswith("127.0.0.1:") for address in result["dial"].values()), result["dial"]
    assert all(ipaddress.ip_address(p.split(":")[0]) in POD_CIDR for p in pods)
    assert result["report"]["ok"] is True and sorted(r["address"] for r in result["report"]["replicas"]) == sorted(
        pods
    ), result["summary"]
    assert all(r["dialed"].startswith("127.0.0.1:") for r in result["report"]["replicas"])
    assert "no change" in result["decision"]["skipped"] and "2 healthy replica(s)" in result["decision"]["skipped"]


def test_load_balancer_source_ranges_let_only_those_addresses_in(outside, tmp_path):
    """kube-proxy enforces ``loadBalancerSourceRanges``: the worker's network may reach the
    model, this host (another address) may not."""
    from local_cluster import token_client, wait_for

    from tfserving_deploy.targets.kubernetes import KubernetesTarget

    require_cluster()
    image = publish_model_image(make_string_model(tmp_path / "model" / "1"), name="resnet", version=1)
    with admin_client() as admin, fresh_namespace(admin, "ranges") as ns:
        token = service_account_token(admin, ns, "deployer", deployer_role(ns)["rules"])
        target = KubernetesTarget(
            token_client(token),
            namespace=ns,
            resources=SMALL,
            poll_interval=0.5,
            load_balancer_source_ranges=[OUTSIDE_NET],
        )
        target.deploy(image, model_name="resnet", version=1, replicas=1, ready_timeout=120)
        balancer = wait_for(lambda: target.load_balancer_address("resnet"), 30, "an address").split(":")[0]
        url = f"http://{balancer}:8501/v1/models/resnet"

        def curl(*prefix: str) -> subprocess.CompletedProcess:
            return subprocess.run([*prefix, "curl", "-s", "--max-time", "3", url], capture_output=True, text=True)

        assert wait_for(lambda: "AVAILABLE" in curl("ip", "netns", "exec", outside).stdout, 30, "an answer inside")
        assert curl().returncode != 0  # from this host: dropped
