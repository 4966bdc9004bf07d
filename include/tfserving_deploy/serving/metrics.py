"""A replica's request metrics, read from TF Serving's Prometheus endpoint (``server_config``).

TF Serving labels them by model name only, not by version (tensorflow/serving#1970): the
validation report puts each replica's figures beside the version that replica serves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import TargetError
from .server_config import METRICS_PATH

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
_SAMPLE = re.compile(r"^(?P<name>[^{\s]+)\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class RequestMetrics:
    """Since the server started: requests answered OK, failed, and the mean latency of Predict."""

    ok: int = 0
    failed: int = 0
    latency_ms_mean: float | None = None


def parse_request_metrics(text: str, model_name: str) -> RequestMetrics:
    ok = failed = 0
    latency_sum = latency_count = 0.0
    for line in text.splitlines():
        sample = _SAMPLE.match(line.strip())
        if not sample:
            continue
        labels = dict(_LABEL.findall(sample["labels"]))
        if labels.get("model_name") != model_name:
            continue
        value = float(sample["value"])
        if sample["name"] == REQUEST_COUNT:
            ok, failed = (ok + int(value), failed) if labels.get("status") == "OK" else (ok, failed + int(value))
        elif sample["name"] == REQUEST_LATENCY + "_sum" and labels.get("API") == "predict":
            latency_sum += value
        elif sample["name"] == REQUEST_LATENCY + "_count" and labels.get("API") == "predict":
            latency_count += value
    mean = latency_sum / latency_count / 1000 if latency_count else None  # microseconds -> ms
    return RequestMetrics(ok=ok, failed=failed, latency_ms_mean=mean)


def read_request_metrics(address: str, model_name: str, *, timeout: float = 5.0) -> RequestMetrics:
    """GET ``http://<address>/monitoring/prometheus/metrics`` (a replica's REST port)."""
    import requests

    url = f"http://{address}{METRICS_PATH}"
    try:
        response = requests.get(url, timeout=timeout)
        response.raise_for_status()
    except requests.RequestException as exc:
        raise TargetError(
            f"metrics of {address} unreadable at {url} ({exc}); does the replica run with "
            "--monitoring_config_file (server_config) and its REST port open?"
        ) from exc
    return parse_request_metrics(response.text, model_name)
