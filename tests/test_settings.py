"""Settings are declared once: the rendered text parses by the declared type, the checks name the
setting, and the form takes each declaration as it is (a value the form accepts parses; one the
checks refuse, the form refuses too)."""

from __future__ import annotations

import pytest

from tfserving_airflow.config import GROUPS, RunSettings, templated
from tfserving_deploy.errors import InvalidParameter
from tfserving_deploy.serving.server_config import ServerConfig
from tfserving_deploy.targets.kubernetes.manifests import deployment_manifest, rollout_waves
from tfserving_deploy.targets.kubernetes.settings import KubernetesSettings
from tfserving_deploy.targets.settings import DeploySettings
from tfserving_deploy.validation.settings import ValidationSettings

IMAGE = "127.0.0.1:5000/m@sha256:" + "a" * 64


def test_rendered_text_parses_by_the_declared_type():
    """What ``{{ params.x }}`` renders to: numbers, flags, None, a dict's and a list's repr."""
    config = RunSettings(
        {
            "replicas": "3",
            "force": "True",
            "expected_class": "None",
            "model_sha256": "0" * 64,  # text, however numeric it looks
            "model_name": "1e5",
            "resources": "{'requests': {'cpu': '500m'}}",
            "load_balancer_source_ranges": "['10.0.0.0/8']",
            "batching_parameters": "None",
            "max_surge": "2",
        }
    )
    assert (config.deploy.replicas, config.deploy.force, config.validation.expected_class) == (3, True, None)
    assert (config.model.model_sha256, config.model.model_name) == ("0" * 64, "1e5")
    assert config.kubernetes.resources == {"requests": {"cpu": "500m"}}
    assert config.kubernetes.load_balancer_source_ranges == ("10.0.0.0/8",)
    assert config.kubernetes.max_surge == 2 and RunSettings({"max_surge": "50%"}).kubernetes.max_surge == "50%"
    assert config.server == ServerConfig()


def test_unset_values_are_the_declared_defaults():
    config = RunSettings({"replicas": "None", "target": "", "namespace": None})
    assert config.deploy == DeploySettings() and config.kubernetes.namespace == KubernetesSettings().namespace


@pytest.mark.parametrize(
    "rendered, message",
    [
        ({"replicas": "three"}, "replicas='three' is not a whole number"),
        ({"replicas": "51"}, "replicas=51: need a whole number from 1 to 50"),
        ({"force": "yes"}, "force='yes' is not true or false"),
        ({"target": "mars"}, "target 'mars' is not one of local, kubernetes, gke"),
        ({"service_type": "NodePort"}, "service_type 'NodePort' is not one of"),
        ({"max_surge": "0"}, "max_surge=0: need a whole number from 1 to 100"),
        ({"max_surge": "150%"}, "max_surge='150%' does not match"),
        ({"resources": "{'cpu': 1}"}, "must be a dict with 'requests' and/or 'limits'"),
        ({"load_balancer_source_ranges": "['10.0.0.300/8']"}, "'10.0.0.300/8' is not a CIDR"),
        ({"service_type": "ClusterIP", "load_balancer_source_ranges": "['10.0.0.0/8']"}, "apply to a load balancer"),
        ({"batching_parameters": "{'max_batch_size': 0}"}, "max_batch_size=0"),
        ({"model_sha256": "abc"}, "model_sha256='abc' does not match"),
    ],
)
def test_a_wrong_value_names_the_setting(rendered, message):
    config = RunSettings(rendered)
    with pytest.raises(InvalidParameter, match=message.replace("(", r"\(").replace(")", r"\)")):
        for group in ("deploy", "kubernetes", "server", "model"):
            getattr(config, group)


def test_settings_built_in_code_are_checked_as_parsed_ones():
    with pytest.raises(InvalidParameter, match="balance_check_seconds=601"):
        ValidationSettings(balance_check_seconds=601)
    assert KubernetesSettings(load_balancer_source_ranges=["10.0.0.0/8"]).load_balancer_source_ranges == ("10.0.0.0/8",)


def test_every_param_is_declared_once():
    names = [d.name for group in GROUPS for d in group.params()]
    assert len(names) == len(set(names)) == len(templated())


@pytest.mark.parametrize(
    "name, accepted, refused",
    [
        ("max_surge", [1, 100, "1%", "25%", "100%"], [0, 101, "0%", "101%", "x%"]),
        ("replicas", [1, 50], [0, 51]),
        ("balance_check_seconds", [0, 600], [-1, 601]),
        ("node_count", [1], [0]),
    ],
)
def test_the_form_and_the_checks_agree(name, accepted, refused):
    """The JSON schema generated from a declaration accepts what the checks accept, and refuses the rest."""
    from airflow.sdk import Param
    from airflow.sdk.exceptions import ParamValidationError

    from tfserving_airflow.params import params

    param = params()[name]
    for value in accepted:
        Param(value, **param.schema).resolve()
        RunSettings({name: str(value)}).__getattribute__(_group_of(name))
    for value in refused:
        with pytest.raises(ParamValidationError):
            Param(value, **param.schema).resolve()
        with pytest.raises(InvalidParameter):
            getattr(RunSettings({name: str(value)}), _group_of(name))


def _group_of(name: str) -> str:
    groups = {
        "max_surge": "kubernetes",
        "replicas": "deploy",
        "balance_check_seconds": "validation",
        "node_count": "gke",
    }
    return groups[name]


def test_max_surge_reaches_the_deployments_strategy_and_the_rollout_budget():
    default = deployment_manifest(IMAGE, model_name="m", version=1, replicas=8, namespace="ns")
    assert default["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": "25%"}
    two = deployment_manifest(IMAGE, model_name="m", version=1, replicas=8, namespace="ns", max_surge=2)
    assert two["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 2}
    assert [rollout_waves(8), rollout_waves(8, 2), rollout_waves(8, "50%"), rollout_waves(3, 5)] == [4, 4, 2, 1]
    assert rollout_waves(9, 2) == 5
