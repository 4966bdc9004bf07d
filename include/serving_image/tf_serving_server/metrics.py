"""The real server's request metrics, in its Prometheus text format.

Names and labels as TF Serving exports them (``/tensorflow/serving/request_count`` becomes
``:tensorflow:serving:request_count``): a count per model and status, and a latency histogram
per model, API and entrypoint, in microseconds with the real server's exponential buckets.
"""

import threading

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
LATENCY_BOUNDS = [10 * 1.8**i for i in range(33)]  # monitoring::Buckets::Exponential(10, 1.8, 33)


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self._counts = {}  # (model_name, status) -> n
        self._latency = {}  # (model_name, API, entrypoint) -> [bucket counts..., sum]

    def record(self, model_name, api, entrypoint, status, latency_us):
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
            lines.append(f'{REQUEST_COUNT}{{model_name="{model}",status="{status}"}} {n}')
        lines.append(f"# TYPE {REQUEST_LATENCY} histogram")
        for (model, api, entrypoint), buckets in sorted(latency.items()):
            labels = f'model_name="{model}",API="{api}",entrypoint="{entrypoint}"'
            cumulative = 0
            for bound, n in zip([*LATENCY_BOUNDS, "+Inf"], buckets[:-1]):
                cumulative += n
                le = bound if isinstance(bound, str) else f"{bound:g}"
                lines.append(f'{REQUEST_LATENCY}_bucket{{{labels},le="{le}"}} {cumulative}')
            lines.append(f"{REQUEST_LATENCY}_sum{{{labels}}} {buckets[-1]:g}")
            lines.append(f"{REQUEST_LATENCY}_count{{{labels}}} {cumulative}")
        return "\n".join(lines) + "\n"
