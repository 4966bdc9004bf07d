"""Stage 1, the model: a tarball fetched from an allowed URL, pinned by sha256, unpacked without
leaving its root, its SavedModel signature read without TensorFlow (``artifact`` ties it together).
"""

from typing import Protocol


class Log(Protocol):
    """What the model stage logs through: a ``logging.Logger``, or an Airflow task's ``self.log``
    (a structlog logger, not a ``logging.Logger``)."""

    def info(self, msg: str, /, *args: object) -> object: ...

    def warning(self, msg: str, /, *args: object) -> object: ...
