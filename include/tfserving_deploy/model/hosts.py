"""Which machines a model download may connect to.

Invariant: a download connects only to an address this module checked, and an address passes
only if (1) it is not a cloud metadata address, and (2) every IPv4 or IPv6 address it stands for
is public or inside a CIDR of the deployment's model-hosts allowlist. "Stands for": an IPv6
address that embeds an IPv4 one (IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible ``::a.b.c.d``,
SIIT ``::ffff:0:a.b.c.d``, NAT64 ``64:ff9b::a.b.c.d``, 6to4 ``2002:AABB:CCDD::``, Teredo) reaches
that IPv4 address too, so both are checked; ``64:ff9b:1::/48`` (local NAT64, where the IPv4 part
may sit anywhere) is never public. A host name is resolved once, here; the caller connects to
the answers (``Destination.addresses``), so a second, different DNS answer is never used.

The allowlist (``TFSERVING_DEPLOY_MODEL_HOSTS``) restricts names too: when set, the host must
match one of its names (``models.example.com``, ``*.example.com``, ``*`` for any) or resolve
into one of its CIDRs.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..errors import ModelFetchError, UnsafeModelUrl

MODEL_HOSTS_ENV = "TFSERVING_DEPLOY_MODEL_HOSTS"  # e.g. "models.example.com,*.corp.example,10.20.0.0/16"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Cloud metadata servers hand out the worker's own credentials: never a model host, allowlisted or not.
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "metadata.goog", "instance-data"})
METADATA_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.0.0/16",  # link-local: AWS, GCP, Azure, OpenStack metadata at 169.254.169.254
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::254/128",  # AWS metadata over IPv6
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "168.63.129.16/32",  # Azure WireServer (a public address, hence listed)
    )
)
# IANA's special-purpose registries: what is not globally reachable (or reaches a local network).
NOT_PUBLIC: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "64:ff9b:1::/48",  # local NAT64: where the IPv4 part sits is the operator's choice
        "2001::/23",  # IETF protocol assignments, Teredo among them
        "2001:db8::/32",
        "3fff::/20",
        "5f00::/16",
    )
)
_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")
_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")


def address_forms(ip: IPAddress) -> tuple[IPAddress, ...]:
    """The addresses a connection to ``ip`` reaches: the IPv4 address an IPv6 spelling stands for
    (IPv4-mapped, -compatible, SIIT, NAT64), or ``ip`` itself plus the IPv4 addresses a 6to4 or
    Teredo tunnel carries its packets to."""
    if isinstance(ip, ipaddress.IPv4Address):
        return (ip,)
    if ip in _MAPPED or ip in _TRANSLATED or ip in _NAT64 or (ip in _COMPATIBLE and int(ip) > 1):
        return (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF),)  # :: and ::1 are IPv6's own
    if ip.sixtofour is not None:
        return (ip, ip.sixtofour)
    if ip.teredo is not None:
        return (ip, *ip.teredo)  # the Teredo server and the (de-obfuscated) client
    return (ip,)


def _is_public(ip: IPAddress) -> bool:
    """Globally reachable unicast: IPv4 outside ``NOT_PUBLIC``; IPv6 inside 2000::/3 (global
    unicast) and outside ``NOT_PUBLIC``. Our own table: Python's ``is_global`` differs by version."""
    if isinstance(ip, ipaddress.IPv6Address) and ip not in _GLOBAL_UNICAST_V6:
        return False
    return not any(ip in network for network in NOT_PUBLIC)


def is_metadata(ip: IPAddress) -> bool:
    """``ip`` reaches a metadata server, in any form; for local NAT64, wherever RFC 6052 may have
    put the IPv4 address."""
    forms = {ip, *address_forms(ip), *_local_nat64_candidates(ip)}
    return any(form in network for form in forms for network in METADATA_NETWORKS)


def _local_nat64_candidates(ip: IPAddress) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 address a local NAT64 address (``64:ff9b:1::/48``) carries, for each prefix length
    (/48, /56, /64, /96) the operator may have chosen; bits 64-71 are RFC 6052's reserved octet."""
    if ip not in _LOCAL_NAT64:
        return ()
    value = int(ip)

    def bits(start: int, end: int) -> int:
        return (value >> (128 - end)) & ((1 << (end - start)) - 1)

    return tuple(
        ipaddress.IPv4Address(v4)
        for v4 in (bits(48, 64) << 16 | bits(72, 88), bits(56, 64) << 24 | bits(72, 96), bits(72, 104), bits(96, 128))
    )


@dataclass(frozen=True)
class Destination:
    """A checked host: the URL's host name and port, and the addresses a connection may use."""

    host: str
    port: int
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class ModelHosts:
    """The deployment's model-hosts allowlist: host names, ``*.suffix`` patterns, ``*``, CIDRs.
    Empty: any host whose addresses are all public."""

    names: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, spec: str) -> ModelHosts:
        names: list[str] = []
        networks: list[IPNetwork] = []
        for entry in (e.strip().lower().rstrip(".") for e in spec.split(",")):
            if not entry:
                continue
            if "/" in entry or _is_ip(entry):
                try:
                    networks.append(ipaddress.ip_network(entry, strict=False))
                except ValueError:
                    raise ModelFetchError(
                        f"{MODEL_HOSTS_ENV}: {entry!r} is not a CIDR (e.g. 10.20.0.0/16, 2001:db8::/32); "
                        "fix the setting"
                    ) from None
            elif entry == "*" or _is_hostname(entry.removeprefix("*.")):
                names.append(entry)
            else:
                raise ModelFetchError(
                    f"{MODEL_HOSTS_ENV}: {entry!r} is neither a host name, a *.suffix pattern, * nor a CIDR; "
                    "fix the setting"
                )
        return cls(tuple(names), tuple(networks))

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> ModelHosts:
        environ = os.environ if environ is None else environ
        return cls.parse(environ.get(MODEL_HOSTS_ENV, ""))

    def __str__(self) -> str:
        return ",".join([*self.names, *(str(n) for n in self.networks)]) or "(empty: any public host)"

    def names_host(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return any(
            pattern == "*" or host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:]))
            for pattern in self.names
        )

    def covers(self, ip: IPAddress) -> bool:
        return any(ip in network for network in self.networks)

    def permits(self, ip: IPAddress) -> bool:
        """The invariant's address half: not metadata, and each form public or allowlisted."""
        return not is_metadata(ip) and all(self.covers(form) or _is_public(form) for form in address_forms(ip))

    def check(self, host: str, port: int, safe_url: str) -> Destination:
        """Resolve ``host`` once and return the addresses a connection may use, or raise:
        UnsafeModelUrl (Permanent) when the host or an address is refused, ModelFetchError
        (retried) when the resolver fails. Any refused address refuses the host."""
        self._check_name(host, safe_url)
        addresses = _resolve(host.lower().rstrip("."), port, safe_url)
        for ip in addresses:
            if is_metadata(ip):
                raise UnsafeModelUrl(
                    f"model URL {safe_url!r}: {host} is at {_describe(ip)}, a link-local or metadata address; refused"
                )
        if self.networks and not self.names_host(host) and not all(self.covers(ip) for ip in addresses):
            raise self._not_listed(host, safe_url)
        for ip in addresses:
            if not self.permits(ip):
                raise UnsafeModelUrl(
                    f"model URL {safe_url!r}: {host} is at {_describe(ip)}, not a public address, and no CIDR in "
                    f"{MODEL_HOSTS_ENV}={self} covers it; serve the model from a public host, or have the "
                    "Airflow admin add the address's network to that setting"
                )
        return Destination(host, port, tuple(dict.fromkeys(str(ip) for ip in addresses)))

    def check_offline(self, host: str, port: int, safe_url: str) -> None:
        """What ``check`` refuses without DNS: metadata names, names off the allowlist (when it
        has no CIDR a name could resolve into), and numeric hosts in any spelling."""
        self._check_name(host, safe_url)
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
        except (OSError, UnicodeError):
            return  # a name: checked when it is resolved, right before the connection
        self.check(host, port, safe_url)

    def _check_name(self, host: str, safe_url: str) -> None:
        bare = host.lower().rstrip(".")
        if bare in METADATA_HOSTS:
            raise UnsafeModelUrl(f"model URL {safe_url!r} points at a cloud metadata server ({host}); refused")
        if self.names and not self.networks and not self.names_host(bare):
            raise self._not_listed(host, safe_url)

    def _not_listed(self, host: str, safe_url: str) -> UnsafeModelUrl:
        return UnsafeModelUrl(
            f"model URL {safe_url!r}: host {host} is not in this deployment's model hosts "
            f"({MODEL_HOSTS_ENV}={self}); fetch the model from one of those, or have the Airflow admin "
            "add the host to that setting"
        )


def _resolve(host: str, port: int, safe_url: str) -> list[IPAddress]:
    """Every address ``host`` resolves to; a failing or empty answer is an error, never a pass."""
    try:
        answers: Iterable = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in answers]
    except (OSError, UnicodeError, ValueError) as exc:
        raise ModelFetchError(
            f"model URL {safe_url!r}: could not resolve {host}: {type(exc).__name__}: {exc}; check the host "
            "name and the worker's DNS (retried)"
        ) from None
    if not addresses:
        raise ModelFetchError(f"model URL {safe_url!r}: {host} resolves to no address; check the host name (retried)")
    return addresses


def _describe(ip: IPAddress) -> str:
    """``ip``, and the IPv4 addresses it stands for: ``::ffff:a9fe:a9fe (169.254.169.254)``."""
    others = [str(form) for form in address_forms(ip) if form != ip]
    return f"{ip} ({', '.join(others)})" if others else str(ip)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _is_hostname(text: str) -> bool:
    labels = text.split(".")
    return all(0 < len(label) <= 63 and label.replace("-", "").replace("_", "").isalnum() for label in labels)
