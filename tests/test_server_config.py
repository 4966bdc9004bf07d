"""ServerConfig renders the same flags for every target; the metrics reader parses the server's own text."""

import subprocess

import pytest

from tfserving_deploy.errors import InvalidParameter
from tfserving_deploy.serving.metrics import parse_request_metrics
from tfserving_deploy.serving.server_config import CONFIG_DIR, ENTRYPOINT, ServerConfig
from tfserving_deploy.targets.kubernetes.manifests import deployment_manifest

IMAGE = "127.0.0.1:5000/m@sha256:" + "a" * 64


def test_defaults_age_connections_and_export_metrics():
    config = ServerConfig()
    assert config.server_args() == [
        f"--monitoring_config_file={CONFIG_DIR}/monitoring.config",
        "--grpc_channel_arguments=grpc.max_connection_age_ms=5000,grpc.max_connection_age_grace_ms=10000",
    ]
    assert ServerConfig(grpc_max_connection_age_ms=0).server_args() == config.server_args()[:1]


def test_batching_is_rendered_as_batching_parameters():
    config = ServerConfig(batching_parameters={"max_batch_size": 32, "batch_timeout_micros": 2000})
    batching_file = f"--batching_parameters_file={CONFIG_DIR}/batching.config"
    assert config.server_args()[-2:] == ["--enable_batching", batching_file]
    assert config.files()["TFSERVING_DEPLOY_BATCHING_PARAMETERS"] == (
        "max_batch_size { value: 32 }\nbatch_timeout_micros { value: 2000 }\n"
    )
    assert config.fingerprint() != ServerConfig().fingerprint() == ServerConfig().fingerprint()


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"grpc_max_connection_age_ms": -1}, "grpc_max_connection_age_ms=-1"),
        ({"batching_parameters": {"max_batch": 8}}, "unknown key(s) max_batch"),
        ({"batching_parameters": {"max_batch_size": 0}}, "max_batch_size=0"),
        (
            {"batching_parameters": {"num_batch_threads": 10**9}},
            "num_batch_threads=1000000000: need a whole number from 1 to 256",
        ),
        ({"batching_parameters": {"max_enqueued_batches": 2**63}}, "max_enqueued_batches=9223372036854775808"),
        ({"grpc_max_connection_age_grace_ms": 10**12}, "grpc_max_connection_age_grace_ms=1000000000000"),
    ],
)
def test_bad_settings_name_the_setting(settings, message):
    with pytest.raises(InvalidParameter, match=message.replace("(", r"\(").replace(")", r"\)")):
        ServerConfig(**settings)


def test_the_command_writes_the_files_then_runs_the_images_entrypoint(tmp_path):
    """Run the rendered command with a stand-in entrypoint: the files hold the texts, the flags pass through."""
    config = ServerConfig(batching_parameters={"max_batch_size": 4})
    command = config.command()
    entrypoint = tmp_path / "tf_serving_entrypoint.sh"
    entrypoint.write_text('#!/bin/sh\necho "$@"\n')
    entrypoint.chmod(0o755)
    script = command[2].replace(CONFIG_DIR, str(tmp_path / "cfg")).replace(ENTRYPOINT, str(entrypoint))
    env = {"PATH": "/usr/bin:/bin", **config.files()}
    out = subprocess.run([*command[:2], script, command[3], *config.server_args()], env=env, capture_output=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().split() == config.server_args()  # the flags reach the entrypoint unchanged
    assert (tmp_path / "cfg" / "batching.config").read_text() == "max_batch_size { value: 4 }\n"
    assert 'path: "/monitoring/prometheus/metrics"' in (tmp_path / "cfg" / "monitoring.config").read_text()


def test_an_image_without_the_tf_serving_entrypoint_is_named(tmp_path):
    command = ServerConfig().command()
    script = command[2].replace(ENTRYPOINT, str(tmp_path / "missing.sh"))
    out = subprocess.run([*command[:2], script, command[3]], capture_output=True, text=True)
    assert out.returncode == 64 and "must be tensorflow/serving or built from it" in out.stderr


def test_pods_carry_the_flags_and_scrape_annotations():
    deployment = deployment_manifest(
        IMAGE,
        model_name="resnet",
        version=1,
        replicas=3,
        namespace="ns",
        server=ServerConfig(grpc_max_connection_age_ms=9),
    )
    template = deployment["spec"]["template"]
    container = template["spec"]["containers"][0]
    assert container["command"][:2] == ["/bin/sh", "-c"] and ENTRYPOINT in container["command"][2]
    assert "grpc.max_connection_age_ms=9" in " ".join(container["args"])
    assert {e["name"] for e in container["env"]} >= {"MODEL_NAME", "TFSERVING_DEPLOY_MONITORING_CONFIG"}
    assert template["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8501",
        "prometheus.io/path": "/monitoring/prometheus/metrics",
    }


def test_request_metrics_are_read_per_model():
    text = "\n".join(
        [
            "# TYPE :tensorflow:serving:request_count counter",
            ':tensorflow:serving:request_count{model_name="resnet",status="OK"} 40',
            ':tensorflow:serving:request_count{model_name="resnet",status="INVALID_ARGUMENT"} 2',
            ':tensorflow:serving:request_count{model_name="other",status="OK"} 7',
            ':tensorflow:serving:request_latency_sum{model_name="resnet",API="predict",entrypoint="GRPC"} 300000',
            ':tensorflow:serving:request_latency_count{model_name="resnet",API="predict",entrypoint="GRPC"} 30',
            ':tensorflow:serving:request_latency_sum{model_name="resnet",API="predict",entrypoint="REST"} 100000',
            ':tensorflow:serving:request_latency_count{model_name="resnet",API="predict",entrypoint="REST"} 10',
        ]
    )
    metrics = parse_request_metrics(text, "resnet")
    assert (metrics.ok, metrics.failed, metrics.latency_ms_mean) == (40, 2, 10.0)
    assert parse_request_metrics(text, "nope").latency_ms_mean is None


def test_the_form_bounds_every_server_setting_as_the_check_does():
    """The trigger form's maximums are the library's limits: a value the check refuses never passes the form."""
    import importlib.util
    from pathlib import Path

    from airflow.sdk.definitions.param import ParamValidationError

    from tfserving_deploy.serving.server_config import BATCHING_LIMITS, MAX_CONNECTION_AGE_LIMIT_MS

    path = Path(__file__).resolve().parents[1] / "dags" / "tfserving_resnet.py"
    spec = importlib.util.spec_from_file_location("tfserving_resnet_form", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    params = module.dag.params
    for key, limit in BATCHING_LIMITS.items():
        params.get_param("batching_parameters").resolve({key: limit})
        ServerConfig(batching_parameters={key: limit})
        with pytest.raises(ParamValidationError):
            params.get_param("batching_parameters").resolve({key: limit + 1})
        with pytest.raises(InvalidParameter):
            ServerConfig(batching_parameters={key: limit + 1})
    for name in ("grpc_max_connection_age_ms", "grpc_max_connection_age_grace_ms"):
        params.get_param(name).resolve(MAX_CONNECTION_AGE_LIMIT_MS)
        with pytest.raises(ParamValidationError):
            params.get_param(name).resolve(MAX_CONNECTION_AGE_LIMIT_MS + 1)
