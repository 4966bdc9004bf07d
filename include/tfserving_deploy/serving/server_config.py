"""How every serving replica's TF Serving runs: connection ageing, metrics and batching flags.

One rendering for every target (the local containers and the Kubernetes pods get the same
command), and nothing specific to an image: the config files the flags name are written to
``/tmp`` (the one writable path) by ``/bin/sh`` from environment variables, then the image's own
``/usr/bin/tf_serving_entrypoint.sh`` runs with the flags, as the ``tensorflow/serving`` image
documents it. So a base image's own ENTRYPOINT and CMD are replaced (as a Kubernetes ``command``
and ``args`` replace them): server flags come from params. Baking the files into the image
instead would tie its digest to settings.

* ``grpc.max_connection_age_ms``: a gRPC client keeps one HTTP/2 connection, so behind an L4 load
  balancer it stays on one pod and pods added later get nothing. The server closes each
  connection after this age (GOAWAY; in-flight calls get the grace), the client reconnects and
  the balancer picks a pod again.
* Prometheus metrics at ``METRICS_PATH`` on the REST port: request count and latency per model.
* Batching (``--enable_batching``), only when asked for: it trades latency for throughput.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from ..defaults import REST_PORT
from ..errors import InvalidParameter

DEFAULT_MAX_CONNECTION_AGE_MS = 5_000  # a new pod gets traffic within seconds; a reconnect costs ~1 ms
DEFAULT_MAX_CONNECTION_AGE_GRACE_MS = 10_000  # in-flight Predict calls finish on the old connection
METRICS_PATH = "/monitoring/prometheus/metrics"
ENTRYPOINT = "/usr/bin/tf_serving_entrypoint.sh"  # the tensorflow/serving image's (and the drop-in's)
CONFIG_DIR = "/tmp/tfserving-deploy"
MONITORING_ENV, BATCHING_ENV = "TFSERVING_DEPLOY_MONITORING_CONFIG", "TFSERVING_DEPLOY_BATCHING_PARAMETERS"
CONFIG_FILES = {MONITORING_ENV: "monitoring.config", BATCHING_ENV: "batching.config"}  # variable -> file
# BatchingParameters (session_bundle_config.proto): the integer fields a param may set.
BATCHING_FIELDS = ("max_batch_size", "batch_timeout_micros", "num_batch_threads", "max_enqueued_batches")
# Upper bounds (the form's ``maximum`` and the run-time check): far above any sound setting, low enough
# that a value cannot make the server queue or spawn without end (threads, queued batches x batch size).
BATCHING_LIMITS = {
    "max_batch_size": 4096,
    "batch_timeout_micros": 10_000_000,  # 10 s
    "num_batch_threads": 256,
    "max_enqueued_batches": 100_000,
}
MAX_CONNECTION_AGE_LIMIT_MS = 86_400_000  # a day; longer is the same as never (0)
PROMETHEUS_ANNOTATIONS = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": str(REST_PORT),
    "prometheus.io/path": METRICS_PATH,
}


@dataclass(frozen=True)
class ServerConfig:
    """The flags every serving replica starts with; ``max_connection_age_ms=0`` turns ageing off."""

    max_connection_age_ms: int = DEFAULT_MAX_CONNECTION_AGE_MS
    max_connection_age_grace_ms: int = DEFAULT_MAX_CONNECTION_AGE_GRACE_MS
    batching: dict[str, int] | None = field(default=None, hash=False)

    def __post_init__(self):
        for name in ("max_connection_age_ms", "max_connection_age_grace_ms"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_CONNECTION_AGE_LIMIT_MS:
                raise InvalidParameter(
                    f"grpc_{name}={value!r}: need a whole number of milliseconds, 0 to {MAX_CONNECTION_AGE_LIMIT_MS}"
                )
        if self.batching is not None:
            check_batching(self.batching)

    def files(self) -> dict[str, str]:
        """``{environment variable: text}`` of the config files, written under CONFIG_DIR at start."""
        files = {MONITORING_ENV: f'prometheus_config {{ enable: true path: "{METRICS_PATH}" }}\n'}
        if self.batching is not None:
            files[BATCHING_ENV] = "".join(
                f"{key} {{ value: {self.batching[key]} }}\n" for key in BATCHING_FIELDS if key in self.batching
            )
        return files

    def server_args(self) -> list[str]:
        args = [f"--monitoring_config_file={CONFIG_DIR}/{CONFIG_FILES[MONITORING_ENV]}"]
        if self.max_connection_age_ms:
            args.append(
                f"--grpc_channel_arguments=grpc.max_connection_age_ms={self.max_connection_age_ms},"
                f"grpc.max_connection_age_grace_ms={self.max_connection_age_grace_ms}"
            )
        if self.batching is not None:
            args += ["--enable_batching", f"--batching_parameters_file={CONFIG_DIR}/{CONFIG_FILES[BATCHING_ENV]}"]
        return args

    def command(self) -> list[str]:
        """The container's command (its args are ``server_args``): write the files, run the entrypoint."""
        writes = " && ".join(f'printf "%s" "${name}" > {CONFIG_DIR}/{CONFIG_FILES[name]}' for name in self.files())
        missing = (
            f"echo 'tfserving-deploy: {ENTRYPOINT} is not in the image: the serving base image must be "
            "tensorflow/serving or built from it' >&2; exit 64"
        )
        script = f'[ -x {ENTRYPOINT} ] || {{ {missing}; }}; mkdir -p {CONFIG_DIR} && {writes} && exec {ENTRYPOINT} "$@"'
        return ["/bin/sh", "-c", script, "tf_serving"]

    def fingerprint(self) -> str:
        """Short and stable: a replica started with other settings is another revision."""
        settings = json.dumps([self.server_args(), self.files()], sort_keys=True)
        return hashlib.sha256(settings.encode()).hexdigest()[:10]


def check_batching(batching: dict) -> dict[str, int]:
    unknown = sorted(set(batching) - set(BATCHING_FIELDS))
    if unknown:
        raise InvalidParameter(
            f"batching_parameters: unknown key(s) {', '.join(unknown)}; known: {', '.join(BATCHING_FIELDS)}"
        )
    for key, value in batching.items():
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= BATCHING_LIMITS[key]:
            raise InvalidParameter(
                f"batching_parameters.{key}={value!r}: need a whole number from 1 to {BATCHING_LIMITS[key]}"
            )
    return batching
