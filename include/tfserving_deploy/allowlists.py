"""Which identities and destinations a run may use: chosen by whoever runs Airflow, never by a trigger.

A trigger form's connection ids say whose credentials act (a Google service account, a cluster
identity, a registry login), the base image says what gets copied into our registry, and the
manifest directory says where the worker writes. Anyone allowed to trigger the DAG would otherwise
choose all three. So each comes from a list the deployment sets in the environment
(``TFSERVING_DEPLOY_ALLOWED_<WHAT>``, comma-separated); unset, the list holds only the form's
default. The DAG offers exactly these values (an ``enum``); the operators check again when they
run, since a run's conf may have been validated against an older DAG (a clear or backfill after
the list shrank).

Invariant: ``Allowlist.check`` returns a value of the list (for directories: the resolved path of
a listed directory), or ``None`` for an optional setting left unset; anything else raises
``InvalidParameter`` naming the param, the value, the list and the variable to change.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import InvalidParameter

PREFIX = "TFSERVING_DEPLOY_ALLOWED_"
ENV = {  # param -> the variable that lists its allowed values
    "gcp_conn_id": PREFIX + "GCP_CONN_IDS",
    "kubernetes_conn_id": PREFIX + "KUBERNETES_CONN_IDS",
    "registry_conn_id": PREFIX + "REGISTRY_CONN_IDS",
    "serving_base_image": PREFIX + "BASE_IMAGES",
    "manifest_dir": PREFIX + "MANIFEST_DIRS",
}
OPTIONAL = frozenset({"registry_conn_id", "manifest_dir"})  # unset is always allowed: anonymous / not written
DIRECTORIES = frozenset({"manifest_dir"})
SHOWN = 200  # characters of a refused value that an error message quotes


@dataclass(frozen=True)
class Allowlist:
    """The values ``param`` may take; ``env`` is the variable that sets them."""

    param: str
    env: str
    values: tuple[str, ...]
    default: str | None = None  # the form's default, on the list

    @classmethod
    def from_environment(cls, param: str, default: str | None, environ: Mapping[str, str] | None = None) -> Allowlist:
        """The list ``ENV[param]`` names, or ``(default,)`` when it is unset or blank. The form's
        ``default`` must be on a list that is set: a form whose default fails would be a trap."""
        environ = os.environ if environ is None else environ
        env = ENV[param]
        listed = tuple(v.strip() for v in environ.get(env, "").split(",") if v.strip())
        values = listed or ((default,) if default else ())
        if param in DIRECTORIES:
            relative = [v for v in values if not os.path.isabs(v)]
            if relative:
                raise InvalidParameter(f"{env} lists {relative}: {param} allowlist entries must be absolute paths")
        allowlist = cls(param, env, values, default)
        if default and listed and not allowlist.allows(default):
            raise InvalidParameter(
                f"the form's default {param} {default!r} is not in {env} ({', '.join(listed)}); add it there, "
                f"or set TFSERVING_RESNET_{param.upper()} to one of the listed values"
            )
        return allowlist

    @property
    def choices(self) -> list[str | None]:
        """What the form offers: unset first for optional settings, then the list."""
        return [None, *self.values] if self.param in OPTIONAL else list(self.values)

    def allows(self, value: str | None) -> bool:
        try:
            self.check(value)
        except InvalidParameter:
            return False
        return True

    def check(self, value: str | None) -> str | None:
        """``value`` if the list allows it (a directory: its resolved path); else InvalidParameter."""
        if value is None and self.param in OPTIONAL:
            return None
        if self.param in DIRECTORIES:
            resolved = _resolved_directory(value)
            if resolved is not None and resolved in {os.path.realpath(entry) for entry in self.values}:
                return resolved
        elif value in self.values:
            return value
        raise InvalidParameter(self._refusal(value))

    def _refusal(self, value) -> str:
        shown = repr(value if not isinstance(value, str) or len(value) <= SHOWN else value[:SHOWN] + "...")
        allowed = ", ".join(self.values) or "none"
        also = " (or leave it unset)" if self.param in OPTIONAL else ""
        what = "resolves to no allowed directory" if self.param in DIRECTORIES else "is not allowed here"
        return (
            f"{self.param} {shown} {what}; allowed: {allowed}{also}. Choose one of them, or have the "
            f"Airflow admin add it to {self.env} on the workers and the DAG processor"
        )


def _resolved_directory(value) -> str | None:
    """The real path of an absolute directory path (``..`` and symlinks followed), else None."""
    if not isinstance(value, str) or not value or "\x00" in value or not os.path.isabs(value):
        return None
    return os.path.realpath(value)
