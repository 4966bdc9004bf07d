"""The server's config flags: ``--grpc_channel_arguments``, ``--monitoring_config_file`` and
``--batching_parameters_file``, read as the real server reads them (a bad file stops the start)."""

import re

# MonitoringConfig and BatchingParameters (tensorflow_serving/config/monitoring_config.proto,
# servables/tensorflow/session_bundle_config.proto): the fields the real server knows.
MONITORING_FIELDS = {"prometheus_config": {"enable", "path"}}
BATCHING_FIELDS = {
    "max_batch_size",
    "batch_timeout_micros",
    "max_enqueued_batches",
    "num_batch_threads",
    "thread_pool_name",
    "allowed_batch_sizes",
    "pad_variable_length_inputs",
    "enable_large_batch_splitting",
    "max_execution_batch_size",
}
DEFAULT_METRICS_PATH = "/monitoring/prometheus/metrics"
_TOKEN = re.compile(r'\s*(?:(#[^\n]*|[,;])|([A-Za-z_][A-Za-z0-9_]*)|("(?:[^"\\]|\\.)*")|([-+0-9.eE]+)|([{}:]))')


def parse_text_proto(text):
    """A text-format message as a dict: ``{"a": {"value": 3}}``; repeated fields become lists."""
    tokens = []
    position = 0
    while position < len(text.rstrip()):
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            raise ValueError(f"cannot parse text proto at offset {position}: {text[position : position + 20]!r}")
        position = match.end()
        if not match[1]:
            tokens.append(next(t for t in match.groups()[1:] if t))
    message, rest = _message(tokens, 0)
    if rest != len(tokens):
        raise ValueError(f"unexpected {tokens[rest]!r} in text proto")
    return message


def _message(tokens, i):
    fields = {}
    while i < len(tokens) and tokens[i] != "}":
        name = tokens[i]
        if not re.match(r"^[A-Za-z_]", name):
            raise ValueError(f"expected a field name, got {name!r}")
        if i + 1 < len(tokens) and tokens[i + 1] == ":":
            i += 1
        if i + 1 < len(tokens) and tokens[i + 1] == "{":
            value, i = _message(tokens, i + 2)
            if i >= len(tokens):
                raise ValueError(f"field {name!r}: missing '}}'")
            i += 1
        elif i + 1 < len(tokens):
            value, i = _scalar(tokens[i + 1]), i + 2
        else:
            raise ValueError(f"field {name!r} has no value")
        fields.setdefault(name, []).append(value)
    return {k: v[0] if len(v) == 1 else v for k, v in fields.items()}, i


def _scalar(token):
    if token.startswith('"'):
        return bytes(token[1:-1], "utf-8").decode("unicode_escape")
    if token in ("true", "false"):
        return token == "true"
    try:
        return int(token)
    except ValueError:
        return float(token)


def _check_fields(what, message, known):
    unknown = sorted(set(message) - set(known))
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def read_monitoring_config(path):
    """The Prometheus metrics path, or None when the file does not enable it."""
    with open(path) as f:
        config = parse_text_proto(f.read())
    _check_fields(f"monitoring config {path}", config, MONITORING_FIELDS)
    prometheus = config.get("prometheus_config") or {}
    _check_fields(f"monitoring config {path}: prometheus_config", prometheus, MONITORING_FIELDS["prometheus_config"])
    if not prometheus.get("enable"):
        return None
    return prometheus.get("path") or DEFAULT_METRICS_PATH


def read_batching_parameters(path):
    """``{"max_batch_size": 32, ...}`` from a BatchingParameters file (wrapper values unwrapped)."""
    with open(path) as f:
        parameters = parse_text_proto(f.read())
    _check_fields(f"batching parameters {path}", parameters, BATCHING_FIELDS)
    return {k: v["value"] if isinstance(v, dict) and set(v) == {"value"} else v for k, v in parameters.items()}


def parse_channel_arguments(text):
    """``grpc.max_connection_age_ms=30000,grpc.x=y`` -> ``[("grpc.max_connection_age_ms", 30000), ...]``."""
    arguments = []
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--grpc_channel_arguments: {item!r} is not key=value")
        arguments.append((key.strip(), int(value) if re.fullmatch(r"-?\d+", value.strip()) else value.strip()))
    return arguments
