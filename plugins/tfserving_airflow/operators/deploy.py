"""The serving side: the target ready, the candidate, the promotion, the rollback."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from tfserving_deploy.serving.sizing import DEFAULT_READY_SECONDS, Measurement, Sizing, choose
from tfserving_deploy.targets.kubernetes.manifests import rollout_timeout, run_key
from tfserving_deploy.targets.results import DeployResult

from .. import lineage
from .base import TargetMixin, explained_failures, run_date

PROMOTED = "promoted"  # the deploy task's XCom key, written the moment what serves starts changing
SIZING = "sizing"  # start_candidate's XCom key: what the replicas get, from its measurement, and why


class EnsureClusterOperator(TargetMixin, BaseOperator):
    """Make sure the target can take a deployment (engine/cluster and registry reachable, the
    identity allowed); for GKE, create the cluster when it is missing and wait until it is RUNNING.

    :param settings: the rendered params (``config.templated()``): the target and its settings,
        ``image_repository`` (its registry is checked), the model's name (the identity's access to
        its objects is checked)
    """

    create_cluster = True
    template_fields: Sequence[str] = ("settings",)

    def __init__(self, *, settings: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.settings = settings or {}

    def execute(self, context) -> dict:
        with explained_failures():
            facts = self.target.ensure_ready(self.config.image.image_repository, model_name=self.model_name)
        self.log.info("target %s ready: %s", self.config.deploy.target, facts)
        return facts


class StartCandidateOperator(TargetMixin, BaseOperator):
    """Start the image as one isolated replica (outside the serving set) for validation. Returns
    its address; its load time and peak memory size the replicas (XCom ``sizing``, for ``deploy``).

    :param image: the image by digest
    :param model: ``fetch_model``'s result
    :param settings: the rendered params (``config.templated()``): the target, the model's name
    :param ready_timeout: seconds for the candidate to report the model AVAILABLE
    """

    template_fields: Sequence[str] = ("settings", "image", "model")

    def __init__(self, *, image: str, model, settings: dict | None = None, ready_timeout: float = 300.0, **kwargs):
        super().__init__(**kwargs)
        self.image, self.model, self.settings, self.ready_timeout = image, model, settings or {}, ready_timeout

    def execute(self, context) -> list[str]:
        measured: list[Measurement] = []
        with explained_failures():
            addresses = self.target.start_candidate(
                self.image,
                model_name=self.model_name,
                version=self.model["version"],
                ready_timeout=self.ready_timeout,
                run=run_key(context["run_id"]),
                on_measured=measured.append,
            )
        measurement = measured[0] if measured else Measurement(notes=("the target measured nothing",))
        sizing = choose(measurement, explicit_resources=self.config.kubernetes.resources)
        for reason in sizing.reasons:
            _log_reason(self.log, reason)
        context["ti"].xcom_push(key=SIZING, value=sizing.to_dict())
        return addresses


class StopCandidateOperator(TargetMixin, BaseOperator):
    """Tear the candidate down, whatever happened to it.

    :param settings: the rendered params (``config.templated()``): the target, the model's name
    """

    template_fields: Sequence[str] = ("settings",)

    def __init__(self, *, settings: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.settings = settings or {}

    def execute(self, context) -> int:
        removed = self.target.stop_candidate(self.model_name, run_key(context["run_id"]))
        self.log.info("removed %d candidate replica(s) of %s", removed, self.model_name)
        return removed


class DeployModelOperator(TargetMixin, BaseOperator):
    """Promote the validated image to serving, by digest; the old revision serves until the new
    one is ready. Never rolls production back to an older model: a run whose logical date is
    older than what serves, or that has a newer run after it (a backfill), records its image
    but does not promote.

    :param image: the validated image by digest
    :param model: ``fetch_model``'s result
    :param settings: the rendered params (``config.templated()``): the target, the model's name,
        ``replicas``
    :param ready_timeout: seconds for one wave of new pods to become ready (a rollout of many
        replicas gets one such budget per wave: ``manifests.rollout_timeout``); None: from ``sizing``,
        else 180
    :param sizing: ``start_candidate``'s XCom ``sizing`` (resources and startup budget from the
        candidate's measurement); None: the target's own settings
    """

    template_fields: Sequence[str] = ("settings", "image", "model", "sizing")

    def __init__(
        self,
        *,
        image: str,
        model,
        settings: dict | None = None,
        ready_timeout: float | None = None,
        sizing=None,
        **kwargs,
    ):
        kwargs.setdefault("max_active_tis_per_dag", 1)  # one promotion at a time
        super().__init__(**kwargs)
        self.image, self.model, self.settings = image, model, settings or {}
        self.ready_timeout, self.sizing = ready_timeout, sizing
        self._endpoint: str | None = None

    def execute(self, context) -> dict:
        """The ``DeployResult`` as XCom (``to_dict``)."""
        date = run_date(context)
        self._refuse_stale_promotion(context, date)
        metadata = {
            "model-sha256": self.model["sha256"],
            "model-url": self.model["url"][:200],
            "run-date": date.isoformat(),
            "dag-run": context["run_id"][:200],
            "server-config": self.config.server.fingerprint(),  # the change check compares it
        }
        replicas = self.config.deploy.replicas
        sizing = self._sizing()
        per_wave = sizing.ready_timeout if sizing else float(self.ready_timeout or DEFAULT_READY_SECONDS)
        with explained_failures():
            result = self.target.deploy(
                self.image,
                model_name=self.model_name,
                version=self.model["version"],
                replicas=replicas,
                ready_timeout=rollout_timeout(per_wave, replicas, self.config.kubernetes.max_surge),
                metadata=metadata,
                # recorded before the rollout is waited for: a worker killed meanwhile leaves it behind
                on_change=lambda: context["ti"].xcom_push(key=PROMOTED, value=self.image),
                sizing=sizing,
            )
        if not result.promoted:  # an earlier try of this run may have made the switch
            serving = self.target.serving_state(self.model_name)
            if serving is not None and serving.metadata.get("dag-run") == metadata["dag-run"]:
                result = dataclasses.replace(result, promoted=True)
        self._endpoint = lineage.endpoint_uri(self.config.deploy.target, self.model_name)
        return result.to_dict()

    def _sizing(self) -> Sizing | None:
        """``start_candidate``'s sizing, with an explicit ``ready_timeout`` winning; logged."""
        sizing = Sizing.from_dict(_rendered_dict(self.sizing))
        if sizing is not None and self.ready_timeout is not None:
            reason = f"ready timeout given explicitly: {float(self.ready_timeout):g}s per wave"
            sizing = dataclasses.replace(
                sizing, ready_timeout=float(self.ready_timeout), reasons=[*sizing.reasons, reason]
            )
        for reason in sizing.reasons if sizing else ["no measurement from start_candidate: the target's settings"]:
            _log_reason(self.log, reason)
        return sizing

    def _refuse_stale_promotion(self, context, date) -> None:
        newer = _next_scheduled_date(context)
        if newer is not None and context["ti"].get_dr_count(dag_id=context["dag"].dag_id, logical_dates=[newer]):
            raise AirflowSkipException(
                f"not promoting {self.image}: a newer run (logical date {newer.isoformat()}) exists and will "
                "promote its own model; this run's image is built, validated and recorded"
            )
        serving = self.target.serving_state(self.model_name)
        serving_date = serving.metadata.get("run-date") if serving else None
        if serving_date and datetime.fromisoformat(serving_date) > date:
            raise AirflowSkipException(
                f"not promoting {self.image}: the serving model comes from a newer run ({serving_date} > "
                f"{date.isoformat()}); a backfill never rolls production back"
            )

    def get_openlineage_facets_on_complete(self, task_instance):
        from airflow.providers.openlineage.extractors import OperatorLineage

        return OperatorLineage(
            inputs=[lineage.openlineage_dataset(lineage.image_uri(self.image))],
            outputs=[lineage.openlineage_dataset(self._endpoint)] if self._endpoint else [],
        )


def _rendered_dict(value) -> dict | None:
    """An XCom dict, or its rendered text (a template field renders it to its repr)."""
    import ast

    if value is None or value in ("", "None"):
        return None
    return dict(ast.literal_eval(value) if isinstance(value, str) else value)


def _log_reason(log, reason: str) -> None:
    (log.warning if reason.startswith("warning") else log.info)("sizing: %s", reason)


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


class RollbackOperator(TargetMixin, BaseOperator):
    """Put back the revision that served before, when a task after the promotion failed.

    Runs on ``one_failed`` of the tasks after ``deploy`` and acts only if this run's deploy
    changed what serves (its result says ``promoted``); a failed rollout was already undone by
    the target inside ``deploy``. It only runs because something failed, so it always ends
    failed, saying what it did: as the DAG's last task it decides the run's state.

    :param image: the image this run promoted
    :param settings: the rendered params (``config.templated()``): the target, the model's name
    :param deploy_task_id: the task whose result says whether this run promoted
    """

    template_fields: Sequence[str] = ("settings", "image")

    def __init__(self, *, image: str, settings: dict | None = None, deploy_task_id: str = "deploy", **kwargs):
        kwargs.setdefault("trigger_rule", "one_failed")
        super().__init__(**kwargs)
        self.image, self.settings, self.deploy_task_id = image, settings or {}, deploy_task_id

    def execute(self, context):
        ti = context["ti"]
        deployment = ti.xcom_pull(task_ids=self.deploy_task_id)
        promoted = ti.xcom_pull(task_ids=self.deploy_task_id, key=PROMOTED) or (
            deployment is not None and DeployResult.from_dict(deployment).promoted
        )
        if not promoted:
            raise AirflowFailException("a task failed; nothing to roll back: this run did not change what serves")
        restored = self.target.rollback(self.model_name, "a task after the promotion failed", image=self.image)
        raise AirflowFailException(f"a task after the promotion of {self.image} failed; rolled back: {restored}")
