"""Daemonless, reproducible serving images over the registry HTTP API (see ``builder``)."""

from .builder import OciImageBuilder
from .registry import RegistryAuth, RegistryClient

__all__ = ["OciImageBuilder", "RegistryAuth", "RegistryClient"]
