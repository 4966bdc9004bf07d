"""Validate a deployed model against the artifact it was built from.

Like TFX InfraValidator this sends real requests to every replica, but it also checks the
answers: outputs match the signature's dtypes and shapes, probabilities sum to one, the served
version is the deployed one, and predictions equal those the same SavedModel computes offline.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InvalidModelError, ValidationError
from ..model.cache import write_atomic
from ..native_logs import import_tensorflow
from ..serving.requests import NUMPY_DTYPES, build_inputs, to_tensor_protos
from ..serving.signature import Signature
from .balance import SpreadReport


def offline_predictions(
    model_dir: str | Path, signature_name: str, inputs: dict[str, np.ndarray], *, keep_in: Path | None = None
) -> dict[str, np.ndarray]:
    """What the SavedModel itself answers, computed in this process: the reference answer.

    With ``keep_in`` (a directory of the worker's cache) it is computed once per model and input:
    ``validate_candidate`` loads the model, ``validate`` on the same worker reads the answer back.
    String outputs are always recomputed (they would need pickling to be kept).

    A model that cannot compute this answer (it does not load here, lacks the signature, or its
    graph fails on the validation image) is an ``InvalidModelError``: the same model and the same
    image fail the same way on every try. Errors that may pass (memory, cancellation) stay as they are.
    """
    kept = keep_in / f"{_reference_key(model_dir, signature_name, inputs)}.npz" if keep_in else None
    if kept is not None and kept.is_file():
        with np.load(kept, allow_pickle=False) as saved:
            return {name: saved[name] for name in saved.files}
    tf = import_tensorflow()

    model_faults = (
        tf.errors.InvalidArgumentError,
        tf.errors.FailedPreconditionError,
        tf.errors.UnimplementedError,
        tf.errors.NotFoundError,
        tf.errors.OutOfRangeError,
        KeyError,
        TypeError,
        ValueError,
    )
    try:
        function = tf.saved_model.load(str(model_dir)).signatures[signature_name]
        outputs = function(**{alias: tf.constant(value) for alias, value in inputs.items()})
    except model_faults as exc:  # the model's own text (op names, messages) stays in the worker's log
        raise InvalidModelError(
            f"the SavedModel in {model_dir} cannot compute the offline reference answer of signature "
            f"{signature_name!r} for the validation image ({type(exc).__name__}); it would not answer clients "
            "either: run it on that image locally (saved_model_cli run) and fix the model"
        ) from exc
    answer = {name: tensor.numpy() for name, tensor in outputs.items()}
    if kept is not None and all(value.dtype != object for value in answer.values()):
        buffer = io.BytesIO()
        np.savez(buffer, **answer)
        write_atomic(kept, buffer.getvalue())
    return answer


def _reference_key(model_dir: str | Path, signature_name: str, inputs: dict[str, np.ndarray]) -> str:
    """The model (its content-addressed directory), the signature and the exact input."""
    digest = hashlib.sha256(f"{Path(model_dir).resolve()}|{signature_name}".encode())
    for alias in sorted(inputs):
        value = np.ascontiguousarray(inputs[alias])
        digest.update(f"|{alias}|{value.dtype}|{value.shape}|".encode())
        digest.update(value.tobytes() if value.dtype != object else repr(value.tolist()).encode())
    return digest.hexdigest()


# ---- checks -----------------------------------------------------------------------------------


@dataclass
class ReplicaReport:
    address: str
    served_version: int | None = None
    top_class: int | None = None
    top_probability: float | None = None
    latency_ms_p50: float | None = None
    latency_ms_p99: float | None = None
    requests: int = 0
    failures: list[str] = field(default_factory=list)
    dialed: str | None = None  # where the requests went, when not to ``address`` (a port-forward)
    metrics: dict | None = None  # from the replica's own Prometheus metrics: version, ok, failed, latency

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass
class ValidationReport:
    model_name: str
    version: int
    replicas: list[ReplicaReport]
    spread: SpreadReport | None = None  # through the load balancer, when there is one

    @property
    def ok(self) -> bool:
        return bool(self.replicas) and all(r.ok for r in self.replicas) and (self.spread is None or self.spread.ok)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["ok"] = self.ok
        return data

    def summary(self) -> str:
        lines = [f"validation of {self.model_name!r} version {self.version} on {len(self.replicas)} replica(s):"]
        for r in self.replicas:
            verdict = "OK" if r.ok else "FAILED: " + "; ".join(r.failures)
            lines.append(
                f"  {r.address}{' via ' + r.dialed if r.dialed else ''}: "
                f"version={r.served_version} class={r.top_class} "
                f"p={_fmt(r.top_probability, '.3f')} latency p50={_fmt(r.latency_ms_p50, '.1f')}ms "
                f"p99={_fmt(r.latency_ms_p99, '.1f')}ms over {r.requests} requests -> {verdict}"
            )
            if r.metrics:
                m = r.metrics
                lines.append(
                    f"    its metrics (version {m['version']}): {m['ok']} requests OK, {m['failed']} failed, "
                    f"mean Predict latency {_fmt(m['latency_ms_mean'], '.1f')}ms since it started"
                )
        if self.spread:
            lines.append(f"  {self.spread.summary()}")
        return "\n".join(lines)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def check_response(
    outputs: dict[str, np.ndarray],
    served_version: int,
    *,
    signature: Signature,
    version: int,
    expected: dict[str, np.ndarray],
    expected_class: int | None = None,
    atol: float = 1e-4,
) -> list[str]:
    """Every way the served answer differs from what it should be; empty when it is right."""
    failures = []
    if served_version != version:
        failures.append(f"model_spec.version is {served_version}, deployed version is {version}")
    for name, info in signature.outputs.items():
        if name not in outputs:
            failures.append(f"output {name!r} missing (got {sorted(outputs)})")
            continue
        value = outputs[name]
        want_dtype = np.dtype(NUMPY_DTYPES.get(info.dtype, object))
        if value.dtype != want_dtype and not (want_dtype.kind == "O" and value.dtype.kind in "SO"):
            failures.append(f"output {name!r} has dtype {value.dtype}, signature says {info.dtype}")
        if not _shape_matches(value.shape, info.shape):
            failures.append(f"output {name!r} has shape {list(value.shape)}, signature says {info.shape}")
        reference = expected.get(name)
        if reference is not None and value.shape == reference.shape:
            if value.dtype.kind == "f":
                diff = float(np.max(np.abs(value - reference))) if value.size else 0.0
                if diff > atol:
                    failures.append(f"output {name!r} differs from the offline prediction by {diff:.2e} (> {atol:g})")
            elif not np.array_equal(value, reference):
                failures.append(f"output {name!r} is {value.tolist()}, offline prediction is {reference.tolist()}")
        elif reference is not None:
            failures.append(f"output {name!r} shape {list(value.shape)} != offline {list(reference.shape)}")
    probabilities = outputs.get("probabilities")
    if probabilities is not None and probabilities.dtype.kind == "f" and probabilities.ndim == 2:
        sums = probabilities.sum(axis=1)
        if not np.allclose(sums, 1.0, atol=1e-3):
            failures.append(f"probabilities sum to {sums.tolist()}, not 1")
    if expected_class is not None:
        got = top_class(outputs)
        if got != expected_class:
            failures.append(f"predicted class {got}, expected {expected_class}")
    return failures


def _shape_matches(actual: tuple, declared: list[int] | None) -> bool:
    if declared is None:
        return True
    return len(actual) == len(declared) and all(d < 0 or d == a for a, d in zip(actual, declared))


def top_class(outputs: dict[str, np.ndarray]) -> int | None:
    """The predicted class: the ``classes`` output if there is one, else argmax of probabilities."""
    if "classes" in outputs and outputs["classes"].size:
        return int(outputs["classes"].reshape(-1)[0])
    for name in ("probabilities", "predictions", "scores"):
        if name in outputs and outputs[name].size:
            return int(np.argmax(outputs[name].reshape(outputs[name].shape[0], -1)[0]))
    return None


# ---- driving the replicas ---------------------------------------------------------------------


def validate_replicas(
    addresses: list[str],
    *,
    model_name: str,
    version: int,
    signature: Signature,
    model_dir: str | Path,
    jpeg: bytes,
    expected_class: int | None = None,
    requests_per_replica: int = 20,
    time_budget_s: float = 60.0,
    atol: float = 1e-4,
    dial: Mapping[str, str] | None = None,
    keep_reference_in: Path | None = None,
) -> ValidationReport:
    """Query every replica with the same image, check the first answer, time the repeats.

    ``dial`` maps a replica's address to where to send its requests (``Target.reachable``);
    ``keep_reference_in`` keeps the offline answer for the next validation of the same model.

    Never raises on a wrong answer: the report says what differed (``raise_for_report``).
    Bounded by ``requests_per_replica`` and ``time_budget_s``.
    """
    from ..serving.client import ServingClient

    inputs = build_inputs(signature, jpeg)
    expected = offline_predictions(model_dir, signature.name, inputs, keep_in=keep_reference_in)
    request = to_tensor_protos(inputs)
    reports = []
    per_replica_budget = time_budget_s / max(len(addresses), 1)
    for address in addresses:
        target = (dial or {}).get(address, address)
        report = ReplicaReport(address=address, dialed=None if target == address else target)
        reports.append(report)
        with ServingClient(target) as client:
            if _check_first_answer(
                client, report, model_name, signature, request, version, expected, expected_class, atol
            ):
                _time_requests(
                    client, report, model_name, signature.name, request, requests_per_replica, per_replica_budget
                )
    return ValidationReport(model_name=model_name, version=version, replicas=reports)


def _check_first_answer(
    client,
    report: ReplicaReport,
    model_name: str,
    signature: Signature,
    request: dict,
    version: int,
    expected: dict,
    expected_class: int | None,
    atol: float,
) -> bool:
    """The first answer, checked; it also warms the server up, so it is not timed. False if none came."""
    import grpc

    tf = import_tensorflow()
    try:
        response = client.predict(model_name, request, signature_name=signature.name)
    except grpc.RpcError as exc:
        report.failures.append(f"Predict failed: {exc.code().name}: {exc.details()}")
        return False
    outputs = {name: tf.make_ndarray(t) for name, t in response.outputs.items()}
    report.served_version = response.model_spec.version.value
    report.top_class = top_class(outputs)
    if "probabilities" in outputs and report.top_class is not None:
        report.top_probability = float(outputs["probabilities"].reshape(-1)[report.top_class])
    report.failures += check_response(
        outputs,
        report.served_version,
        signature=signature,
        version=version,
        expected=expected,
        expected_class=expected_class,
        atol=atol,
    )
    return True


def _time_requests(
    client, report: ReplicaReport, model_name: str, signature_name: str, request: dict, count: int, budget_s: float
) -> None:
    """Up to ``count`` more requests within ``budget_s``: their latency percentiles."""
    import grpc

    latencies = []
    deadline = time.monotonic() + budget_s
    for _ in range(count):
        started = time.perf_counter()
        try:
            client.predict(model_name, request, signature_name=signature_name)
        except grpc.RpcError as exc:
            report.failures.append(f"Predict failed on a repeat: {exc.code().name}: {exc.details()}")
            break
        latencies.append((time.perf_counter() - started) * 1000)
        if time.monotonic() > deadline:
            break
    report.requests = len(latencies)
    if latencies:
        report.latency_ms_p50 = float(np.percentile(latencies, 50))
        report.latency_ms_p99 = float(np.percentile(latencies, 99))


def add_replica_metrics(report: ValidationReport, metrics: Mapping[str, str]) -> None:
    """Each replica's request count and latency from its own metrics (``metrics``: replica
    address -> where its REST port is dialed), beside the version it answered with."""
    from ..serving.metrics import read_request_metrics

    for replica in report.replicas:
        if replica.address in metrics:
            figures = read_request_metrics(metrics[replica.address], report.model_name)
            replica.metrics = {"version": replica.served_version, **asdict(figures)}


def check_spread(
    report: ValidationReport,
    balancer: str,
    metrics: Mapping[str, str],
    *,
    signature: Signature,
    jpeg: bytes,
    window_s: float,
    until_all: bool = True,
) -> None:
    """Send the validation request through ``balancer`` on one channel until every replica in
    ``metrics`` (address -> dialed REST port) has answered some: ``report.spread``."""
    from ..serving.client import ServingClient
    from ..serving.metrics import read_request_metrics
    from .balance import measure_spread

    request = to_tensor_protos(build_inputs(signature, jpeg))
    counters = {
        address: (lambda rest=rest: read_request_metrics(rest, report.model_name).ok)
        for address, rest in metrics.items()
    }
    with ServingClient(balancer) as client:
        report.spread = measure_spread(
            client,
            counters,
            lambda: client.predict(report.model_name, request, signature_name=signature.name),
            window_s=window_s,
            until_all=until_all,
        )


def raise_for_report(report: ValidationReport) -> None:
    if not report.replicas:
        raise ValidationError(f"no replicas to validate for model {report.model_name!r}")
    if not report.ok:
        what = (
            "requests through the load balancer do not reach every ready pod"
            if all(r.ok for r in report.replicas)
            else "the deployed model does not answer like its artifact"
        )
        raise ValidationError(f"validation failed; {what}.\n{report.summary()}")
