"""How the serving image is built and where it goes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..defaults import SERVING_BASE_IMAGE
from ..settings import Settings, setting
from .references import form_pattern

ImageBuilder = Literal["oci", "docker"]


@dataclass(frozen=True)
class ImageSettings(Settings):
    image_repository: str = setting(
        "127.0.0.1:5000/resnet-serving",
        "Where the serving image is pushed, host[:port]/path in lower case without tag or digest, e.g. "
        "REGION-docker.pkg.dev/PROJECT/REPO/resnet. Credentials go only to the registry this host names.",
        pattern=form_pattern(tag_and_digest=False),  # the reference parser's grammar, no tag or digest
        form_default=True,
    )
    serving_base_image: str = setting(
        SERVING_BASE_IMAGE,
        "TF Serving image the model is baked into (pin a tag or digest); the admin's list.",
        pattern=form_pattern(tag_and_digest=True),  # the reference parser's grammar
        allowlisted=True,
    )
    image_builder: ImageBuilder = setting(
        "oci",
        "'oci': adds the model layer through the registry API, no Docker engine, same inputs give the same "
        "digest (the base image must be in a registry). 'docker': the tutorial's run/cp/commit/push.",
    )
    warmup_requests: bool = setting(
        True,
        "Bake the validation request (the cat photo) into the image as the model's "
        "assets.extra/tf_serving_warmup_requests, unless the model has one: TF Serving replays it before "
        "reporting the model AVAILABLE, so the first client request is not the slow one.",
    )
    registry_conn_id: str | None = setting(
        None,
        "Optional docker connection with the registry's login/password (the admin's list). Without it, "
        "Artifact Registry / gcr.io repositories use the Google connection's token, others are pushed "
        "anonymously.",
        allowlisted=True,
    )
    docker_url: str | None = None  # the Docker engine (builds with 'docker', the local target); None: the socket
