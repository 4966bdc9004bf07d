"""Thin operators over ``tfserving_deploy``: each ``execute`` is a call into the library.

Heavy imports (tensorflow, docker, grpc) happen inside ``execute`` so DAG parsing stays fast.
Faults that a retry cannot fix (bad checksum, unsafe tarball, wrong answers) fail the task at
once; transient ones (network, registry, engine) go through the task's retries.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import contextmanager
from datetime import timedelta
from functools import cached_property
from pathlib import Path

from airflow.sdk import BaseOperator, BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from tfserving_deploy.errors import (
    ChecksumMismatch,
    InvalidModelError,
    RolloutError,
    TargetError,
    UnsafeArchiveError,
    ValidationError,
)

from . import lineage
from .hooks import get_image_builder, get_target, optional

PERMANENT_FAULTS = (ChecksumMismatch, UnsafeArchiveError, InvalidModelError, RolloutError, ValidationError)


def resolve_cache_dir(configured: str | None = None) -> str:
    """Where fetched models live, keyed by content: the operator's value, else $TFSERVING_DEPLOY_CACHE."""
    return configured or os.environ.get("TFSERVING_DEPLOY_CACHE") or str(Path.home() / ".cache" / "tfserving-deploy")


@contextmanager
def explained_failures():
    """Permanent faults fail without retry; every fault keeps the library's explanation."""
    try:
        yield
    except PERMANENT_FAULTS as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc


class _TargetMixin:
    """Operators that talk to the deployment target get it (and its clients) once, lazily."""

    target_name: str
    target_options: dict

    create_cluster = False  # only ensure_cluster may create a GKE cluster

    @cached_property
    def target(self):
        options = {k: v for k, v in (self.target_options or {}).items() if optional(v) is not None}
        return get_target(self.target_name, create_cluster=self.create_cluster, **options)


class _ModelSourceMixin:
    """``model_url`` may itself hold a template (``.../{{ ds_nodash }}/model.tar.gz``, for
    backfills), and an upstream Asset event may name the model (``extra.model_url``)."""

    model_url: str
    model_sha256: str | None

    def model_source(self, context) -> tuple[str, str | None]:
        url, sha256 = self.model_url, optional(self.model_sha256)
        for events in (context.get("triggering_asset_events") or {}).values():
            for event in events:
                if event.extra.get("model_url"):
                    url, sha256 = event.extra["model_url"], event.extra.get("model_sha256") or sha256
        if "{{" in url:
            url = self.render_template(url, context)
        return url, sha256


class CheckForChangeOperator(_TargetMixin, _ModelSourceMixin, BaseOperator):
    """Skip the whole run when the model is unchanged and already serving, healthy.

    "Unchanged" is decided without downloading: a pinned sha256, a hashed local file, or a
    conditional HEAD against what the cache remembers of the URL.
    """

    template_fields: Sequence[str] = ("model_url", "model_sha256", "model_name", "target_name", "target_options", "replicas", "force")

    def __init__(self, *, model_url: str, model_sha256: str | None, model_name: str, target_name: str,
                 replicas: int, force: bool | str = False, target_options: dict | None = None,
                 cache_dir: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.model_url, self.model_sha256, self.model_name = model_url, model_sha256, model_name
        self.target_name, self.replicas, self.force = target_name, replicas, force
        self.target_options, self.cache_dir = target_options or {}, cache_dir

    def execute(self, context) -> dict:
        decision = self._decide(context)
        self.log.info("change check: %s", decision)
        return decision

    def _decide(self, context) -> dict:
        from tfserving_deploy.artifact import probe_sha256
        from tfserving_deploy.serving_client import replica_state

        if str(self.force).lower() == "true":
            return {"changed": True, "reason": "force=true"}
        url, pinned = self.model_source(context)
        sha256 = probe_sha256(url, cache_dir=resolve_cache_dir(self.cache_dir), sha256=pinned, log=self.log)
        try:
            serving = self.target.serving_state(self.model_name)
        except TargetError as exc:  # e.g. no cluster yet: ensure_cluster will make one
            return {"changed": True, "reason": f"serving state unknown: {exc}", "sha256": sha256}
        if sha256 is None or serving is None:
            reason = "model not fetched before, or it changed" if sha256 is None else "nothing serving"
            return {"changed": True, "reason": reason, "sha256": sha256}
        meta = serving["metadata"]
        if meta.get("model-sha256") != sha256 or serving["replicas"] != int(self.replicas):
            reason = f"serving sha256={meta.get('model-sha256')} on {serving['replicas']} replica(s)"
            return {"changed": True, "reason": reason, "sha256": sha256}
        version = int(meta["model-version"])
        with self.target.reachable(serving["addresses"]) as dial:
            unhealthy = [a for a in serving["addresses"]
                         if _state_or_error(replica_state, dial[a], self.model_name, version) != "AVAILABLE"]
        if unhealthy:
            return {"changed": True, "reason": f"replicas not AVAILABLE: {unhealthy}", "sha256": sha256}
        raise AirflowSkipException(
            f"no change: model sha256={sha256} (version {version}) already serves on {serving['replicas']} "
            f"healthy replica(s) as {serving['image']}; skipping the run (set force=true to redeploy)"
        )


def _state_or_error(probe, *args) -> str:
    try:
        return probe(*args)
    except RolloutError as exc:
        return str(exc)


class FetchModelOperator(_ModelSourceMixin, BaseOperator):
    """Download (or reuse from the content cache), unpack safely and verify a SavedModel tarball."""

    template_fields: Sequence[str] = ("model_url", "model_sha256", "cache_dir")

    def __init__(self, *, model_url: str, model_sha256: str | None = None, cache_dir: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.model_url, self.model_sha256, self.cache_dir = model_url, model_sha256, cache_dir
        self._fetched: dict | None = None

    def execute(self, context) -> dict:
        from tfserving_deploy.artifact import fetch_model

        url, sha256 = self.model_source(context)
        with explained_failures():
            model = fetch_model(url, sha256=sha256, cache_dir=resolve_cache_dir(self.cache_dir), log=self.log)
        self._fetched = model.to_dict()
        lineage.emit_assets(self, context, lineage.model_uri(model.url),
                            {"sha256": model.sha256, "version": model.version, "url": model.url})
        return self._fetched

    def get_openlineage_facets_on_complete(self, task_instance):
        from airflow.providers.openlineage.extractors import OperatorLineage

        return OperatorLineage(outputs=[lineage.openlineage_dataset(lineage.model_uri(self._fetched["url"]))])


def local_model(model: dict, configured_cache_dir: str | None):
    """The fetched model on *this* worker: a cache hit normally, a verified re-fetch otherwise."""
    from tfserving_deploy.artifact import FetchedModel, fetch_model

    fetched = FetchedModel.from_dict(model)
    if Path(fetched.model_dir, "saved_model.pb").is_file():
        return fetched
    return fetch_model(fetched.url, sha256=fetched.sha256, cache_dir=resolve_cache_dir(configured_cache_dir))


class _BuilderMixin:
    """``builder_options``: ``docker_conn_id`` / ``gcp_conn_id`` for registry credentials."""

    builder_name: str
    builder_options: dict

    def builder_for(self, repository: str):
        options = {k: v for k, v in (self.builder_options or {}).items() if optional(v) is not None}
        return get_image_builder(self.builder_name, repository=repository, **options)


class BuildImageOperator(_BuilderMixin, BaseOperator):
    """Bake the model into ``base_image`` as ``/models/<model_name>/<version>``."""

    template_fields: Sequence[str] = ("model", "model_name", "base_image", "image_repository", "builder_name", "builder_options")

    def __init__(self, *, model, model_name: str, base_image: str, image_repository: str, builder_name: str = "docker",
                 builder_options: dict | None = None, cache_dir: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.model, self.model_name, self.base_image = model, model_name, base_image
        self.image_repository, self.builder_name = image_repository, builder_name
        self.builder_options, self.cache_dir = builder_options or {}, cache_dir
        self._image: str | None = None

    def execute(self, context) -> str:
        from tfserving_deploy.images import ModelFiles

        with explained_failures():
            fetched = local_model(self.model, self.cache_dir)
            files = ModelFiles(name=self.model_name, version=fetched.version, sha256=fetched.sha256, path=fetched.model_dir)
            builder = self.builder_for(self.image_repository)
            self._image = builder.build(files, base_image=self.base_image, repository=self.image_repository)
        return self._image

    def get_openlineage_facets_on_complete(self, task_instance):
        from airflow.providers.openlineage.extractors import OperatorLineage

        return OperatorLineage(
            inputs=[lineage.openlineage_dataset(lineage.model_uri(self.model["url"]))],
            outputs=[lineage.openlineage_dataset(lineage.image_uri(self._image))],
        )


class PushImageOperator(_BuilderMixin, BaseOperator):
    """Push the built image; returns ``repo@sha256:...`` so everything after deploys by digest."""

    template_fields: Sequence[str] = ("image", "model", "builder_name", "builder_options")

    def __init__(self, *, image: str, model, builder_name: str = "docker", builder_options: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.image, self.model, self.builder_name, self.builder_options = image, model, builder_name, builder_options or {}
        self._pushed: str | None = None

    def execute(self, context) -> str:
        with explained_failures():
            self._pushed = self.builder_for(self.image).push(self.image)
        lineage.emit_assets(self, context, lineage.image_uri(self._pushed), {
            "digest": self._pushed.rpartition("@")[2], "model_sha256": self.model["sha256"],
            "model_version": self.model["version"], "model_url": self.model["url"],
        })
        return self._pushed

    def get_openlineage_facets_on_complete(self, task_instance):
        from airflow.providers.openlineage.extractors import OperatorLineage

        return OperatorLineage(
            inputs=[lineage.openlineage_dataset(lineage.image_uri(self.image))],
            outputs=[lineage.openlineage_dataset(lineage.image_uri(self._pushed))],
        )


class EnsureClusterOperator(_TargetMixin, BaseOperator):
    """Make sure the target can take a deployment (engine/cluster and registry reachable);
    for GKE, create the cluster when it is missing and wait until it is RUNNING."""

    create_cluster = True

    template_fields: Sequence[str] = ("target_name", "target_options", "image_repository")

    def __init__(self, *, target_name: str, image_repository: str, target_options: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.target_name, self.image_repository, self.target_options = target_name, image_repository, target_options or {}

    def execute(self, context) -> dict:
        with explained_failures():
            facts = self.target.ensure_ready(self.image_repository)
        self.log.info("target %s ready: %s", self.target_name, facts)
        return facts


class StartCandidateOperator(_TargetMixin, BaseOperator):
    """Start the image as one isolated replica (outside the serving set) for validation."""

    template_fields: Sequence[str] = ("target_name", "target_options", "image", "model", "model_name")

    def __init__(self, *, target_name: str, image: str, model, model_name: str, ready_timeout: float = 300.0,
                 target_options: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.target_name, self.image, self.model, self.model_name = target_name, image, model, model_name
        self.ready_timeout, self.target_options = ready_timeout, target_options or {}

    def execute(self, context) -> list[str]:
        with explained_failures():
            return self.target.start_candidate(
                self.image, model_name=self.model_name, version=int(self.model["version"]), ready_timeout=self.ready_timeout
            )


class StopCandidateOperator(_TargetMixin, BaseOperator):
    """Tear the candidate down, whatever happened to it."""

    template_fields: Sequence[str] = ("target_name", "target_options", "model_name")

    def __init__(self, *, target_name: str, model_name: str, target_options: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.target_name, self.model_name, self.target_options = target_name, model_name, target_options or {}

    def execute(self, context) -> int:
        removed = self.target.stop_candidate(self.model_name)
        self.log.info("removed %d candidate replica(s) of %s", removed, self.model_name)
        return removed


class DeployModelOperator(_TargetMixin, BaseOperator):
    """Promote the validated image to serving, by digest; the old revision serves until the new
    one is ready. Never rolls production back to an older model: a run whose logical date is
    older than what serves, or that has a newer run after it (a backfill), records its image
    but does not promote."""

    template_fields: Sequence[str] = ("target_name", "target_options", "image", "model", "model_name", "replicas")

    def __init__(self, *, target_name: str, image: str, model, model_name: str, replicas: int,
                 ready_timeout: float = 300.0, target_options: dict | None = None, **kwargs):
        kwargs.setdefault("max_active_tis_per_dag", 1)  # one promotion at a time
        super().__init__(**kwargs)
        self.target_name, self.image, self.model, self.model_name = target_name, image, model, model_name
        self.replicas, self.ready_timeout, self.target_options = replicas, ready_timeout, target_options or {}
        self._endpoint: str | None = None

    def execute(self, context) -> dict:
        run_date = _run_date(context)
        self._refuse_stale_promotion(context, run_date)
        metadata = {
            "model-sha256": self.model["sha256"], "model-url": _label_safe(self.model["url"]),
            "run-date": run_date.isoformat(), "dag-run": _label_safe(context["run_id"]),
        }
        with explained_failures():
            result = self.target.deploy(
                self.image, model_name=self.model_name, version=int(self.model["version"]),
                replicas=int(self.replicas), ready_timeout=self.ready_timeout, metadata=metadata,
            )
        if not result["promoted"]:  # an earlier try of this run may have made the switch
            serving = self.target.serving_state(self.model_name) or {}
            result["promoted"] = serving.get("metadata", {}).get("dag-run") == metadata["dag-run"]
        self._endpoint = lineage.endpoint_uri(self.target_name, self.model_name)
        return result

    def _refuse_stale_promotion(self, context, run_date) -> None:
        from datetime import datetime

        newer = _next_scheduled_date(context)
        if newer is not None and context["ti"].get_dr_count(dag_id=context["dag"].dag_id, logical_dates=[newer]):
            raise AirflowSkipException(
                f"not promoting {self.image}: a newer run (logical date {newer.isoformat()}) exists and will "
                "promote its own model; this run's image is built, validated and recorded"
            )
        serving = self.target.serving_state(self.model_name)
        serving_date = (serving or {}).get("metadata", {}).get("run-date")
        if serving_date and datetime.fromisoformat(serving_date) > run_date:
            raise AirflowSkipException(
                f"not promoting {self.image}: the serving model comes from a newer run ({serving_date} > "
                f"{run_date.isoformat()}); a backfill never rolls production back"
            )

    def get_openlineage_facets_on_complete(self, task_instance):
        from airflow.providers.openlineage.extractors import OperatorLineage

        return OperatorLineage(
            inputs=[lineage.openlineage_dataset(lineage.image_uri(self.image))],
            outputs=[lineage.openlineage_dataset(self._endpoint)] if self._endpoint else [],
        )


def _run_date(context):
    """The date a run stands for: its logical date, or when it ran (manual runs may have none)."""
    dag_run = context["dag_run"]
    return dag_run.logical_date or dag_run.run_after


def _next_scheduled_date(context):
    """The logical date after this run's on the DAG's cron, or None (manual/asset-only DAGs)."""
    from croniter import croniter

    timetable = getattr(context["dag"], "timetable", None)
    timetable = getattr(timetable, "timetable", timetable)  # AssetOrTimeSchedule wraps the cron one
    expression = getattr(timetable, "expression", None)
    logical_date = context["dag_run"].logical_date
    if not expression or logical_date is None:
        return None
    return croniter(expression, logical_date).get_next(type(logical_date))


def _label_safe(value: str) -> str:
    return value[:200]


class WaitForEndpointSensor(_TargetMixin, BaseSensorOperator):
    """Wait until every replica of the image reports the model version AVAILABLE; returns their
    ``host:port`` list. A replica whose model ended in END fails the task at once."""

    template_fields: Sequence[str] = ("target_name", "target_options", "image", "model", "model_name", "replicas")

    def __init__(self, *, target_name: str, image: str, model, model_name: str, replicas: int,
                 target_options: dict | None = None, **kwargs):
        kwargs.setdefault("poke_interval", 2)
        kwargs.setdefault("timeout", 300)
        super().__init__(**kwargs)
        self.target_name, self.image, self.model, self.model_name = target_name, image, model, model_name
        self.replicas, self.target_options = replicas, target_options or {}

    def poke(self, context) -> PokeReturnValue:
        from tfserving_deploy.serving_client import replica_state

        addresses = self.target.endpoints(self.model_name, self.image)
        if len(addresses) < int(self.replicas):
            self.log.info("%d of %d replicas running", len(addresses), int(self.replicas))
            return PokeReturnValue(is_done=False)
        with explained_failures(), self.target.reachable(addresses) as dial:  # END fails at once
            states = {a: replica_state(dial[a], self.model_name, int(self.model["version"])) for a in addresses}
        waiting = {a: s for a, s in states.items() if s != "AVAILABLE"}
        if waiting:
            self.log.info("waiting for %s", waiting)
            return PokeReturnValue(is_done=False)
        return PokeReturnValue(is_done=True, xcom_value=addresses)


    def execute(self, context):
        if self.target_name == "local":
            return super().execute(context)  # poke every replica container
        # Kubernetes: deploy already waited for the pods; the LoadBalancer can take minutes, so
        # wait for it in the triggerer, holding no worker slot.
        self.defer(trigger=self._load_balancer_trigger(), method_name="execute_complete",
                   timeout=timedelta(seconds=float(self.timeout) + 60))

    def _load_balancer_trigger(self):
        from tfserving_deploy.targets.manifests import object_name

        from .hooks import gke_cluster_options
        from .triggers import LoadBalancerTrigger

        options = self.target_options
        access = {
            "kubernetes_conn_id": options.get("kubernetes_conn_id") or "kubernetes_default",
            "config_file": options.get("config_file") or None,
            "cluster_context": options.get("cluster_context") or None,
        }
        if self.target_name == "gke":  # the cluster's endpoint and CA, a token from the connection
            from .kube import gke_cluster

            cluster_options = gke_cluster_options(options)
            cluster = gke_cluster(**cluster_options)  # never creates: ensure_cluster did
            access = {"cluster_url": cluster.url, "ssl_ca_cert": cluster.ca_certificate,
                      "gcp_conn_id": cluster_options["gcp_conn_id"]}
        return LoadBalancerTrigger(
            namespace=options.get("namespace") or "tfserving", service_name=object_name(self.model_name),
            timeout=float(self.timeout), poll_interval=float(self.poke_interval), **access,
        )

    def execute_complete(self, context, event) -> list[str]:
        """The LoadBalancer address first, then every ready pod: one gRPC connection through an
        L4 balancer reaches one pod only, so validation dials each pod too."""
        from .sensors import address_from_event

        balancer = address_from_event(event)
        pods = self.target.endpoints(self.model_name, self.image)
        if len(pods) < int(self.replicas):
            raise AirflowFailException(
                f"LoadBalancer {balancer} is up but only {len(pods)} of {self.replicas} pods of {self.image} are ready"
            )
        self.log.info("endpoint %s; pods %s", balancer, pods)
        return [balancer, *pods]

class ValidateModelOperator(_TargetMixin, BaseOperator):
    """Send a real JPEG to every replica and check the answers against the artifact. Replicas are
    dialed the way the target reaches them from this worker (pod IPs or port-forwards)."""

    template_fields: Sequence[str] = (
        "endpoints", "model", "model_name", "expected_class", "image_path", "image", "target_name", "target_options",
    )

    def __init__(self, *, endpoints, model, model_name: str, image_path: str, expected_class: int | None = None,
                 image: str | None = None, target_name: str = "local", target_options: dict | None = None,
                 requests_per_replica: int = 20, cache_dir: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.endpoints, self.model, self.model_name = endpoints, model, model_name
        self.expected_class, self.image_path, self.image = expected_class, image_path, image
        self.target_name, self.target_options = target_name, target_options or {}
        self.requests_per_replica, self.cache_dir = requests_per_replica, cache_dir

    def execute(self, context) -> dict:
        from tfserving_deploy.validation import raise_for_report, validate_replicas

        fetched = local_model(self.model, self.cache_dir)
        expected = optional(self.expected_class)
        with self.target.reachable(list(self.endpoints)) as dial:
            report = validate_replicas(
                list(self.endpoints), model_name=self.model_name, version=fetched.version,
                signature=fetched.signature, model_dir=fetched.model_dir,
                jpeg=Path(self.image_path).read_bytes(),
                expected_class=None if expected is None else int(expected),
                requests_per_replica=self.requests_per_replica, dial=dial,
            )
        summary = report.summary()
        self.log.info("%s", summary)
        with explained_failures():
            raise_for_report(report)
        result = {**report.to_dict(), "summary": summary, "image": self.image, "model_sha256": fetched.sha256}
        lineage.emit_assets(self, context, lineage.endpoint_uri(self.target_name, self.model_name), {
            "image": self.image, "model_sha256": fetched.sha256, "model_version": fetched.version,
            "replicas": len(report.replicas), "validation": "passed",
            "latency_ms_p50": [r.latency_ms_p50 for r in report.replicas],
        })
        return result


class RollbackOperator(_TargetMixin, BaseOperator):
    """Put back the revision that served before, when a task after the promotion failed.

    Runs on ``one_failed`` of the tasks after ``deploy`` and acts only if this run's deploy
    changed what serves (its result says ``promoted``); a failed rollout was already undone by
    the target inside ``deploy``. It only runs because something failed, so it always ends
    failed, saying what it did: as the DAG's last task it decides the run's state.
    """

    template_fields: Sequence[str] = ("target_name", "target_options", "model_name", "image")

    def __init__(self, *, image: str, model_name: str, target_name: str, deploy_task_id: str = "deploy",
                 target_options: dict | None = None, **kwargs):
        kwargs.setdefault("trigger_rule", "one_failed")
        super().__init__(**kwargs)
        self.image, self.model_name, self.deploy_task_id = image, model_name, deploy_task_id
        self.target_name, self.target_options = target_name, target_options or {}

    def execute(self, context):
        deployment = context["ti"].xcom_pull(task_ids=self.deploy_task_id)
        if not deployment or not deployment.get("promoted"):
            raise AirflowFailException("a task failed; nothing to roll back: this run did not change what serves")
        restored = self.target.rollback(self.model_name, "a task after the promotion failed", image=self.image)
        raise AirflowFailException(f"a task after the promotion of {self.image} failed; rolled back: {restored}")
