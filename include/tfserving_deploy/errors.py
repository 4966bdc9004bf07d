"""One exception family, so callers (and operators) can tell pipeline faults from bugs.

Every message names the thing, the offending value and what to do about it.
"""


class DeployError(Exception):
    """Base class: a fault of the inputs or the environment, explained for a human."""


class ModelFetchError(DeployError):
    """The model URL could not be downloaded (bad URL, HTTP error, too large, timeout)."""


class ChecksumMismatch(ModelFetchError):
    """The downloaded bytes do not have the sha256 the caller pinned."""


class UnsafeArchiveError(DeployError):
    """The tarball holds a member that would escape the extraction directory, or a device."""


class InvalidModelError(DeployError):
    """The artifact is not a servable SavedModel (no tarball, no saved_model.pb, no signature)."""


class ImageBuildError(DeployError):
    """The serving image could not be built (base image missing, engine error)."""


class RegistryError(DeployError):
    """The registry refused or could not be reached."""


class TargetError(DeployError):
    """The deployment target (Docker engine, cluster) is unreachable or refused the change."""


class RolloutError(TargetError):
    """The new revision never became healthy; the previous one keeps serving."""


class ValidationError(DeployError):
    """The deployed model answered, but not what the artifact says it should."""
