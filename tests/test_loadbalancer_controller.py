"""cluster/loadbalancer.py: the local cluster's LoadBalancer controller.

``plan`` (which Service gets which address) is a pure function, tested on API objects; the
controller itself is the one ``make cluster`` runs, tested through the cluster: addresses from the
pool, reachable from this machine through kube-proxy, never routed out of the default device.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import urllib.request

from kubernetes import client as k8s
from local_cluster import (
    LB_POOL,
    ROOT,
    SERVING_BASE,
    fresh_namespace,
    read,
    wait_for,
)

sys.path.insert(0, str(ROOT / "cluster"))
from loadbalancer import plan

POOL = ipaddress.ip_network("10.9.0.0/29")  # hosts .1 to .6


def service(name, *, ip=None, type_="LoadBalancer", created="2026-01-01T00:00:00Z", requested=None, cls=None):
    spec = {
        "type": type_,
        **({"loadBalancerIP": requested} if requested else {}),
        **({"loadBalancerClass": cls} if cls else {}),
    }
    status = {"loadBalancer": {"ingress": [{"ip": ip}]}} if ip else {}
    return {"metadata": {"name": name, "namespace": "ns", "creationTimestamp": created}, "spec": spec, "status": status}


def test_lowest_free_address_oldest_first_and_assigned_ones_kept():
    services = [
        service("b", created="2026-01-02T00:00:00Z"),
        service("a", ip="10.9.0.1"),
        service("c", created="2026-01-03T00:00:00Z"),
    ]
    assert plan(services, POOL) == {"ns/b": "10.9.0.2", "ns/c": "10.9.0.3"}


def test_requested_addresses_are_honoured_when_free_and_in_the_pool():
    services = [
        service("a", requested="10.9.0.5"),
        service("b"),
        service("c", requested="10.9.0.200"),
        service("d", ip="10.9.0.2", created="2026-01-05T00:00:00Z", requested="10.9.0.5"),
    ]
    assert plan(services, POOL) == {"ns/a": "10.9.0.5", "ns/b": "10.9.0.1", "ns/d": None}  # c: outside; d: taken


def test_a_duplicate_address_stays_with_the_older_service():
    services = [service("new", ip="10.9.0.1", created="2026-02-01T00:00:00Z"), service("old", ip="10.9.0.1")]
    assert plan(services, POOL) == {"ns/new": "10.9.0.2"}


def test_other_classes_and_types_are_left_alone_and_a_type_change_releases():
    services = [
        service("other", cls="example.com/lb"),
        service("plain", type_="ClusterIP"),
        service("was-lb", type_="ClusterIP", ip="10.9.0.3"),
        service("foreign", type_="ClusterIP", ip="192.0.2.9"),
    ]
    assert plan(services, POOL) == {"ns/was-lb": None}


def test_an_exhausted_pool_leaves_the_rest_pending():
    services = [service(f"s{i}", created=f"2026-01-0{i + 1}T00:00:00Z") for i in range(8)]
    wanted = plan(services, POOL)
    assert sorted(wanted.values()) == [f"10.9.0.{i}" for i in range(1, 7)]
    assert "ns/s6" not in wanted and "ns/s7" not in wanted


# -- the running controller ------------------------------------------------------------------------


def test_the_controller_serves_a_reachable_address_and_releases_it(admin):
    with fresh_namespace(admin, "lbc") as ns:
        core = k8s.CoreV1Api(admin)
        core.create_namespaced_pod(
            ns,
            {
                "metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {
                    "securityContext": {"runAsUser": 1000, "runAsNonRoot": True},
                    "containers": [
                        {
                            "name": "web",
                            "image": SERVING_BASE,
                            "command": ["python", "-m", "http.server", "8080"],
                            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                        }
                    ],
                },
            },
        )
        core.create_namespaced_service(
            ns,
            {
                "metadata": {"name": "web"},
                "spec": {
                    "type": "LoadBalancer",
                    "selector": {"app": "web"},
                    "ports": [{"port": 80, "targetPort": 8080}],
                },
            },
        )
        ip = wait_for(
            lambda: (
                ((read(admin, "service", "web", ns).get("status") or {}).get("loadBalancer") or {})
                .get("ingress", [{}])[0]
                .get("ip")
            ),
            30,
            "an address",
        )
        assert ipaddress.ip_address(ip) in LB_POOL
        default_device = subprocess.run(
            ["ip", "route", "show", "default"], capture_output=True, text=True
        ).stdout.split()
        route = subprocess.run(["ip", "route", "get", ip], capture_output=True, text=True, check=True).stdout
        assert "dev tfsk0" in route and (len(default_device) < 5 or f"dev {default_device[4]} " not in route), route
        wait_for(
            lambda: read(admin, "pod", "web", ns)["status"].get("podIP") and _ready(read(admin, "pod", "web", ns)),
            120,
            "the pod",
        )

        def answers() -> bool:
            try:
                return urllib.request.urlopen(f"http://{ip}/", timeout=2).status == 200
            except OSError:
                return False

        wait_for(answers, 30, f"an HTTP answer through {ip}")
        events = core.list_namespaced_event(
            ns, field_selector="involvedObject.name=web,involvedObject.kind=Service"
        ).items
        assert any(e.reason == "EnsuredLoadBalancer" and ip in e.message for e in events)

        core.patch_namespaced_service("web", ns, {"spec": {"type": "ClusterIP"}})
        wait_for(
            lambda: (
                not ((read(admin, "service", "web", ns).get("status") or {}).get("loadBalancer") or {}).get("ingress")
            ),
            30,
            "the address released",
        )


def _ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])
