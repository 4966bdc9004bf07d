"""Issue 17, item 11: the stack's registry and broker answer only those who hold their password
(generated into .env at the first start), so no local user can replace the serving base image or
inject Celery messages. The other stack tests show the stack's own flow works with them locked.

Secrets never appear in an assertion: only status codes and the broker's replies are compared.
"""

from __future__ import annotations

import hashlib
import socket

import pytest
import requests

BASE = "tfserving-deploy/serving"
MANIFESTS = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"


def resp(*words: bytes) -> bytes:
    """One command in the redis protocol (an array of bulk strings)."""
    return b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)


def broker_replies(address: tuple[str, int], *commands: tuple[bytes, ...]) -> list[bytes]:
    """The first line of the broker's reply to each command, sent in order on one connection."""
    with socket.create_connection(address, timeout=10) as sock:
        reader = sock.makefile("rb")
        replies = []
        for command in commands:
            sock.sendall(resp(*command))
            replies.append(reader.readline().rstrip(b"\r\n"))
        return replies


def test_the_broker_refuses_commands_without_its_password(broker, broker_password):
    anonymous = broker_replies(broker, (b"PING",), (b"LPUSH", b"default", b"forged"), (b"KEYS", b"*"))
    assert all(reply.startswith(b"-NOAUTH") for reply in anonymous), anonymous
    wrong = broker_replies(broker, (b"AUTH", b"not-the-password"), (b"PING",))
    assert wrong[0].startswith(b"-WRONGPASS") and wrong[1].startswith(b"-NOAUTH"), wrong
    authenticated = broker_replies(broker, (b"AUTH", broker_password.encode()), (b"PING",))
    assert authenticated == [b"+OK", b"+PONG"]  # the same broker, with the password: the workers' way


def test_the_registry_refuses_pulls_and_pushes_without_its_password(registry, registry_credentials):
    v2 = f"http://{registry}/v2"
    manifest = f"{v2}/{BASE}/manifests/2.21.0"
    accept = {"Accept": MANIFESTS}
    anonymous = {
        "GET /v2/": requests.get(f"{v2}/", timeout=10),
        "GET the base's manifest": requests.get(manifest, headers=accept, timeout=10),
        "start an upload to the base's repository": requests.post(f"{v2}/{BASE}/blobs/uploads/", timeout=10),
        "PUT a manifest over the base's tag": requests.put(
            manifest,
            data=b'{"schemaVersion": 2}',
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
            timeout=10,
        ),
    }
    assert {what: r.status_code for what, r in anonymous.items()} == dict.fromkeys(anonymous, 401)
    user, password = registry_credentials
    wrong = requests.get(manifest, headers=accept, auth=(user, "not-the-password"), timeout=10)
    assert wrong.status_code == 401
    right = requests.get(manifest, headers=accept, auth=(user, password), timeout=10)
    assert right.status_code == 200  # the base is there (stack-test.sh copied it in with the password)


def test_the_project_registry_client_cannot_push_without_the_password(registry, registry_credentials, tmp_path):
    """What a push without credentials gets through the project's own client: RegistryDenied
    (Permanent), and nothing lands; with the stack's user the same upload goes through."""
    from tfserving_deploy.errors import RegistryDenied
    from tfserving_deploy.image.oci.registry import RegistryAuth, RegistryClient

    blob = tmp_path / "blob"
    blob.write_bytes(b"not a layer of the serving base\n")
    digest = "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    size, scope, what = blob.stat().st_size, f"repository:{BASE}:pull,push", "anonymous push test"
    with pytest.raises(RegistryDenied, match="HTTP 401"):
        RegistryClient(registry).upload(BASE, digest, blob, size, chunk_size=1 << 20, scope=scope, what=what)
    locked = RegistryClient(registry, RegistryAuth(*registry_credentials))
    assert not locked.has_blob(BASE, digest, scope=scope, what=what)  # the refused upload left nothing
    probe = "stacktest-auth-probe"  # not the base's repository: the stack's other tests use that one
    scope = f"repository:{probe}:pull,push"
    locked.upload(probe, digest, blob, size, chunk_size=1 << 20, scope=scope, what=what)
    assert locked.has_blob(probe, digest, scope=scope, what=what)
