"""Size the serving replicas from what the candidate measured: memory and the startup budget.

``start_candidate`` measures, on the one replica it starts anyway, how long the model took to
load (the container's start to the model first AVAILABLE) and the container's peak memory (its
own cgroup's high-water mark, read inside it). ``choose`` turns that into the Deployment's
resources and probe timing; the rule lives here and only here:

* memory request = peak x ``REQUEST_FACTOR`` (the steady state plus room for inference), at
  least ``MIN_REQUEST_MIB``;
* memory limit = 2 x peak + ``SWAP_HEADROOM`` (TF Serving loads a new version beside the old
  one, so a version swap briefly holds two copies), never below the request;
* startup budget (liveness ``initialDelaySeconds``) and the deploy's per-wave ready timeout =
  the load time x ``STARTUP_FACTOR`` / ``READY_FACTOR``, with floors: a busier node or a cold
  page cache loads slower than the candidate did, and a wave's pods may first pull the image
  (so the ready timeout never goes below today's default: sizing only raises it, for big models).

Reading the peak inside a pod takes ``pods/exec``, an optional extra of the deploying identity's
Role (``targets/rbac.py``): without it, memory keeps the defaults. No other reading is open to a
namespaced Role (the kubelet's summary and cAdvisor are ``nodes/proxy``, cluster-wide; TF Serving's
own metrics hold no memory figure).

The cgroup peak counts the page cache (model files, the server's libraries) as well: an upper
bound of what the process needs, so the limit errs on the safe side. Anything not measured
keeps today's default, and the reasons say so; never an invented number. An explicit
``resources`` param wins entirely.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime

MIB = 1024 * 1024
REQUEST_FACTOR = 1.25
MIN_REQUEST_MIB = 128
SWAP_COPIES = 2
SWAP_HEADROOM = 0.25  # on top of two copies
STARTUP_FACTOR = 3.0
MIN_STARTUP_SECONDS = 30
READY_FACTOR = 3.0
MIN_READY_SECONDS = 180.0  # a wave also pulls the image on nodes that lack it, which the load time does not show

# What the probes and waits use when nothing was measured (the values before sizing existed).
DEFAULT_RESOURCES = {
    "requests": {"cpu": "500m", "memory": "1Gi"},
    "limits": {"memory": "2Gi"},  # two copies of the model during a reload
}
DEFAULT_STARTUP_SECONDS = 120  # the real server opens its ports only after the first load
DEFAULT_READY_SECONDS = 180.0

# The container's own memory high-water mark, read inside it: cgroup v2 (kernel >= 5.19), else v1.
CGROUP_PEAK_FILES = ("/sys/fs/cgroup/memory.peak", "/sys/fs/cgroup/memory/memory.max_usage_in_bytes")
PEAK_COMMAND = ["sh", "-c", f"cat {CGROUP_PEAK_FILES[0]} 2>/dev/null || cat {CGROUP_PEAK_FILES[1]}"]


@dataclass(frozen=True)
class Measurement:
    """What the candidate showed; None where it could not be read, with the reason in ``notes``."""

    load_seconds: float | None = None
    peak_bytes: int | None = None
    notes: tuple[str, ...] = ()
    where: str = "the candidate"


@dataclass(frozen=True)
class Sizing:
    """What the serving replicas get, and why (for the XCom, the deploy log and its result)."""

    resources: dict
    startup_seconds: int
    ready_timeout: float
    reasons: list[str] = field(default_factory=list)
    measured: dict = field(default_factory=dict)
    explicit_resources: bool = False  # the resources param, not the measurement

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: dict | None) -> Sizing | None:
        if not value:
            return None
        return cls(
            resources=dict(value["resources"]),
            startup_seconds=int(value["startup_seconds"]),
            ready_timeout=float(value["ready_timeout"]),
            reasons=list(value.get("reasons") or []),
            measured=dict(value.get("measured") or {}),
            explicit_resources=bool(value.get("explicit_resources")),
        )

    def memory_limit_bytes(self) -> int | None:
        """The memory limit in bytes (for Docker's ``mem_limit``); None when there is none."""
        limit = (self.resources.get("limits") or {}).get("memory")
        return None if limit is None else quantity_bytes(str(limit))


def parse_peak(output: str) -> int:
    """The byte count ``PEAK_COMMAND`` printed (Docker's exec interleaves stderr, so any line);
    ValueError for anything else."""
    numbers = [line.strip() for line in output.splitlines() if line.strip().isdigit()]
    if not numbers:
        raise ValueError(f"no byte count in {output.strip()[-200:]!r}")
    value = int(numbers[-1])
    if value <= 0:
        raise ValueError(f"{value} bytes")
    return value


def seconds_between(started_at: str, available_at: str | datetime) -> float:
    """Seconds from an RFC 3339 start (Docker's ``State.StartedAt``, a pod's ``startedAt``) to ``available_at``."""
    end = available_at if isinstance(available_at, datetime) else datetime.fromisoformat(available_at)
    seconds = (end - datetime.fromisoformat(started_at)).total_seconds()
    if seconds < 0:
        raise ValueError(f"the model was AVAILABLE ({end.isoformat()}) before the container started ({started_at})")
    return seconds


def choose(measurement: Measurement, *, explicit_resources: dict | None = None) -> Sizing:
    """The replicas' resources and startup budget from ``measurement`` (see the module doc)."""
    reasons = list(measurement.notes)
    measured = {"load_seconds": measurement.load_seconds, "peak_mib": _mib(measurement.peak_bytes)}
    if explicit_resources is not None:
        resources = copy.deepcopy(explicit_resources)
        reasons.append(f"resources given explicitly (the resources param): {resources}")
        reasons.extend(_explicit_limit_warning(resources, measurement.peak_bytes))
    elif measurement.peak_bytes is None:
        resources = copy.deepcopy(DEFAULT_RESOURCES)
        reasons.append(f"memory: peak not measured, so the defaults {_memory(resources)}")
    else:
        resources = memory_resources(measurement.peak_bytes)
        reasons.append(
            f"memory: peak {_mib(measurement.peak_bytes)} MiB measured on {measurement.where}; request "
            f"{resources['requests']['memory']} = {REQUEST_FACTOR:g} x peak (at least {MIN_REQUEST_MIB}Mi), "
            f"limit {resources['limits']['memory']} = {SWAP_COPIES} x peak + {SWAP_HEADROOM:.0%} for a "
            "version swap (two copies in memory)"
        )
    if measurement.load_seconds is None:
        startup, ready = DEFAULT_STARTUP_SECONDS, DEFAULT_READY_SECONDS
        reasons.append(
            f"startup: load time not measured, so the defaults (liveness after {startup}s, {ready:g}s per wave)"
        )
    else:
        startup, ready = startup_budget(measurement.load_seconds)
        reasons.append(
            f"startup: the model loaded in {measurement.load_seconds:.1f}s on {measurement.where}; liveness "
            f"after {startup}s = {STARTUP_FACTOR:g} x load (at least {MIN_STARTUP_SECONDS}s), {ready:g}s per "
            f"wave to become ready = {READY_FACTOR:g} x load (at least {MIN_READY_SECONDS:g}s)"
        )
    return Sizing(resources, startup, ready, reasons, measured, explicit_resources is not None)


def memory_resources(peak_bytes: int) -> dict:
    """Requests and limits (rounded up to Mi) for a server whose memory peaked at ``peak_bytes``."""
    request = max(MIN_REQUEST_MIB, math.ceil(peak_bytes * REQUEST_FACTOR / MIB))
    limit = max(request, math.ceil(SWAP_COPIES * peak_bytes * (1 + SWAP_HEADROOM) / MIB))
    return {
        "requests": {"cpu": DEFAULT_RESOURCES["requests"]["cpu"], "memory": f"{request}Mi"},
        "limits": {"memory": f"{limit}Mi"},
    }


def startup_budget(load_seconds: float) -> tuple[int, float]:
    """(liveness initial delay, per-wave ready timeout) in seconds for a model that loads in ``load_seconds``."""
    startup = max(MIN_STARTUP_SECONDS, math.ceil(load_seconds * STARTUP_FACTOR))
    ready = max(MIN_READY_SECONDS, float(math.ceil(load_seconds * READY_FACTOR)))
    return startup, ready


_UNITS = {"": 1, "k": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4, "Ki": 1024, "Mi": MIB, "Gi": 1024**3}
_QUANTITY = re.compile(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|k|M|G|T)?")


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (``1536Mi``, ``2Gi``, ``1G``, ``1048576``) in bytes."""
    match = _QUANTITY.fullmatch(quantity.strip())
    if match is None:
        raise ValueError(f"memory quantity {quantity!r} is not like 512Mi, 2Gi or 1G")
    return math.ceil(float(match.group(1)) * _UNITS[match.group(2) or ""])


def _explicit_limit_warning(resources: dict, peak_bytes: int | None) -> list[str]:
    """A warning when an explicit memory limit is below what the measurement says a version swap needs."""
    limit = (resources.get("limits") or {}).get("memory")
    if limit is None or peak_bytes is None:
        return []
    needed = memory_resources(peak_bytes)["limits"]["memory"]
    try:
        short = quantity_bytes(str(limit)) < quantity_bytes(needed)
    except ValueError:
        return [f"warning: the explicit memory limit {limit!r} is not a quantity this check reads"]
    if not short:
        return []
    return [
        f"warning: the explicit memory limit {limit} is below {needed} (2 x the measured peak of "
        f"{_mib(peak_bytes)} MiB + {SWAP_HEADROOM:.0%}): a version swap may be OOM-killed; raise it or leave "
        "resources empty to size from the measurement"
    ]


def _mib(value: int | None) -> int | None:
    return None if value is None else round(value / MIB)


def _memory(resources: dict) -> str:
    request = (resources.get("requests") or {}).get("memory")
    limit = (resources.get("limits") or {}).get("memory")
    return f"request {request}, limit {limit}"
