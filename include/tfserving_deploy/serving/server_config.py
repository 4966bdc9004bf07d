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
from dataclasses import dataclass

from ..defaults import REST_PORT
from ..errors import InvalidParameter
from ..settings import Settings, setting

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
SERVING_SECTION = "Serving behaviour"  # the trigger form's section of the settings that shape serving
PROMETHEUS_ANNOTATIONS = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": str(REST_PORT),
    "prometheus.io/path": METRICS_PATH,
}


@dataclass(frozen=True)
class ServerConfig(Settings):
    """The flags every serving replica starts with; ``grpc_max_connection_age_ms=0`` turns ageing off."""

    grpc_max_connection_age_ms: int = setting(
        DEFAULT_MAX_CONNECTION_AGE_MS,
        "Each replica closes a client's gRPC connection after this age, so the client reconnects and "
        "the load balancer picks a pod again (one channel otherwise stays on one pod). 0: never.",
        minimum=0,
        maximum=MAX_CONNECTION_AGE_LIMIT_MS,
        section=SERVING_SECTION,
    )
    grpc_max_connection_age_grace_ms: int = setting(
        DEFAULT_MAX_CONNECTION_AGE_GRACE_MS,
        "How long calls in flight on an aged connection may take to finish.",
        minimum=0,
        maximum=MAX_CONNECTION_AGE_LIMIT_MS,
        section=SERVING_SECTION,
    )
    batching_parameters: dict[str, int] | None = setting(
        None,
        'Server-side batching, e.g. {"max_batch_size": 32, "batch_timeout_micros": 2000, '
        '"num_batch_threads": 4}: more throughput for some latency. null: off.',
        section=SERVING_SECTION,
        check=lambda batching: check_batching(batching),
        schema={
            "properties": {
                key: {"type": "integer", "minimum": 1, "maximum": BATCHING_LIMITS[key]} for key in BATCHING_FIELDS
            },
            "additionalProperties": False,
        },
    )

    def files(self) -> dict[str, str]:
        """``{environment variable: text}`` of the config files, written under CONFIG_DIR at start."""
        files = {MONITORING_ENV: f'prometheus_config {{ enable: true path: "{METRICS_PATH}" }}\n'}
        if self.batching_parameters is not None:
            files[BATCHING_ENV] = "".join(
                f"{key} {{ value: {self.batching_parameters[key]} }}\n"
                for key in BATCHING_FIELDS
                if key in self.batching_parameters
            )
        return files

    def server_args(self) -> list[str]:
        args = [f"--monitoring_config_file={CONFIG_DIR}/{CONFIG_FILES[MONITORING_ENV]}"]
        if self.grpc_max_connection_age_ms:
            args.append(
                f"--grpc_channel_arguments=grpc.max_connection_age_ms={self.grpc_max_connection_age_ms},"
                f"grpc.max_connection_age_grace_ms={self.grpc_max_connection_age_grace_ms}"
            )
        if self.batching_parameters is not None:
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
