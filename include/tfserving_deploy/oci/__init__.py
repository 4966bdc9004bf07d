"""Daemonless, reproducible serving images over the registry HTTP API (see ``builder``)."""

from .builder import OciImageBuilder, default_cache_dir
from .registry import RegistryAuth, RegistryClient, parse_reference

__all__ = ["OciImageBuilder", "RegistryAuth", "RegistryClient", "default_cache_dir", "parse_reference"]
