"""The real server's request metrics, in its Prometheus text format.

Names and labels as TF Serving exports them (``/tensorflow/serving/request_count`` becomes
``:tensorflow:serving:request_count``): a count per model and status, and a latency histogram
per model, API and entrypoint, in microseconds with the real server's exponential buckets.

Invariants: a label value is only ever a name the server serves, an API, an entrypoint or a
status code name, so clients cannot add series (the real server labels by the request's
``model_spec.name``, so each unknown name a client sends adds series for good); and every label
value is escaped as the text format requires, so no value can end a sample or add a line.
"""

import threading

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
LATENCY_BOUNDS = [10 * 1.8**i for i in range(33)]  # monitoring::Buckets::Exponential(10, 1.8, 33)


def escape_label_value(value):
    """A label value as the Prometheus text format spells it: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_labels(**labels):
    return ",".join(f'{name}="{escape_label_value(str(value))}"' for name, value in labels.items())


class Metrics:
    """Request counts and latencies of the models named ``served``; requests for others are not
    recorded (they fail NOT_FOUND, and their names are the client's)."""

    def __init__(self, *served):
        self._served = frozenset(served)
        self._lock = threading.Lock()
        self._counts = {}  # (model_name, status) -> n
        self._latency = {}  # (model_name, API, entrypoint) -> [bucket counts..., sum]

    def record(self, model_name, api, entrypoint, status, latency_us):
        if model_name not in self._served:
            return
        with self._lock:
            key = (model_name, status)
            self._counts[key] = self._counts.get(key, 0) + 1
            buckets = self._latency.setdefault((model_name, api, entrypoint), [0] * (len(LATENCY_BOUNDS) + 2))
            index = next((i for i, bound in enumerate(LATENCY_BOUNDS) if latency_us <= bound), len(LATENCY_BOUNDS))
            buckets[index] += 1
            buckets[-1] += latency_us

    def exposition(self):
        with self._lock:
            counts, latency = dict(self._counts), {k: list(v) for k, v in self._latency.items()}
        lines = [f"# TYPE {REQUEST_COUNT} counter"]
        for (model, status), n in sorted(counts.items()):
            lines.append(f"{REQUEST_COUNT}{{{render_labels(model_name=model, status=status)}}} {n}")
        lines.append(f"# TYPE {REQUEST_LATENCY} histogram")
        for (model, api, entrypoint), buckets in sorted(latency.items()):
            labels = render_labels(model_name=model, API=api, entrypoint=entrypoint)
            cumulative = 0
            for bound, n in zip([*LATENCY_BOUNDS, "+Inf"], buckets[:-1]):
                cumulative += n
                le = bound if isinstance(bound, str) else f"{bound:g}"
                lines.append(f"{REQUEST_LATENCY}_bucket{{{labels},{render_labels(le=le)}}} {cumulative}")
            lines.append(f"{REQUEST_LATENCY}_sum{{{labels}}} {buckets[-1]:g}")
            lines.append(f"{REQUEST_LATENCY}_count{{{labels}}} {cumulative}")
        return "\n".join(lines) + "\n"
