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
from ..config import flag, number, text
from .base import TargetMixin, explained_failures, run_date

logger = logging.getLogger(__name__)


class ModelSourceMixin:
    """The model's URL (and pin): the ``model_url`` param, or an upstream Asset event's
    ``extra.model_url``. Both are untrusted: a dated URL (``.../{{ ds_nodash }}/model.tar.gz``,
    for backfills) is filled from the run's dates only (``render_model_url``), never with the task
    context; and its secrets (a user part, a password, signed-URL tokens) are masked in logs,
    errors and rendered fields before anything renders or runs."""

    model_url: str | None
    model_sha256: str | None = None

    def render_template_fields(self, context, jinja_env=None) -> None:
        super().render_template_fields(context, jinja_env)  # type: ignore[misc]
        for url in [self.model_url, *(url for url, _ in _asset_sources(context))]:
            _mask_url_secrets(url)

    def model_source(self, context) -> tuple[str, str | None]:
        from tfserving_deploy.model.urls import render_model_url

        url, sha256 = str(self.model_url), text(self.model_sha256)
        for event_url, event_sha256 in _asset_sources(context):
            url, sha256 = event_url, event_sha256 or sha256
        with explained_failures():
            return render_model_url(url, run_date(context)), sha256


def _asset_sources(context) -> list[tuple[str, str | None]]:
    """``(model_url, model_sha256)`` of the Asset events that triggered the run, in order."""
    return [
        (str(event.extra["model_url"]), event.extra.get("model_sha256"))
        for events in (context.get("triggering_asset_events") or {}).values()
        for event in events
        if event.extra.get("model_url")
    ]


def _mask_url_secrets(url) -> None:
    from airflow.sdk.log import mask_secret

    from tfserving_deploy.model.urls import secret_values

    for secret in secret_values(str(url or "")):
        mask_secret(secret)


class CheckForChangeOperator(TargetMixin, ModelSourceMixin, BaseOperator):
    """Skip the whole run when the model is unchanged and already serving, healthy.

    "Unchanged" is decided without downloading: a pinned sha256, a hashed local file, or a
    conditional HEAD against what the cache remembers of the URL.

    :param model_url: the SavedModel tarball (http(s)://, file://); may hold ``{{ ds_nodash }}``
    :param model_sha256: the tarball's pinned sha256, if any
    :param model_name: the served model's name
    :param target_name: ``local``, ``kubernetes`` or ``gke``
    :param replicas: how many replicas must serve it, healthy, for "no change"
    :param force: never skip
    :param target_options: the target's settings (see ``config.TargetConfig``)
    :param cache_dir: the content cache (default ``$TFSERVING_DEPLOY_CACHE``)
    """

    template_fields: Sequence[str] = (
        "model_url",
        "model_sha256",
        "model_name",
        "target_name",
        "target_options",
        "replicas",
        "force",
    )

    def __init__(
        self,
        *,
        model_url: str,
        model_sha256: str | None,
        model_name: str,
        target_name: str,
        replicas: int,
        force: bool = False,
        target_options: dict | None = None,
        cache_dir: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.model_url, self.model_sha256, self.model_name = model_url, model_sha256, model_name
        self.target_name, self.replicas, self.force = target_name, replicas, force
        self.target_options, self.cache_dir = target_options or {}, cache_dir

    def execute(self, context) -> dict:
        decision = self._decide(context)
        self.log.info("change check: %s", decision)
        return decision

    def _decide(self, context) -> dict:
        from tfserving_deploy.model.artifact import probe_sha256

        with explained_failures():  # wrong params fail here, before anything is fetched or built
            self.target_type.check_model_name(self.model_name)
        if flag(self.force):
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
        if meta.get("model-sha256") != sha256 or serving.replicas != number(self.replicas):
            reason = f"serving sha256={meta.get('model-sha256')} on {serving.replicas} replica(s)"
            return {"changed": True, "reason": reason, "sha256": sha256}
        if meta.get("server-config") != self.target_config.server.fingerprint():
            reason = f"server settings changed: {self.target_config.server}"
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

    :param model_url: the SavedModel tarball (http(s)://, file://); may hold ``{{ ds_nodash }}``
    :param model_sha256: the tarball's pinned sha256; a different download fails the task
    :param cache_dir: the content cache (default ``$TFSERVING_DEPLOY_CACHE``)
    """

    template_fields: Sequence[str] = ("model_url", "model_sha256", "cache_dir")

    def __init__(self, *, model_url: str, model_sha256: str | None = None, cache_dir: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.model_url, self.model_sha256, self.cache_dir = model_url, model_sha256, cache_dir
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
