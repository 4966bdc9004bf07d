"""HTTP that connects only where the URL policy looked.

A policy that resolves a name and a client that resolves it again can be told two different
answers (DNS rebinding): a public address for the check, ``169.254.169.254`` for the request.
Here the connection goes to the checked addresses (``Destination.addresses``, in order) and
nowhere else, while the Host header, TLS SNI and certificate checks keep using the URL's name.
No proxy from the environment either: a proxy would resolve the name itself.
"""

from __future__ import annotations

import os
import socket

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util.connection import create_connection

from .hosts import Destination


def _connect(conn: HTTPConnection, destination: Destination) -> socket.socket:
    """A socket to the first checked address that answers, on the checked port."""
    errors = []
    for address in destination.addresses:
        try:
            return create_connection(
                (address, destination.port),
                conn.timeout,
                source_address=conn.source_address,
                socket_options=conn.socket_options,
            )
        except TimeoutError as exc:
            errors.append(f"{address}: timed out ({exc})")
        except OSError as exc:
            errors.append(f"{address}: {exc}")
    message = f"Failed to connect to {destination.host} port {destination.port} at {'; '.join(errors)}"
    if errors and all("timed out" in e for e in errors):
        raise ConnectTimeoutError(conn, message)
    raise NewConnectionError(conn, message)


def _pinned_pools(destination: Destination) -> dict[str, type]:
    class PinnedHTTPConnection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return _connect(self, destination)

    class PinnedHTTPSConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return _connect(self, destination)

    class PinnedHTTPPool(HTTPConnectionPool):
        ConnectionCls = PinnedHTTPConnection

    class PinnedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = PinnedHTTPSConnection

    return {"http": PinnedHTTPPool, "https": PinnedHTTPSPool}


class _PinnedAdapter(HTTPAdapter):
    def __init__(self, destination: Destination):
        self.destination = destination
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _pinned_pools(self.destination)


def pinned_session(destination: Destination) -> requests.Session:
    """A session whose every connection goes to ``destination``'s checked addresses. TLS is
    verified against the system store or ``REQUESTS_CA_BUNDLE``, as requests does."""
    session = requests.Session()
    session.trust_env = False  # no proxies, no .netrc: nothing but the checked address
    session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    adapter = _PinnedAdapter(destination)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
