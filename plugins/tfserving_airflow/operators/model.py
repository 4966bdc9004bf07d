"""The model's side: is there anything new to deploy, and fetching it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowSkipException

from tfserving_deploy.errors import RolloutError, TargetError
from tfserving_deploy.model.cache import cache_root

from .. import lineage
from .base import SettingsMixin, TargetMixin, asset_sources, explained_failures, run_date

logger = logging.getLogger(__name__)


class ModelSourceMixin(SettingsMixin):
    """The model's URL (and pin): the ``model_url`` param, or an upstream Asset event's
    ``extra.model_url``. Both are untrusted: a dated URL (``.../{{ ds_nodash }}/model.tar.gz``,
    for backfills) is filled from the run's dates only (``render_model_url``), never with the task
    context; and its secrets (a user part, a password, signed-URL tokens) are masked in logs,
    errors and rendered fields before anything renders or runs (``SettingsMixin``, for every task)."""

    @property
    def has_model_url(self) -> bool:
        """Whether the task was given the run's model URL (with its credentials), not only XCom's."""
        return bool(self.settings.get("model_url"))

    def model_source(self, context) -> tuple[str, str | None]:
        from tfserving_deploy.model.urls import render_model_url

        url, sha256 = self.config.model.model_url, self.config.model.model_sha256
        for event_url, event_sha256 in asset_sources(context):
            url, sha256 = event_url, event_sha256 or sha256
        with explained_failures():
            return render_model_url(url, run_date(context)), sha256


class CheckForChangeOperator(TargetMixin, ModelSourceMixin, BaseOperator):
    """Skip the whole run when the model is unchanged and already serving, healthy.

    "Unchanged" is decided without downloading: a pinned sha256, a hashed local file, or a
    conditional HEAD against what the cache remembers of the URL.

    :param settings: the rendered params (``config.templated()``): the model, its pin, the target,
        how many replicas must serve it, healthy, for "no change", and ``force`` (never skip)
    :param cache_dir: the content cache (default ``$TFSERVING_DEPLOY_CACHE``)
    """

    template_fields: Sequence[str] = ("settings",)

    def __init__(self, *, settings: dict | None = None, cache_dir: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.settings, self.cache_dir = settings or {}, cache_dir

    def execute(self, context) -> dict:
        decision = self._decide(context)
        self.log.info("change check: %s", decision)
        return decision

    def _decide(self, context) -> dict:
        from tfserving_deploy.model.artifact import probe_sha256

        with explained_failures():  # wrong params fail here, before anything is fetched or built
            self.config.check()
            self.target_type.check_model_name(self.model_name)
        if self.config.deploy.force:
            return {"changed": True, "reason": "force=true"}
        url, pinned = self.model_source(context)
        with explained_failures():  # a URL the policy refuses fails here, not after three tries
            sha256 = probe_sha256(url, cache_dir=cache_root(self.cache_dir), sha256=pinned, log=self.log)
        try:
            serving = self.target.serving_state(self.model_name)
        except TargetError as exc:  # e.g. no cluster yet: ensure_cluster will make one
            return {"changed": True, "reason": f"serving state unknown: {exc}", "sha256": sha256}
        if sha256 is None or serving is None:
            reason = "model not fetched before, or it changed" if sha256 is None else "nothing serving"
            return {"changed": True, "reason": reason, "sha256": sha256}
        meta = serving.metadata
        if meta.get("model-sha256") != sha256 or serving.replicas != self.config.deploy.replicas:
            reason = f"serving sha256={meta.get('model-sha256')} on {serving.replicas} replica(s)"
            return {"changed": True, "reason": reason, "sha256": sha256}
        if meta.get("server-config") != self.config.server.fingerprint():
            reason = f"server settings changed: {self.config.server}"
            return {"changed": True, "reason": reason, "sha256": sha256}
        if serving.model_version is None:
            return {"changed": True, "reason": "the serving model's version is not recorded", "sha256": sha256}
        with self.target.reachable(list(serving.addresses)) as dial:
            unhealthy = {
                a: why
                for a in serving.addresses
                if (why := _unavailable(dial[a], self.model_name, serving.model_version))
            }
        if unhealthy:
            return {"changed": True, "reason": f"replicas not AVAILABLE: {unhealthy}", "sha256": sha256}
        raise AirflowSkipException(
            f"no change: model sha256={sha256} (version {serving.model_version}) already serves on "
            f"{serving.replicas} healthy replica(s) as {serving.image}; skipping the run (set force=true to redeploy)"
        )


def _unavailable(address: str, model_name: str, version: int) -> str | None:
    """Why the replica at ``address`` does not serve ``version`` AVAILABLE, or None when it does."""
    from tfserving_deploy.serving.status import replica_state

    try:
        state = replica_state(address, model_name, version)
    except RolloutError as exc:
        return str(exc)
    return None if state.available else str(state)


class FetchModelOperator(ModelSourceMixin, BaseOperator):
    """Download (or reuse from the content cache), unpack safely and verify a SavedModel tarball.

    :param settings: the rendered params (``config.templated()``): ``model_url`` (http(s)://, file://;
        may hold ``{{ ds_nodash }}``) and ``model_sha256`` (a different download fails the task)
    :param cache_dir: the content cache (default ``$TFSERVING_DEPLOY_CACHE``)
    """

    template_fields: Sequence[str] = ("settings", "cache_dir")

    def __init__(self, *, settings: dict | None = None, cache_dir: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.settings, self.cache_dir = settings or {}, cache_dir
        self._fetched: dict | None = None

    def execute(self, context) -> dict:
        from tfserving_deploy.model.artifact import fetch_model

        url, sha256 = self.model_source(context)
        with explained_failures():
            model = fetch_model(url, sha256=sha256, cache_dir=cache_root(self.cache_dir), log=self.log)
        self._fetched = model.to_dict()
        lineage.emit_assets(
            self,
            context,
            lineage.model_uri(model.url),
            {"sha256": model.sha256, "version": model.version, "url": model.url},
        )
        return self._fetched

    def get_openlineage_facets_on_complete(self, task_instance):
        from airflow.providers.openlineage.extractors import OperatorLineage

        assert self._fetched is not None, "called after a successful execute only"
        return OperatorLineage(outputs=[lineage.openlineage_dataset(lineage.model_uri(self._fetched["url"]))])


def local_model(model: dict, configured_cache_dir: str | None, source_url: str | None = None):
    """The fetched model on *this* worker: a cache hit normally, else fetched again, pinned to the
    sha256 ``fetch_model`` verified. Fetched from ``source_url``, the run's own model URL with its
    credentials (``ModelSourceMixin.model_source``), never from XCom's URL, which is redacted
    (its token or password removed: a signed or credentialed URL would answer 401/403). Without
    ``source_url`` XCom's URL is the only one there is: right for URLs without credentials."""
    from tfserving_deploy.model.artifact import FetchedModel, fetch_model

    fetched = FetchedModel.from_dict(model)
    if Path(fetched.model_dir, "saved_model.pb").is_file():
        return fetched
    if source_url is None:
        logger.warning(
            "model %s is not in this worker's cache and the operator has no model_url: fetching it from XCom's "
            "URL, whose credentials were removed (a signed or credentialed URL will refuse it); give the "
            "operator model_url, or share TFSERVING_DEPLOY_CACHE between workers",
            fetched.url,
        )
    return fetch_model(source_url or fetched.url, sha256=fetched.sha256, cache_dir=cache_root(configured_cache_dir))
