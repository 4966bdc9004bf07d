"""The hostname a task instance records, for workers that share the host's network.

Airflow records ``socket.getfqdn()`` by default. Containers with ``network_mode: host`` (the
compose stack's Celery workers) all have the host's name, so every task instance would show the
same hostname and nobody could tell the workers apart. ``[core] hostname_callable`` set to
``tfserving_airflow.hostname.worker_hostname`` takes the name from ``AIRFLOW_WORKER_NAME``
when the worker's environment sets one.
"""

from __future__ import annotations

import os
import socket

WORKER_NAME_ENV = "AIRFLOW_WORKER_NAME"


def worker_hostname() -> str:
    """``AIRFLOW_WORKER_NAME`` when set (one per worker), else the FQDN as Airflow's default."""
    return os.environ.get(WORKER_NAME_ENV, "").strip() or socket.getfqdn()
