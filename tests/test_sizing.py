"""The sizing rule (``tfserving_deploy.serving.sizing``): from the candidate's measurement to the replicas'
memory and startup budget; pure functions, no engine or cluster."""

from __future__ import annotations

import pytest

from tfserving_deploy.serving.sizing import (
    DEFAULT_READY_SECONDS,
    DEFAULT_RESOURCES,
    DEFAULT_STARTUP_SECONDS,
    MIB,
    Measurement,
    Sizing,
    choose,
    parse_peak,
    quantity_bytes,
    seconds_between,
)
from tfserving_deploy.targets.kubernetes.manifests import deployment_manifest

IMAGE = "127.0.0.1:5000/sizing@sha256:" + "a" * 64


def test_memory_covers_two_copies_for_a_version_swap():
    sizing = choose(Measurement(load_seconds=12.0, peak_bytes=612 * MIB))
    # request 1.25 x 612 = 765; limit 2 x 612 x 1.25 = 1530; Mi, rounded up
    assert sizing.resources == {"requests": {"cpu": "500m", "memory": "765Mi"}, "limits": {"memory": "1530Mi"}}
    assert sizing.memory_limit_bytes() == 1530 * MIB
    assert any("peak 612 MiB measured on the candidate" in r and "version swap" in r for r in sizing.reasons)
    assert sizing.measured == {"load_seconds": 12.0, "peak_mib": 612}


def test_memory_rounds_up_to_whole_mebibytes_and_has_a_floor():
    odd = choose(Measurement(peak_bytes=100 * MIB + 1)).resources
    assert odd["requests"]["memory"] == "128Mi"  # 125 Mi and a byte is under the floor
    assert odd["limits"]["memory"] == "251Mi"  # 250 Mi and 2.5 bytes, rounded up
    tiny = choose(Measurement(peak_bytes=10 * MIB)).resources
    assert tiny["requests"]["memory"] == "128Mi" and tiny["limits"]["memory"] == "128Mi"  # never under the request


def test_startup_budget_is_a_multiple_of_the_load_time_with_floors():
    slow = choose(Measurement(load_seconds=95.2, peak_bytes=MIB * 1024))
    assert (slow.startup_seconds, slow.ready_timeout) == (286, 286.0)  # 3 x 95.2, rounded up
    assert choose(Measurement(load_seconds=61.0)).ready_timeout == 183.0
    fast = choose(Measurement(load_seconds=2.0, peak_bytes=MIB * 1024))
    assert (fast.startup_seconds, fast.ready_timeout) == (30, 180.0)  # the floors
    assert any("loaded in 2.0s" in r for r in fast.reasons)


def test_what_was_not_measured_keeps_the_defaults_and_says_why():
    sizing = choose(Measurement(notes=("peak memory: could not read it inside pod x (HTTP 403)",)))
    assert sizing.resources == DEFAULT_RESOURCES
    assert (sizing.startup_seconds, sizing.ready_timeout) == (DEFAULT_STARTUP_SECONDS, DEFAULT_READY_SECONDS)
    assert sizing.reasons[0] == "peak memory: could not read it inside pod x (HTTP 403)"
    assert any("peak not measured, so the defaults request 1Gi, limit 2Gi" in r for r in sizing.reasons)
    assert any("load time not measured" in r for r in sizing.reasons)
    assert sizing.measured == {"load_seconds": None, "peak_mib": None}


def test_explicit_resources_win_entirely():
    explicit = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "1536Mi"}}
    sizing = choose(Measurement(load_seconds=40.0, peak_bytes=900 * MIB), explicit_resources=explicit)
    assert sizing.resources == explicit and sizing.resources is not explicit
    assert sizing.startup_seconds == 120  # timing still comes from the measurement
    assert any("resources given explicitly" in r for r in sizing.reasons)
    assert sizing.measured["peak_mib"] == 900  # still reported


def test_an_explicit_limit_below_a_version_swap_is_warned_about():
    measured = Measurement(load_seconds=10.0, peak_bytes=900 * MIB)
    tight = choose(measured, explicit_resources={"limits": {"memory": "1Gi"}})
    assert tight.resources == {"limits": {"memory": "1Gi"}}  # still wins
    assert tight.reasons[1].startswith("warning: the explicit memory limit 1Gi is below 2250Mi (2 x the measured")
    roomy = choose(measured, explicit_resources={"limits": {"memory": "3Gi"}})
    assert not any(r.startswith("warning") for r in roomy.reasons)


def test_sizing_travels_through_xcom_as_a_dict():
    sizing = choose(Measurement(load_seconds=5.5, peak_bytes=700 * MIB))
    assert Sizing.from_dict(sizing.to_dict()) == sizing
    assert Sizing.from_dict(None) is None


def test_the_deployment_carries_the_sized_memory_and_liveness_delay():
    sizing = choose(Measurement(load_seconds=50.0, peak_bytes=612 * MIB))
    manifest = deployment_manifest(
        IMAGE,
        model_name="sizing",
        version=1,
        replicas=2,
        namespace="ns",
        resources=sizing.resources,
        startup_seconds=sizing.startup_seconds,
    )
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"] == sizing.resources
    assert container["livenessProbe"]["initialDelaySeconds"] == 150


@pytest.mark.parametrize(
    "output,peak",
    [
        ("640311296\n", 640311296),
        ("cat: /sys/fs/cgroup/memory.peak: No such file\n4349952\n", 4349952),
        ("4349952\ncat: /sys/fs/cgroup/memory.peak: No such file\n", 4349952),  # stderr after stdout
    ],
)
def test_peak_is_read_from_either_cgroup_file(output, peak):
    assert parse_peak(output) == peak


@pytest.mark.parametrize("output", ["", "max\n", "0\n", "sh: cat: not found\n"])
def test_unreadable_peak_output_is_refused(output):
    with pytest.raises(ValueError):
        parse_peak(output)


def test_load_time_from_rfc3339_timestamps():
    assert seconds_between("2026-12-06T00:40:31.146442123Z", "2026-12-06T00:40:43.646442Z") == pytest.approx(12.5)
    assert seconds_between("2026-12-06T00:40:31Z", "2026-12-06T00:40:38Z") == 7.0
    with pytest.raises(ValueError, match="before the container started"):
        seconds_between("2026-12-06T00:40:31Z", "2026-12-06T00:40:30Z")
    with pytest.raises(ValueError):
        seconds_between("", "2026-12-06T00:40:30Z")


@pytest.mark.parametrize(
    "quantity,size",
    [("1536Mi", 1536 * MIB), ("2Gi", 2048 * MIB), ("1G", 10**9), ("1048576", MIB), ("0.5Gi", 512 * MIB)],
)
def test_memory_quantities(quantity, size):
    assert quantity_bytes(quantity) == size


def test_a_docker_style_quantity_is_refused():
    with pytest.raises(ValueError, match="'2g' is not like 512Mi"):
        quantity_bytes("2g")
