"""Does one client reach every pod? One long-lived gRPC channel through the load balancer.

An L4 load balancer picks a pod per connection, and a gRPC channel keeps its connection: without
connection ageing (``server_config``) a client stays on one pod and pods started later get
nothing. The check sends the validation request on one channel until every ready pod has
answered some (counted from each pod's own metrics) or the window ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

POLL_SECONDS = 1.0


@dataclass
class SpreadReport:
    balancer: str
    seconds: float = 0.0
    requests: int = 0
    connections: int = 0  # connections the channel opened: each one a new pick by the balancer
    per_pod: dict[str, int] = field(default_factory=dict)  # pod address -> requests it answered meanwhile
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        spread = ", ".join(f"{pod}: {n}" for pod, n in self.per_pod.items())
        verdict = "OK" if self.ok else "FAILED: " + "; ".join(self.failures)
        return (
            f"spread through {self.balancer} on one channel: {self.requests} requests over {self.connections} "
            f"connection(s) in {self.seconds:.1f} s -> {spread} -> {verdict}"
        )


def measure_spread(
    client,
    pods: Mapping[str, Callable[[], int]],
    send: Callable[[], None],
    *,
    window_s: float,
    poll_s: float = POLL_SECONDS,
    until_all: bool = True,
) -> SpreadReport:
    """Call ``send()`` (one request on ``client``'s channel) until every pod's counter
    (``pods[address]()``: requests it answered, from its metrics) has moved, or ``window_s``
    passes (always the whole window without ``until_all``: a distribution to compare). A ready
    pod that got nothing fails the report."""
    import grpc

    report = SpreadReport(balancer=client.address)
    client.watch_connectivity(
        lambda state: setattr(report, "connections", report.connections + (state == grpc.ChannelConnectivity.READY))
    )
    baseline = {pod: count() for pod, count in pods.items()}
    started = time.monotonic()
    next_poll = started + poll_s
    while True:
        try:
            send()
        except grpc.RpcError as exc:
            report.failures.append(f"request {report.requests + 1} through the balancer failed: {exc.code().name}")
            break
        report.requests += 1
        now = time.monotonic()
        if now >= next_poll or now - started >= window_s:
            next_poll = now + poll_s
            report.per_pod = {pod: count() - baseline[pod] for pod, count in pods.items()}
            if (until_all and all(report.per_pod.values())) or now - started >= window_s:
                break
    report.seconds = time.monotonic() - started
    idle = [pod for pod, n in report.per_pod.items() if n == 0]
    if idle:
        report.failures.append(
            f"ready pod(s) {', '.join(idle)} got no request in {report.seconds:.0f} s: one client stays on the pod "
            "its connection reached; renew connections sooner (grpc_max_connection_age_ms) or give the check "
            "longer (balance_check_seconds)"
        )
    return report
