"""One exception family, so callers (and operators) can tell pipeline faults from bugs, and faults
a retry may fix from those it cannot (``Permanent``).

Every message names the thing, the offending value and what to do about it.
"""


class DeployError(Exception):
    """Base class: a fault of the inputs or the environment, explained for a human."""


class Permanent(DeployError):
    """A fault no retry can fix (wrong input, refused access, a broken model): fail at once."""


class ModelFetchError(DeployError):
    """The model URL could not be downloaded (HTTP error, too large, timeout): maybe transient."""


class ModelRefused(ModelFetchError, Permanent):
    """The server says this URL will not give the model: not there (HTTP 404, 410) or not for us (401, 403)."""


class UnsafeModelUrl(ModelFetchError, Permanent):
    """The model URL (or a redirect, or a template in it) is not allowed by the URL policy."""


class ModelTooLarge(ModelFetchError, Permanent):
    """The tarball is larger than the download cap: another try would download it again, as large."""


class ChecksumMismatch(ModelFetchError, Permanent):
    """The downloaded bytes do not have the sha256 the caller pinned."""


class UnsafeArchiveError(Permanent):
    """The tarball holds a member that would escape the extraction directory, a device, or too much."""


class InvalidModelError(Permanent):
    """The artifact is not a servable SavedModel (no tarball, no saved_model.pb, no signature we can feed)."""


class InvalidParameter(Permanent):
    """A setting that cannot work as given (e.g. a model name that cannot become a Kubernetes name)."""


class ImageBuildError(DeployError):
    """The serving image could not be built (engine error, registry hiccup while reading the base)."""


class BaseImageNotFound(ImageBuildError, Permanent):
    """``serving_base_image`` is not there: its registry has no such manifest (HTTP 404), or the
    engine's pull says it does not exist. Another try finds it missing again."""


class RegistryError(DeployError):
    """The registry refused or could not be reached."""


class RegistryDenied(RegistryError, Permanent):
    """The registry refused the credentials (HTTP 401) or the permission (403)."""


class TargetError(DeployError):
    """The deployment target (Docker engine, cluster) is unreachable or refused the change."""


class AccessDenied(TargetError, Permanent):
    """The target refused the identity: RBAC denial, rejected credentials (HTTP 401/403)."""


class RolloutError(TargetError, Permanent):
    """The new revision never became healthy; the previous one keeps serving."""


class ValidationError(Permanent):
    """The deployed model answered, but not what the artifact says it should."""


class IncompatibleSignature(ValidationError):
    """The candidate's signature breaks clients of the model that serves now."""
