"""The image's side: bake the model into the serving base, publish it by digest."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from airflow.sdk import BaseOperator

from tfserving_deploy.image.references import parse_reference

from .. import lineage
from ..config import allowed, flag
from .base import BuilderMixin, explained_failures
from .model import ModelSourceMixin, local_model


class BuildImageOperator(ModelSourceMixin, BuilderMixin, BaseOperator):
    """Bake the model into ``base_image`` as ``/models/<model_name>/<version>``.

    :param model: ``fetch_model``'s result
    :param model_url: the run's model URL, as ``fetch_model`` got it (the ``model_url`` param): on a
        worker without ``fetch_model``'s cache the model is fetched again from it, with its credentials
    :param model_name: ``MODEL_NAME`` in the image, the name clients ask for
    :param base_image: the TF Serving image to build on (pin a tag or digest); on the deployment's
        allowlist (``TFSERVING_DEPLOY_ALLOWED_BASE_IMAGES``)
    :param image_repository: where the image is pushed
    :param builder_name: ``oci`` (registry API, no engine, reproducible) or ``docker`` (the tutorial's commit)
    :param builder_options: ``docker_conn_id`` / ``gcp_conn_id`` for registry credentials, ``docker_url``
    :param cache_dir: the content cache (default ``$TFSERVING_DEPLOY_CACHE``)
    :param warmup_requests: bake ``<version>/assets.extra/tf_serving_warmup_requests`` into the image
        (unless the model has one): TF Serving replays it before the version is AVAILABLE
    :param warmup_image_path: the image the warmup request sends (validation's); None: no warmup file
    """

    template_fields: Sequence[str] = (
        "model",
        "model_url",
        "model_name",
        "base_image",
        "image_repository",
        "builder_name",
        "builder_options",
        "warmup_requests",
    )

    def __init__(
        self,
        *,
        model,
        model_name: str,
        base_image: str,
        image_repository: str,
        builder_name: str = "docker",
        builder_options: dict | None = None,
        cache_dir: str | None = None,
        warmup_requests: bool | str = True,
        warmup_image_path: str | None = None,
        model_url: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.model, self.model_url, self.model_name, self.base_image = model, model_url, model_name, base_image
        self.image_repository, self.builder_name = image_repository, builder_name
        self.builder_options, self.cache_dir = builder_options or {}, cache_dir
        self.warmup_requests, self.warmup_image_path = warmup_requests, warmup_image_path
        self._image: str | None = None

    def execute(self, context) -> str:
        from tfserving_deploy.image.docker_builder import ModelFiles
        from tfserving_deploy.image.warmup import warmup_requests

        source_url = self.model_source(context)[0] if self.model_url else None
        with explained_failures():
            base_image = allowed("serving_base_image", self.base_image)  # before anything is pulled
            fetched = local_model(self.model, self.cache_dir, source_url)
            warmup = None
            if flag(self.warmup_requests, default=True) and self.warmup_image_path:
                jpeg = Path(self.warmup_image_path).read_bytes()
                warmup = warmup_requests(self.model_name, fetched.signature, jpeg)
            files = ModelFiles(
                name=self.model_name,
                version=fetched.version,
                sha256=fetched.sha256,
                path=fetched.model_dir,
                warmup=warmup,
            )
            builder = self.builder_for(self.image_repository)
            self._image = builder.build(files, base_image=base_image, repository=self.image_repository)
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
    :param builder_name: the builder that built ``image``
    :param builder_options: ``docker_conn_id`` / ``gcp_conn_id`` for registry credentials, ``docker_url``
    """

    template_fields: Sequence[str] = ("image", "model", "builder_name", "builder_options")

    def __init__(
        self, *, image: str, model, builder_name: str = "docker", builder_options: dict | None = None, **kwargs
    ):
        super().__init__(**kwargs)
        self.image, self.model, self.builder_name = image, model, builder_name
        self.builder_options = builder_options or {}
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
