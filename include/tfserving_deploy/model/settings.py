"""Which model a run ships: the tarball, its pin, the name clients ask for."""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import Settings, setting

TUTORIAL_MODEL_URL = (
    "http://download.tensorflow.org/models/official/20181001_resnet/savedmodels/"
    "resnet_v2_fp32_savedmodel_NHWC_jpg.tar.gz"
)
MODEL_NAME_PATTERN = "^[a-z0-9][a-z0-9_-]{0,62}$"


@dataclass(frozen=True)
class ModelSettings(Settings):
    model_url: str = setting(
        TUTORIAL_MODEL_URL,
        "SavedModel tarball (http(s):// or file://) in the tutorial layout <top>/<version>/ or <version>/. "
        "May use the run's date for backfills, e.g. https://models.example.com/{{ ds_nodash }}/resnet.tar.gz",
        min_length=1,
        form_default=True,
    )
    model_sha256: str | None = setting(
        None,
        "Optional sha256 of the tarball; the run fails if the download differs.",
        pattern="^[0-9a-fA-F]{64}$",
    )
    model_name: str = setting(
        "resnet",
        "Name clients ask for (model_spec.name); becomes MODEL_NAME in the image.",
        pattern=MODEL_NAME_PATTERN,
        form_default=True,
    )
