"""Validation: a real JPEG to every replica, the answers checked against the artifact."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from airflow.sdk import BaseOperator

from tfserving_deploy.model.cache import cache_root

from .. import lineage
from .base import TargetMixin, explained_failures
from .model import ModelSourceMixin, local_model


class ValidateModelOperator(ModelSourceMixin, TargetMixin, BaseOperator):
    """Send a real JPEG to every replica and check the answers against the artifact. Replicas are
    dialed the way the target reaches them from this worker (pod IPs or port-forwards).

    :param endpoints: the replicas' addresses (``start_candidate`` or ``wait_for_endpoint``)
    :param model: ``fetch_model``'s result: the signature and the offline reference
    :param settings: the rendered params (``config.templated()``): the model's name and URL (a worker
        without ``fetch_model``'s cache fetches the model again from it, with its credentials), the
        target, ``expected_class`` (the class the image must get, if known),
        ``allow_signature_change`` (let a breaking signature change through, reported, not failed),
        ``balance_check_seconds`` (with a load balancer among the endpoints, send requests through it
        on one channel until every replica answered some, for at most this long; 0: no check)
    :param image_path: the JPEG to send
    :param image: the image under test (for the report)
    :param requests_per_replica: timed requests after the checked first one
    :param cache_dir: the content cache (default ``$TFSERVING_DEPLOY_CACHE``)
    :param compare_with_serving: a candidate's validation: its signature must not break clients of
        what serves now (``compatibility``), unless ``allow_signature_change``; otherwise the
        validation of what serves, whose summary warns when any address may reach it
    """

    template_fields: Sequence[str] = ("endpoints", "model", "image_path", "image", "settings")

    def __init__(
        self,
        *,
        endpoints,
        model,
        image_path: str,
        image: str | None = None,
        settings: dict | None = None,
        requests_per_replica: int = 20,
        cache_dir: str | None = None,
        compare_with_serving: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.endpoints, self.model, self.settings = endpoints, model, settings or {}
        self.image_path, self.image = image_path, image
        self.requests_per_replica, self.cache_dir = requests_per_replica, cache_dir
        self.compare_with_serving = compare_with_serving

    def execute(self, context) -> dict:
        with explained_failures():  # the local model, its offline reference answer, the verdict
            return self._validate(context)

    def _validate(self, context) -> dict:
        from tfserving_deploy.validation.checks import raise_for_report, validate_replicas

        fetched = local_model(self.model, self.cache_dir, self.model_source(context)[0] if self.has_model_url else None)
        serving = self._serving_replica() if self.compare_with_serving else None
        with self.target.reachable(list(self.endpoints) + ([serving] if serving else [])) as dial:
            report = validate_replicas(
                list(self.endpoints),
                model_name=self.model_name,
                version=fetched.version,
                signature=fetched.signature,
                model_dir=fetched.model_dir,
                jpeg=Path(self.image_path).read_bytes(),
                expected_class=self.config.validation.expected_class,
                requests_per_replica=self.requests_per_replica,
                dial=dial,
                keep_reference_in=cache_root(self.cache_dir) / "predictions",
            )
            changes = self._signature_changes(serving, fetched.signature.name, dial) if serving else []
        for replica in report.replicas:  # a replica that stopped answering: say what became of it
            if any(f.startswith("Predict failed") for f in replica.failures):
                replica.failures.append(f"replica: {self.target.explain_replica(self.model_name, replica.address)}")
        if report.ok:  # every replica answered right: now how they serve
            self._serving_figures(report, fetched.signature, Path(self.image_path).read_bytes())
        summary = f"{report.summary()}\n  image: {self.image}"  # the digest, beside model and version
        exposure = None if self.compare_with_serving else self.target.exposure_warning(self.model_name)
        if exposure:  # what serves is open to every address: say so where the result is read
            summary += f"\n  warning: {exposure}"
            self.log.warning("exposure: %s", exposure)
        self.log.info("%s", summary)
        raise_for_report(report)
        result = {**report.to_dict(), "summary": summary, "image": self.image, "model_sha256": fetched.sha256}
        if self.compare_with_serving:
            result["signature_changes"] = changes
        lineage.emit_assets(
            self,
            context,
            lineage.endpoint_uri(self.config.deploy.target, self.model_name),
            {
                "image": self.image,
                "model_sha256": fetched.sha256,
                "model_version": fetched.version,
                "replicas": len(report.replicas),
                "validation": "passed",
                "latency_ms_p50": [r.latency_ms_p50 for r in report.replicas],
            },
        )
        return result

    def _serving_figures(self, report, signature, jpeg: bytes) -> None:
        """Each replica's metrics, and the spread of one channel through the load balancer."""
        from tfserving_deploy.validation.checks import add_replica_metrics, check_spread

        rest = {address: self.target.metrics_address(address) for address in self.endpoints}
        balancers = [address for address, metrics in rest.items() if metrics is None]
        replicas = {address: metrics for address, metrics in rest.items() if metrics is not None}
        with self.target.reachable([*balancers, *replicas.values()]) as dial:
            dialed = {address: dial[metrics] for address, metrics in replicas.items()}
            add_replica_metrics(report, dialed)
            window = self.config.validation.balance_check_seconds
            if balancers and window:
                check_spread(report, dial[balancers[0]], dialed, signature=signature, jpeg=jpeg, window_s=window)

    def _serving_replica(self) -> str | None:
        """A replica of what serves now, if that is another image than this candidate's."""
        serving = self.target.serving_state(self.model_name)
        if not serving or not serving.addresses or serving.image == self.image:
            return None
        return serving.addresses[0]

    def _signature_changes(self, serving: str, signature_name: str, dial) -> list[str]:
        from tfserving_deploy.validation.compatibility import check_signature_change

        changes = check_signature_change(
            serving,
            self.endpoints[0],
            model_name=self.model_name,
            signature_name=signature_name,
            allow=self.config.validation.allow_signature_change,
            dial=dial,
        )
        if changes:
            self.log.warning("breaking signature changes let through (allow_signature_change): %s", changes)
        return changes
