"""The image's side: bake the model into the serving base, publish it by digest."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from airflow.sdk import BaseOperator

from tfserving_deploy.image.references import parse_reference

from .. import lineage
from .base import BuilderMixin, explained_failures
from .model import ModelSourceMixin, local_model


class BuildImageOperator(ModelSourceMixin, BuilderMixin, BaseOperator):
    """Bake the model into ``serving_base_image`` as ``/models/<model_name>/<version>``.

    :param model: ``fetch_model``'s result
    :param settings: the rendered params (``config.templated()``): ``model_name`` (``MODEL_NAME`` in the
        image), ``serving_base_image`` (on the deployment's allowlist), ``image_repository``,
        ``image_builder``, registry credentials, ``warmup_requests``; and ``model_url``: on a worker
        without ``fetch_model``'s cache the model is fetched again from it, with its credentials
    :param cache_dir: the content cache (default ``$TFSERVING_DEPLOY_CACHE``)
    :param warmup_image_path: the image the warmup request sends (validation's); None: no warmup file.
        With ``warmup_requests``, ``<version>/assets.extra/tf_serving_warmup_requests`` is baked into
        the image (unless the model has one): TF Serving replays it before the version is AVAILABLE
    """

    template_fields: Sequence[str] = ("model", "settings")

    def __init__(
        self,
        *,
        model,
        settings: dict | None = None,
        cache_dir: str | None = None,
        warmup_image_path: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.model, self.settings, self.cache_dir = model, settings or {}, cache_dir
        self.warmup_image_path = warmup_image_path
        self._image: str | None = None

    def execute(self, context) -> str:
        from tfserving_deploy.image.docker_builder import ModelFiles
        from tfserving_deploy.image.warmup import warmup_requests

        source_url = self.model_source(context)[0] if self.has_model_url else None
        image = self.config.image  # parsed before anything is pulled: the base image on the allowlist
        with explained_failures():
            fetched = local_model(self.model, self.cache_dir, source_url)
            warmup = None
            if image.warmup_requests and self.warmup_image_path:
                jpeg = Path(self.warmup_image_path).read_bytes()
                warmup = warmup_requests(self.model_name, fetched.signature, jpeg)
            files = ModelFiles(
                name=self.model_name,
                version=fetched.version,
                sha256=fetched.sha256,
                path=fetched.model_dir,
                warmup=warmup,
            )
            builder = self.builder_for(image.image_repository)
            self._image = builder.build(files, base_image=image.serving_base_image, repository=image.image_repository)
        return self._image

    def get_openlineage_facets_on_complete(self, task_instance):
        from airflow.providers.openlineage.extractors import OperatorLineage

        assert self._image is not None, "called after a successful execute only"
        return OperatorLineage(
            inputs=[lineage.openlineage_dataset(lineage.model_uri(self.model["url"]))],
            outputs=[lineage.openlineage_dataset(lineage.image_uri(self._image))],
        )


class PushImageOperator(BuilderMixin, BaseOperator):
    """Push the built image; returns ``repo@sha256:...`` so everything after deploys by digest.

    :param image: ``build_image``'s result
    :param model: ``fetch_model``'s result (recorded with the image's Asset event)
    :param settings: the rendered params (``config.templated()``): the builder that built ``image``,
        registry credentials
    """

    template_fields: Sequence[str] = ("image", "model", "settings")

    def __init__(self, *, image: str, model, settings: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.image, self.model, self.settings = image, model, settings or {}
        self._pushed: str | None = None

    def execute(self, context) -> str:
        with explained_failures():
            self._pushed = self.builder_for(self.image).push(self.image)
        lineage.emit_assets(
            self,
            context,
            lineage.image_uri(self._pushed),
            {
                "digest": parse_reference(self._pushed).digest,
                "model_sha256": self.model["sha256"],
                "model_version": self.model["version"],
                "model_url": self.model["url"],
            },
        )
        return self._pushed

    def get_openlineage_facets_on_complete(self, task_instance):
        from airflow.providers.openlineage.extractors import OperatorLineage

        assert self._pushed is not None, "called after a successful execute only"
        return OperatorLineage(
            inputs=[lineage.openlineage_dataset(lineage.image_uri(self.image))],
            outputs=[lineage.openlineage_dataset(lineage.image_uri(self._pushed))],
        )
