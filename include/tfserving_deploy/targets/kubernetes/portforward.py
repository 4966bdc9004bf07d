"""A pod's port on 127.0.0.1, relayed through the API server (what ``kubectl port-forward`` does).

Validation dials every replica, but pod IPs are routable only inside the cluster's network:
Airflow on a laptop, or in another VPC than the cluster, reaches the API server and the load
balancer, not the pods. Each TCP connection accepted on the local port opens one port-forward
stream (a websocket to ``pods/<name>/portforward``), so gRPC channels work over it unchanged.
"""

from __future__ import annotations

import logging
import select
import socket
import threading

log = logging.getLogger(__name__)
CHUNK = 256 * 1024


class PodPortForward:
    """``address`` (``127.0.0.1:<port>``) reaches ``port`` of pod ``namespace/name`` until ``close()``."""

    def __init__(self, api_client, namespace: str, name: str, port: int):
        from kubernetes import client

        # A client of its own: the library's portforward swaps its ApiClient's request method
        # while it connects, which would disturb other calls made on a shared client.
        self._api = client.CoreV1Api(client.ApiClient(api_client.configuration))
        self.namespace, self.name, self.port = namespace, name, port
        self._server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._server.getsockname()[1]}"
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name=f"port-forward {namespace}/{name}:{port}", daemon=True).start()

    def __enter__(self) -> PodPortForward:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections = list(self._connections)
        for sock in [self._server, *connections]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                local, _ = self._server.accept()
            except OSError:
                return  # closed
            with self._lock:
                if self._closed:
                    local.close()
                    return
                self._connections.add(local)
            threading.Thread(target=self._relay, args=(local,), daemon=True).start()

    def _open(self):
        from kubernetes.stream import portforward

        return portforward(
            self._api.connect_get_namespaced_pod_portforward, self.name, self.namespace, ports=str(self.port)
        )

    def _relay(self, local: socket.socket) -> None:
        where = f"pod {self.namespace}/{self.name} port {self.port}"
        try:
            forward = self._open()
        except Exception as exc:  # the API refused (RBAC, pod gone) or is unreachable
            log.warning(
                "port-forward to %s through %s failed: %s", where, self._api.api_client.configuration.host, _reason(exc)
            )
            self._forget(local)
            return
        remote = forward.socket(self.port)
        try:
            _pump(local, remote)
        finally:
            error = forward.error(self.port)
            if error:
                log.warning("port-forward to %s: %s", where, error.strip())
            forward.close()
            self._forget(local)

    def _forget(self, local: socket.socket) -> None:
        with self._lock:
            self._connections.discard(local)
        local.close()


def _pump(a, b) -> None:
    """Copy bytes both ways until either side closes."""
    peers = {a: b, b: a}
    while True:
        try:
            ready, _, _ = select.select(list(peers), [], [])
            for sock in ready:
                data = sock.recv(CHUNK)
                if not data:
                    return
                peers[sock].sendall(data)
        except (OSError, ValueError):  # a side was closed under us
            return


def _reason(exc: BaseException) -> str:
    """The API's answer behind a failed port-forward (the client library may hide it behind an
    AttributeError raised while it formats the error)."""
    while exc.__context__ is not None and not getattr(exc, "reason", None):
        exc = exc.__context__
    return str(getattr(exc, "reason", None) or exc).split(" -+-+- ")[-1][:500]
