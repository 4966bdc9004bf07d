"""Connections to credentials and targets: what the builders get, and that secrets stay out of reprs."""

from __future__ import annotations

import json

import pytest

from tfserving_airflow.config import RunSettings
from tfserving_airflow.connections import is_google_registry, registry_auth


@pytest.mark.parametrize(
    "repository,google",
    [
        ("us-central1-docker.pkg.dev/proj/repo/resnet", True),
        ("gcr.io/proj/resnet", True),
        ("eu.gcr.io/proj/resnet", True),
        ("127.0.0.1:5000/resnet-serving", False),
        ("tensorflow/serving", False),
        ("registry.example.com/pkg.dev/resnet", False),
    ],
)
def test_google_registries_are_recognised_by_host(repository, google):
    assert is_google_registry(repository) is google


def test_docker_connection_gives_basic_auth_for_its_registry_only(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_MY_REGISTRY",
        json.dumps({"conn_type": "docker", "host": "registry.example.com", "login": "robot", "password": "s3cret"}),
    )
    auth = registry_auth("registry.example.com/team/resnet", docker_conn_id="my_registry")
    assert list(auth) == ["registry.example.com"]
    assert auth["registry.example.com"].basic() == ("robot", "s3cret")
    assert "s3cret" not in repr(auth)


def test_google_registry_uses_a_fresh_access_token(monkeypatch):
    class Credentials:  # the google-auth boundary: a token that expires and refreshes
        valid, token, refreshed = False, None, 0

        def refresh(self, request):
            self.refreshed += 1
            self.valid, self.token = True, f"ya29.token-{self.refreshed}"

    credentials = Credentials()

    class FakeGoogleBaseHook:
        def __init__(self, gcp_conn_id):
            assert gcp_conn_id == "google_cloud_default"

        def get_credentials(self):
            return credentials

    monkeypatch.setattr("airflow.providers.google.common.hooks.base_google.GoogleBaseHook", FakeGoogleBaseHook)
    credentials_by_host = registry_auth("europe-west4-docker.pkg.dev/p/r/resnet", gcp_conn_id="google_cloud_default")
    assert list(credentials_by_host) == ["europe-west4-docker.pkg.dev"]  # that registry only
    auth = credentials_by_host["europe-west4-docker.pkg.dev"]
    assert auth.basic() == ("oauth2accesstoken", "ya29.token-1")
    assert auth.basic() == ("oauth2accesstoken", "ya29.token-1")  # still valid: no refresh
    credentials.valid = False
    assert auth.basic() == ("oauth2accesstoken", "ya29.token-2")
    assert "ya29" not in repr(auth)


def test_other_registries_are_anonymous_without_a_connection():
    assert registry_auth("127.0.0.1:5000/resnet-serving", gcp_conn_id="google_cloud_default") is None


def test_unknown_target_is_explained():
    from tfserving_deploy.errors import InvalidParameter

    with pytest.raises(InvalidParameter, match="target 'mars' is not one of local, kubernetes, gke"):
        RunSettings({"target": "mars"}).check()


def test_a_connection_without_a_host_is_refused_for_pushes(monkeypatch):
    """Its credentials would go wherever image_repository (a form field) points."""
    from tfserving_deploy.errors import InvalidParameter

    monkeypatch.setenv("AIRFLOW_CONN_NO_HOST", json.dumps({"conn_type": "docker", "login": "robot", "password": "s3"}))
    with pytest.raises(InvalidParameter, match=r"'no_host' names no registry host.*evil\.example\.com"):
        registry_auth("evil.example.com/steal/it", docker_conn_id="no_host")


def test_credentials_go_only_to_the_host_the_connection_names(monkeypatch):
    from tfserving_deploy.image.oci import OciImageBuilder

    monkeypatch.setenv(
        "AIRFLOW_CONN_REG_A",
        json.dumps({"conn_type": "docker", "host": "registry-a.example.com", "login": "robot", "password": "s3cret"}),
    )
    builder = OciImageBuilder(registry_auth("registry-b.example.com/x", docker_conn_id="reg_a"))
    assert builder._client("registry-b.example.com").auth is None  # another host: anonymous
    assert builder._client("registry-a.example.com").auth.basic() == ("robot", "s3cret")


def test_a_missing_connection_is_a_wrong_param():
    from tfserving_deploy.errors import InvalidParameter

    with pytest.raises(InvalidParameter, match="connection 'no_such_registry' \\(registry_conn_id\\) does not exist"):
        registry_auth("127.0.0.1:5000/x", docker_conn_id="no_such_registry")
