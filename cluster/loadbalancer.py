"""A LoadBalancer controller for the local cluster, as a cloud (or MetalLB) provides one.

Every Service of ``type: LoadBalancer`` (without a ``loadBalancerClass`` of someone else) gets
an ingress IP from a local pool, written to ``status.loadBalancer`` through the status
subresource; kube-proxy then programs that address (iptables DNAT), and the pool is routed to a
device of the cluster's own, so the address answers from this machine but never leaves through
the default route. A Service that stops being a LoadBalancer loses its address; addresses are
handed out lowest first, ``spec.loadBalancerIP`` is honoured when it is free and in the pool.

The loop is level-triggered: list every Service, compute the wanted assignment (``plan``, a pure
function), patch what differs, then watch until something changes (at most ``--resync`` s).

Usage: loadbalancer.py --kubeconfig FILE --pool 10.200.64.0/24
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import sys
import time
from datetime import UTC, datetime

log = logging.getLogger("lb-controller")
SOURCE = "tfserving-deploy-lb-controller"


def _key(service: dict) -> str:
    meta = service["metadata"]
    return f"{meta['namespace']}/{meta['name']}"


def _is_ours(service: dict) -> bool:
    spec = service.get("spec") or {}
    return spec.get("type") == "LoadBalancer" and not spec.get("loadBalancerClass")


def current_ip(service: dict) -> str | None:
    ingress = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    return ingress[0].get("ip") if ingress else None


def requested_ip(service: dict) -> str | None:
    return (service.get("spec") or {}).get("loadBalancerIP") or None


def plan(services: list[dict], pool: ipaddress.IPv4Network) -> dict[str, str | None]:
    """``{namespace/name: ip or None}`` for every Service whose address must change.

    Keeps what is assigned and valid (in the pool, not taken twice, as requested), gives a
    requested ``spec.loadBalancerIP`` when it is free and in the pool, the lowest free address
    to the others (oldest Service first), and clears the address of a Service that is no longer
    a LoadBalancer. When the pool runs out, the rest stay pending.
    """
    usable = {str(ip) for ip in pool.hosts()}
    taken: dict[str, str] = {}  # ip -> namespace/name
    wanted: dict[str, str | None] = {}
    pending: list[dict] = []
    for service in sorted(services, key=lambda s: (s["metadata"].get("creationTimestamp") or "", _key(s))):
        ip = current_ip(service)
        if not _is_ours(service):
            if ip in usable and (service.get("spec") or {}).get("type") != "LoadBalancer":
                wanted[_key(service)] = None  # it was ours; it is not a LoadBalancer any more
            continue
        if ip in usable and ip not in taken and requested_ip(service) in (None, ip):
            taken[ip] = _key(service)
        else:
            pending.append(service)
    lowest_first = (str(ip) for ip in pool.hosts())
    for service in sorted(pending, key=lambda s: requested_ip(s) is None):  # requested addresses first
        requested = requested_ip(service)
        if requested:
            ip = requested if requested in usable and requested not in taken else None
        else:
            ip = next((candidate for candidate in lowest_first if candidate not in taken), None)
        if ip is not None:
            taken[ip] = _key(service)
        if ip != current_ip(service):
            wanted[_key(service)] = ip
    return wanted


class Controller:
    def __init__(self, api_client, pool: ipaddress.IPv4Network, resync: float = 30.0):
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.pool, self.resync = pool, resync
        self.stopping = False
        self.warned: set[str] = set()

    def run(self) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        while not self.stopping:
            try:
                version = self.reconcile()
                stream = watch.Watch()
                for _ in stream.stream(
                    self.core.list_service_for_all_namespaces,
                    resource_version=version,
                    timeout_seconds=int(self.resync),
                    _request_timeout=self.resync + 10,
                ):
                    break  # any change: reconcile everything again
                stream.stop()
            except (ApiException, HTTPError, OSError) as exc:
                log.warning("API error (%s); retrying in 2 s", exc)
                time.sleep(2)

    def reconcile(self) -> str:
        """One pass; returns the list's resourceVersion to watch from."""
        import json

        listing = json.loads(self.core.list_service_for_all_namespaces(_preload_content=False).data)
        services = {_key(s): s for s in listing["items"]}
        changes = plan(list(services.values()), self.pool)
        for key, ip in changes.items():
            self.assign(services[key], ip)
        pending = {k for k, s in services.items() if _is_ours(s) and not (changes.get(k) or current_ip(s))}
        for key in pending - self.warned:  # once per Service, not on every pass
            requested = requested_ip(services[key])
            why = (
                f"the requested loadBalancerIP {requested} is taken or outside pool {self.pool}"
                if requested
                else f"no free address left in pool {self.pool}"
            )
            self.event(services[key], "Warning", "AllocationFailed", why)
        self.warned = pending
        return listing["metadata"]["resourceVersion"]

    def assign(self, service: dict, ip: str | None) -> None:
        meta = service["metadata"]
        ingress = [{"ip": ip, "ipMode": "VIP"}] if ip else None
        self.core.patch_namespaced_service_status(
            meta["name"], meta["namespace"], {"status": {"loadBalancer": {"ingress": ingress}}}
        )
        if ip:
            log.info("%s: assigned %s", _key(service), ip)
            self.event(service, "Normal", "EnsuredLoadBalancer", f"assigned load balancer address {ip}")
        else:
            log.info("%s: released %s", _key(service), current_ip(service))
            self.event(
                service, "Normal", "DeletedLoadBalancer", f"released load balancer address {current_ip(service)}"
            )

    def event(self, service: dict, kind: str, reason: str, message: str) -> None:
        from kubernetes.client.exceptions import ApiException

        meta = service["metadata"]
        now = datetime.now(UTC).isoformat()
        body = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "kind": "Service",
                "apiVersion": "v1",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": kind,
            "reason": reason,
            "message": message,
            "source": {"component": SOURCE},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except ApiException as exc:  # an event is a courtesy: never fail the controller for it
            log.warning("could not record event %s on %s: %s", reason, _key(service), exc.reason)


def main(argv: list[str] | None = None) -> None:
    from kubernetes import config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--pool", required=True, type=ipaddress.IPv4Network)
    parser.add_argument("--resync", type=float, default=30.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    controller = Controller(config.new_client_from_config(config_file=args.kubeconfig), args.pool, args.resync)

    def stop(*_):
        controller.stopping = True
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    log.info("handing out LoadBalancer addresses from %s", args.pool)
    controller.run()


if __name__ == "__main__":
    main()
